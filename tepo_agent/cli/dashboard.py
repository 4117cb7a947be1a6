"""``tepo-agent dashboard``: the report's views over a live store, refreshed as it changes.

    tepo-agent dashboard [--db DB] [--host 127.0.0.1] [--port 8765] [--api-key KEY]
                         [--interval 2] [--limit N] [--model DIR]

Read-only. Bound to 127.0.0.1 unless ``--host`` says otherwise. With an API key (``--api-key``
or ``$TEPO_AGENT_API_KEY``) a browser signs in once with the key through a form, and the server
keeps it signed in with an HttpOnly cookie. ``tepo-agent serve --db DB`` serves the same
dashboard at ``/dashboard``.
"""

from __future__ import annotations

import argparse
import os

from tepo_agent.cli._db import DB_HELP, db_target
from tepo_agent.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dashboard",
        help="a live, read-only dashboard of a store (versions, curves, token entropy)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--db", metavar="PATH|URL", help=DB_HELP)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    parser.add_argument("--api-key", help="require this key (default: $TEPO_AGENT_API_KEY)")
    parser.add_argument("--interval", type=float, default=2.0, help="refresh seconds (default 2)")
    parser.add_argument("--limit", type=int, default=100, help="trajectories shown (default 100)")
    parser.add_argument("--model", metavar="DIR", help="tokenizer directory (see `report`)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from tepo_agent.report import SampleFilter
    from tepo_agent.report.dashboard import create_dashboard_app

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    api_key = args.api_key or os.environ.get("TEPO_AGENT_API_KEY") or None
    db = db_target(args.db)
    app = create_dashboard_app(
        db,
        api_key=api_key,
        sample=SampleFilter(limit=args.limit),
        model=args.model,
        interval_s=args.interval,
    )
    if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print(
            f"tepo-agent dashboard: warning: listening on {args.host} without an API key; anyone "
            "who can reach this address can read the store (set --api-key)"
        )
    print(f"tepo-agent dashboard: {db} on http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
