"""``tepo-agent trajectories browse``: open the store in Datasette (the optional extra).

    tepo-agent trajectories browse [--db DB] [--host 127.0.0.1] [--port 8001] [--open]

Datasette shows every table with descriptions, token arrays decoded (ids, logprobs, entropies)
and canned queries: tool calls by the sign of ΔH, policy versions by accuracy, the policy
timeline, the least sure assistant turns. Install it with ``pip install 'tepo-agent[datasette]'``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any


def register_browse(actions: Any) -> None:
    """Add ``browse`` to the ``trajectories`` sub-commands."""
    browse = actions.add_parser(
        "browse",
        help="open the store in Datasette (pip install 'tepo-agent[datasette]')",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    browse.add_argument("--db", help="database file (default: $TEPO_AGENT_DB or ./tepo-agent.db)")
    browse.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    browse.add_argument("--port", type=int, default=8001, help="port (default 8001)")
    browse.add_argument("--open", action="store_true", help="open a browser tab")
    browse.set_defaults(func=run_browse)


def run_browse(args: argparse.Namespace) -> int:
    from tepo_agent.report.datasette import datasette_command, metadata_for
    from tepo_agent.store import default_db_path

    db = Path(args.db or default_db_path())
    with tempfile.TemporaryDirectory(prefix="tepo-datasette-") as tmp:
        metadata = Path(tmp) / "metadata.json"
        metadata.write_text(json.dumps(metadata_for(db), ensure_ascii=False), encoding="utf-8")
        cmd = datasette_command(
            db, metadata, host=args.host, port=args.port, open_browser=args.open
        )
        url = f"http://{args.host}:{args.port}/"
        print(f"tepo-agent trajectories browse: {db} on {url}", flush=True)
        try:
            return subprocess.call(cmd)
        except KeyboardInterrupt:
            return 0
