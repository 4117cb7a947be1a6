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
from tepo_agent.store import redact


def collect(
    db: str | os.PathLike[str], sample: SampleFilter, decoder: TokenDecoder
) -> dict[str, Any]:
    """The report's data for the store at ``db`` (read-only)."""
    with queries.open_readonly(db) as store:
        # The stamp first: data read after it is at least as new, so a change in between makes
        # the dashboard's next poll see a new stamp and collect again (never a stale page).
        stamp = queries.stamp(store)
        trajectories = queries.trajectory_sample(store, sample, decoder)
        entropies = [h for t in trajectories for u in t["turns"] for h in u.get("ent", ())]
        return {
            "meta": {
                "title": "tepo-agent report",
                "db": redact(str(db)),  # a URL's password never reaches the page
                "generated_at": time.time(),
                "trajectories": queries.count_matching(store, SampleFilter()),
                "matching": queries.count_matching(store, sample),
                "trajectory_id": sample.trajectory_id,
                "stamp": stamp,
            },
            "policies": queries.policies(store),
            "events": queries.policy_events(store),
            "versions": queries.version_stats(store),
            "train": queries.train_curves(store),
            "evaluations": queries.evaluations(store),
            "tools": queries.tool_stats(store),
            "trajectories": trajectories,
            "scale": scale_json(scale_max(entropies)),
        }


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
