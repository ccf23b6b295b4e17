"""The lock file: honest (it is what pyproject.toml resolves to) and installable, with
hashes, into a fresh virtualenv that then runs the portal's CLI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from packaging.markers import Marker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCK = os.path.join(ROOT, "requirements.lock")
UV = shutil.which("uv", path=os.path.dirname(sys.executable))

pytestmark = pytest.mark.once  # the same on every database: runs in the SQLite pass


def read_lock() -> str:
    with open(LOCK, encoding="utf-8") as f:
        return f.read()


def pins(text: str, *, applicable: bool = False) -> dict[str, str]:
    """name -> version; with ``applicable``, only the lines whose environment marker holds
    for this interpreter (the lock is universal: some lines are for Windows or PyPy)."""
    found = {}
    for name, version, marker in re.findall(
        r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;\\]+)(?: ; ([^\\\n]+))?", text, re.M
    ):
        if not applicable or not marker or Marker(marker.strip()).evaluate():
            found[name] = version
    return found


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result


def test_every_dependency_is_pinned_with_hashes():
    text = read_lock()
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    assert len(blocks) > 50
    for block in blocks:
        assert "==" in block.splitlines()[0], block
        assert "--hash=sha256:" in block, f"no hash: {block.splitlines()[0]}"
    for tool in ("pip", "setuptools", "wheel", "babel", "pydantic", "uv"):
        assert tool in pins(text), f"{tool} is not pinned"


def test_the_lock_is_what_pyproject_resolves_to(tmp_path):
    """`make lock` run now (preferring the locked versions) changes nothing: every
    dependency in pyproject.toml is in the lock at a version that satisfies it."""
    assert UV, "uv is installed from the lock"
    out = tmp_path / "requirements.lock"
    shutil.copy(LOCK, out)
    run(
        [
            UV,
            "pip",
            "compile",
            "pyproject.toml",
            "--all-extras",
            "--generate-hashes",
            "--universal",
            "--python-version",
            "3.11",
            "--quiet",
            "-o",
            str(out),
        ],
        cwd=ROOT,
    )
    assert pins(out.read_text()) == pins(read_lock())


def test_a_fresh_virtualenv_installs_from_the_lock_and_runs(tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = str(venv / "bin" / "python")
    env = {**os.environ, "UV_NO_CONFIG": "1"}
    run(
        [
            UV,
            "pip",
            "install",
            "--python",
            python,
            "--require-hashes",
            "--no-deps",
            "--quiet",
            "-r",
            LOCK,
        ],
        env=env,
    )
    run(
        [
            UV,
            "pip",
            "install",
            "--python",
            python,
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-e",
            ROOT,
        ],
        env=env,
    )
    run([UV, "pip", "check", "--python", python], env=env)
    installed = run(
        [
            python,
            "-c",
            "import importlib.metadata as m; print('\\n'.join("
            "f'{d.metadata[\"Name\"]}=={d.version}' for d in m.distributions()))",
        ]
    )
    have = {canonical(k): v for k, v in pins(installed.stdout).items()}
    for name, version in pins(read_lock(), applicable=True).items():
        assert have.get(canonical(name)) == version, name
    result = run(
        [str(venv / "bin" / "flask"), "billing", "--help"],
        env={"PATH": "/usr/bin:/bin", "INSTANCE_PATH": str(tmp_path / "instance")},
        cwd=str(tmp_path),
    )
    assert "reconcile" in result.stdout
