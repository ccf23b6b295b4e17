"""Invoice PDF benchmark: our render against a bare WeasyPrint render of the same HTML.

Prints one JSON line:
{"bench": "invoice_pdf", "lines": ..., "renders": 20, "pdf_median_ms": ...,
 "bare_pdf_median_ms": ..., "pdf_ratio": ..., "pdf_cpu_median_ms": ...,
 "bare_pdf_cpu_median_ms": ..., "pdf_cpu_ratio": ...}

- pdf_median_ms: `render_pdf_bytes(snapshot)`: the template rendered from the snapshot, then
  WeasyPrint with our static-only URL fetcher (which serves the stylesheet).
- bare_pdf_median_ms: `weasyprint.HTML(string=html, base_url=...).write_pdf()` of the very
  HTML our template produced, with WeasyPrint's default fetcher loading the same stylesheet.
- The two are timed alternately (each first in every other pair, after a gc.collect()) in
  one process after warm-up renders; the script stops if the two PDFs differ (then they
  would not be the same work). Goal: pdf_ratio <= 1.3. Wall time wants an idle machine;
  the *_cpu_* figures (process CPU time of the same renders) are steadier when it is not.

A typical invoice: 5 deployments x 3 resources, an adjustment, a plan fee, two payments.
Needs no database. Usage: .venv/bin/python bench/invoice_pdf.py  (BENCH_RENDERS=20)
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time

import weasyprint

from portal.documents.invoice_pdf import BASE_URL, render_html, render_pdf_bytes

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RENDERS = int(os.environ.get("BENCH_RENDERS", 20))
WARMUP = 3


def snapshot() -> dict:
    lines = []
    for n in range(1, 6):
        for resource, qty, unit, price, amount in (
            ("CPU", "1488", "core-hours", "$0.05", "$74.40"),
            ("Memory", "5952", "GB-hours", "$0.01", "$59.52"),
            ("Storage", "50", "GB-months", "$0.10", "$5.00"),
        ):
            lines.append(
                {
                    "kind": "usage",
                    "description": f"web-{n} (vm-{n}) · {resource}",
                    "quantity": qty,
                    "unit": unit,
                    "unit_price": price,
                    "amount": amount,
                }
            )
    lines.append(
        {
            "kind": "adjustment",
            "description": "Late usage: web-1 (vm-1) · CPU",
            "quantity": "3",
            "unit": "core-hours",
            "unit_price": "$0.05",
            "amount": "$0.15",
        }
    )
    lines.append(
        {
            "kind": "fee",
            "description": "Standard plan",
            "quantity": "1",
            "unit": "month",
            "unit_price": "$25.00",
            "amount": "$25.00",
        }
    )
    return {
        "template_version": 1,
        "number": "INV-2026-000123",
        "status": "sent",
        "issued_at": "2026-11-01",
        "due_at": "2026-11-15",
        "period_start": "2026-10-01",
        "period_end": "2026-10-31",
        "seller": {
            "name": "Example Cloud Ltd.",
            "address": ["1 Harbour Street", "Dublin"],
            "email": "billing@example.cloud",
            "tax_id": "IE1234567X",
        },
        "customer": {"name": "Alice Liddell", "email": "alice@example.com", "account": "12"},
        "currency": "USD",
        "lines": lines,
        "subtotal": "$719.75",
        "credits": "$50.00",
        "total": "$669.75",
        "amount_paid": "$100.00",
        "amount_due": "$569.75",
        "payments": [
            {"date": "2026-11-01", "tender": "credit", "amount": "$50.00", "reference": ""},
            {
                "date": "2026-11-02",
                "tender": "card",
                "amount": "$100.00",
                "reference": "pi_3Q0example",
            },
        ],
    }


def main() -> None:
    snap = snapshot()
    html = render_html(snap)

    def ours() -> bytes:
        return render_pdf_bytes(snap)

    def bare() -> bytes:
        return weasyprint.HTML(string=html, base_url=BASE_URL).write_pdf()

    if ours() != bare():
        raise SystemExit("the two renders differ: they are not the same work")
    for _ in range(WARMUP):
        ours(), bare()
    wall: dict[str, list[float]] = {"ours": [], "bare": []}
    cpu: dict[str, list[float]] = {"ours": [], "bare": []}
    pair = [("ours", ours), ("bare", bare)]
    for i in range(RENDERS):
        for name, render in pair if i % 2 == 0 else pair[::-1]:  # neither always goes first
            gc.collect()  # neither pays for the other's garbage
            start, start_cpu = time.perf_counter(), time.process_time()
            render()
            wall[name].append((time.perf_counter() - start) * 1000)
            cpu[name].append((time.process_time() - start_cpu) * 1000)
    ours_ms, bare_ms = (statistics.median(wall[k]) for k in ("ours", "bare"))
    ours_cpu, bare_cpu = (statistics.median(cpu[k]) for k in ("ours", "bare"))
    print(
        json.dumps(
            {
                "bench": "invoice_pdf",
                "lines": len(snap["lines"]),
                "renders": RENDERS,
                "pdf_median_ms": round(ours_ms, 1),
                "bare_pdf_median_ms": round(bare_ms, 1),
                "pdf_ratio": round(ours_ms / bare_ms, 3),
                # CPU time of the same renders: steadier than wall time on a busy machine
                "pdf_cpu_median_ms": round(ours_cpu, 1),
                "bare_pdf_cpu_median_ms": round(bare_cpu, 1),
                "pdf_cpu_ratio": round(ours_cpu / bare_cpu, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
