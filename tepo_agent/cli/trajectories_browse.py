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
    browse.add_argument(
        "--db",
        metavar="PATH",
        help="SQLite database file (default: $TEPO_AGENT_DB or ./tepo-agent.db; Datasette reads "
        "SQLite only: browse a PostgreSQL store with psql or any PostgreSQL client)",
    )
    browse.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    browse.add_argument("--port", type=int, default=8001, help="port (default 8001)")
    browse.add_argument("--open", action="store_true", help="open a browser tab")
    browse.set_defaults(func=run_browse)


def run_browse(args: argparse.Namespace) -> int:
    from tepo_agent.cli._db import db_target
    from tepo_agent.errors import ConfigError
    from tepo_agent.report.datasette import datasette_command, metadata_for
    from tepo_agent.store import redact

    db = db_target(args.db)
    if not isinstance(db, Path):
        raise ConfigError(
            f"{redact(db)} is a PostgreSQL store; `trajectories browse` opens SQLite files in "
            "Datasette. Browse PostgreSQL with psql or any PostgreSQL client, or copy the store "
            "into a SQLite file first"
        )
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
