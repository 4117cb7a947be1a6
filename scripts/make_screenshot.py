"""The README's screenshots of `tepo-agent report`: docs/report.png, docs/report-trajectory.png.

    python scripts/make_screenshot.py [--db DB] [--out-dir docs]

Without ``--db`` it builds a small store that looks like an agent learning
(``benchmarks/report_store.py``: synthetic runs written through the real store and registry) in a
temporary directory. It writes the report, opens it in headless Chromium (``chromium`` must be
installed) and saves two PNGs: the top of the page (policy timeline, training curves) and the
first trajectories with their tokens coloured by entropy.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report_store import build_store  # noqa: E402
from tepo_agent.report import SampleFilter, write_report  # noqa: E402
from tepo_agent.report.chromium import Chromium  # noqa: E402

_RECT = """(() => {{ const r = {}.getBoundingClientRect();
    return [r.left + scrollX, r.top + scrollY, r.width, r.height]; }})()"""


def shoot(report: Path, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    with Chromium(width=1200, height=900) as browser:
        browser.navigate(report.resolve().as_uri())
        # the header down to the end of the first row of training curves
        top = browser.evaluate(_RECT.format("document.getElementById('top')"))
        curves = browser.evaluate(_RECT.format("document.querySelector('svg.chart')"))
        bottom = curves[1] + curves[3] + 12
        first = browser.screenshot(out_dir / "report.png", clip=(0, top[1], 1200, bottom - top[1]))
        # the trajectory browser: legend, filters and the first two runs
        section = browser.evaluate(_RECT.format("document.getElementById('trajectories')"))
        runs = browser.evaluate(_RECT.format("document.querySelectorAll('article.traj')[1]"))
        height = runs[1] + runs[3] + 14 - section[1]
        second = browser.screenshot(
            out_dir / "report-trajectory.png", clip=(0, section[1] - 4, 1200, height + 4)
        )
    return [first, second]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", help="a store to show (default: a fresh synthetic one)")
    parser.add_argument("--out-dir", default=str(ROOT / "docs"), help="default: docs/")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(args.db) if args.db else build_store(Path(tmp) / "demo.db", 400, seed=3)
        report = write_report(db, Path(tmp) / "report.html", SampleFilter(limit=6))
        for path in shoot(report, Path(args.out_dir)):
            print(path)


if __name__ == "__main__":
    main()
