"""Collect a store's report data and write the self-contained HTML report.

    from tepo_agent.report import SampleFilter, write_report
    write_report("tepo-agent.db", "report.html", SampleFilter(limit=50, tool="search"))

The data is plain JSON (:func:`collect`): the policy versions and their events, the train steps,
stored evaluations, per-tool statistics, per-version aggregates and a bounded sample of
trajectories with every token's entropy. The dashboard serves the same data live.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tepo_agent.report import queries
from tepo_agent.report.colour import scale_json, scale_max
from tepo_agent.report.page import render_page
from tepo_agent.report.queries import SampleFilter
from tepo_agent.report.tokens import TokenDecoder, load_decoder


def collect(
    db: str | os.PathLike[str], sample: SampleFilter, decoder: TokenDecoder
) -> dict[str, Any]:
    """The report's data for the store at ``db`` (read-only)."""
    conn = queries.open_readonly(db)
    try:
        # One read transaction: every view reflects the same moment of the store.
        conn.execute("BEGIN")
        trajectories = queries.trajectory_sample(conn, sample, decoder)
        entropies = [h for t in trajectories for u in t["turns"] for h in u.get("ent", ())]
        data = {
            "meta": {
                "title": "tepo-agent report",
                "db": str(db),
                "generated_at": time.time(),
                "trajectories": queries.count_matching(conn, SampleFilter()),
                "matching": queries.count_matching(conn, sample),
                "trajectory_id": sample.trajectory_id,
                "stamp": queries.stamp(conn),
            },
            "policies": queries.policies(conn),
            "events": queries.policy_events(conn),
            "versions": queries.version_stats(conn),
            "train": queries.train_curves(conn),
            "evaluations": queries.evaluations(conn),
            "tools": queries.tool_stats(conn),
            "trajectories": trajectories,
            "scale": scale_json(scale_max(entropies)),
        }
        conn.execute("COMMIT")
        return data
    finally:
        conn.close()


def write_report(
    db: str | os.PathLike[str],
    out: str | os.PathLike[str],
    sample: SampleFilter | None = None,
    *,
    model: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the HTML report of ``db`` to ``out``; returns the path written.

    ``model`` names the tokenizer that turns token ids into text (default: see
    :mod:`tepo_agent.report.tokens`).
    """
    data = collect(db, sample or SampleFilter(), load_decoder(model, db))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render_page(data), encoding="utf-8")
    os.replace(tmp, out)
    return out
