"""How long ``tepo-agent report`` takes on a large store, and how big the page is.

    python benchmarks/bench_report.py [--count 100000] [--db PATH] [--repeats 3]

Builds (once; kept at ``--db``) a store of ``--count`` synthetic runs with
:mod:`benchmarks.report_store` (through the real store and registry), then times
``write_report`` with the default sample of 100 trajectories: the whole call (open read-only,
aggregate every row, read and decode the sample, render, write), split into collecting the data
and rendering. Prints a markdown table (median of ``--repeats``, after one warm-up); the issue's
target is under 10 s and under 5 MB for 100k trajectories.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from benchmarks._common import machine
from benchmarks.report_store import build_store
from tepo_agent.report import SampleFilter, collect, load_decoder, write_report
from tepo_agent.report.page import render_page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--db", default=None, help="store path (default /tmp/tepo-report-N.db)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    db = Path(args.db or f"/tmp/tepo-report-{args.count}.db")
    if not db.exists():
        started = time.perf_counter()
        build_store(db, args.count)
        print(f"built {db} in {time.perf_counter() - started:.0f} s")
    out = db.with_suffix(".html")
    decoder = load_decoder(None, db)
    sample = SampleFilter()
    write_report(db, out, sample)  # warm-up: tokenizer, page cache
    totals, collects, renders = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        write_report(db, out, sample)
        totals.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        data = collect(db, sample, decoder)
        collects.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        render_page(data)
        renders.append(time.perf_counter() - t0)
    size = out.stat().st_size
    print(f"\n{machine()}\n")
    print("| trajectories | store | report (write_report) | collect | render | page size |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {data['meta']['trajectories']:,} | {db.stat().st_size / 2**20:.0f} MiB "
        f"| {statistics.median(totals):.2f} s | {statistics.median(collects):.2f} s "
        f"| {statistics.median(renders) * 1000:.0f} ms | {size / 2**20:.2f} MiB |"
    )


if __name__ == "__main__":
    main()
