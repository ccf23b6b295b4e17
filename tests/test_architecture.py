"""The layout holds: the import-linter contracts in pyproject.toml (layers, no cycles, tasks
import no services, nothing imports jobs/ or the blueprints) are kept, and ruff finds no
import hidden inside a function."""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import portal

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.once


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_import_contracts_are_kept():
    result = run(str(BIN / "lint-imports"), "--no-cache", "--no-logo")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_every_module_but_the_factory_and_web_is_kept_from_the_blueprints():
    """A new module of portal/ joins the contract that keeps it from importing blueprints."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    [contract] = [
        c for c in config["contracts"] if c.get("forbidden_modules") == ["portal.blueprints"]
    ]
    children = {f"portal.{m.name}" for m in pkgutil.iter_modules(portal.__path__)}
    assert set(contract["source_modules"]) == children - {"portal.blueprints", "portal.web"}


def test_no_import_hides_inside_a_function():
    result = run(str(BIN / "ruff"), "check", "--select", "PLC0415", "portal", "jobs")
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_view_commits_or_rolls_back_by_hand():
    """The request's unit of work (portal/web.py) commits once after the view; a view that
    must drop what it wrote calls web.discard_changes. Services commit where a side effect
    needs it."""
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted((ROOT / "portal" / "blueprints").rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\.commit\(|\.rollback\(", line)
    ]
    assert not found, "\n".join(found)
