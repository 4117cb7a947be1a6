"""``tepo-agent fleet``: keep serving replicas on the live policy, and show what each serves.

    tepo-agent fleet status --replica URL [--replica URL ...] [--db DB] [--flavor tepo] [--json]
    tepo-agent fleet follow --db DB --replica URL [--replica URL ...] [--flavor tepo]
                            [--serve-weights HOST:PORT] [--advertise URL] [--poll-s 2]

``status`` asks every replica which policy version it serves (``tepo-agent serve`` reports it at
GET /v1/models; a vLLM replica only whether it is up) and, with ``--db``, marks the ones not on
the live version. Exit status 0 when every replica answers (and serves the live version, with
--db), else 1.

``follow`` runs until Ctrl-C or SIGTERM: every ``--poll-s`` seconds it reads the database's live
version and brings every replica that does not serve it there (a promotion, a rollback, a replica
restarted on old weights, a replica that was down), printing one line per change. By default
each replica loads the version's directory by its path (a shared filesystem).
``--serve-weights HOST:PORT`` serves the versions' files over HTTP instead: each ``tepo-agent
serve`` replica fetches them (POST /v1/fetch_weights), checks them against the sha256 recorded
when the version was published and only then loads its own copy, so replicas need no shared
filesystem. ``--advertise URL`` is the
address replicas reach that server at (default http://HOST:PORT). ``--weights-token`` (or
$TEPO_AGENT_WEIGHTS_TOKEN) requires a bearer token on it. ``--replica`` repeats or takes a
comma-separated list; ``--api-key`` is the replicas' admin key. docs/deployment.md shows a fleet.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from typing import Any

from tepo_agent.cli._db import DB_HELP
from tepo_agent.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fleet",
        help="keep serving replicas on the live policy (follow), or show what each serves",
        description=__doc__,
    )
    actions = parser.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    status = actions.add_parser("status", help="which version each replica serves")
    follow = actions.add_parser("follow", help="publish every new live version to every replica")
    for sub in (status, follow):
        sub.add_argument(
            "--replica",
            metavar="URL",
            action="append",
            required=True,
            help="a replica's base URL; repeat it or give a comma-separated list",
        )
        sub.add_argument("--db", metavar="PATH|URL", help=DB_HELP)
        sub.add_argument("--flavor", choices=("tepo", "vllm"), default="tepo", help="server kind")
        sub.add_argument("--api-key", help="the replicas' (admin) key")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(func=run_status)
    follow.add_argument("--poll-s", type=float, default=2.0, help="seconds between polls")
    follow.add_argument(
        "--serve-weights", metavar="HOST:PORT", help="serve the versions' files over HTTP"
    )
    follow.add_argument("--advertise", metavar="URL", help="the weights server's URL for replicas")
    follow.add_argument("--weights-token", help="bearer token the weights server requires")
    follow.set_defaults(func=run_follow)


def _fleet(args: argparse.Namespace, weights: Any = None, token: str | None = None) -> Any:
    from tepo_agent.policy.fleet import FleetTarget

    return FleetTarget(
        args.replica,
        flavor=args.flavor,
        api_key=args.api_key,
        weights=weights,
        weights_token=token,
    )


def _live_version(db: str | None) -> int | None:
    from tepo_agent.cli._db import existing_db
    from tepo_agent.policy.registry import PolicyRegistry

    with PolicyRegistry(existing_db(db)) as registry:
        live = registry.live()
    return None if live is None else live.version


def run_status(args: argparse.Namespace) -> int:
    fleet = _fleet(args)
    try:
        fleet.refresh()
        rows = fleet.status()
    finally:
        fleet.close()
    live = _live_version(args.db) if args.db else None
    ok = all(r.reachable and (args.db is None or r.version == live) for r in rows)
    if args.json:
        payload = {
            "live_version": live,
            "replicas": [
                {
                    "url": r.url,
                    "version": r.version,
                    "reachable": r.reachable,
                    "error": r.last_error,
                }
                for r in rows
            ],
        }
        print(json.dumps(payload, indent=2))
        return 0 if ok else 1
    for r in rows:
        served = "unknown" if r.version is None else f"v{r.version}"
        state = "up" if r.reachable else f"DOWN ({r.last_error})"
        behind = "  (not live)" if args.db and r.reachable and r.version != live else ""
        print(f"{r.url}  {served}  {state}{behind}")
    if args.db:
        print(f"live version: {'none' if live is None else live}")
    return 0 if ok else 1


def _weights_server(args: argparse.Namespace, token: str | None) -> Any:
    if not args.serve_weights:
        return None
    from tepo_agent.policy.weights_server import WeightsServer

    host, _, port = args.serve_weights.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--serve-weights takes HOST:PORT, got {args.serve_weights!r}")
    return WeightsServer(host, int(port), token=token, advertise=args.advertise)


def run_follow(args: argparse.Namespace) -> int:
    from tepo_agent.cli._db import existing_db
    from tepo_agent.policy.hotswap import PolicyFollower

    if args.poll_s <= 0:
        raise ConfigError(f"--poll-s must be > 0, got {args.poll_s}")
    token = args.weights_token or os.environ.get("TEPO_AGENT_WEIGHTS_TOKEN")
    weights = _weights_server(args, token)
    fleet = _fleet(args, weights, token)
    if weights is not None:
        print(f"serving the versions' files at {weights.url}", flush=True)
    follower = PolicyFollower(existing_db(args.db), fleet, current_version=-1)
    shown: Any = None
    signal.signal(signal.SIGTERM, _stop)  # a service manager stops it like Ctrl-C
    try:
        while True:
            error = None
            try:
                follower.poll_once()
            except Exception as exc:  # a replica down: keep the others on the live version
                error = str(exc)
            seen = ([(r.url, r.version, r.reachable) for r in fleet.status()], error)
            if seen != shown:
                _print_change(fleet, error)
                shown = seen
            time.sleep(args.poll_s)
    except KeyboardInterrupt:
        return 0
    finally:
        follower.stop()
        fleet.close()
        if weights is not None:
            weights.close()


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _print_change(fleet: Any, error: str | None) -> None:
    versions = fleet.versions()
    parts = [
        f"{'unknown' if v is None else f'v{v}'}: {', '.join(urls)}" for v, urls in versions.items()
    ]
    stamp = time.strftime("%H:%M:%S")
    print(f"{stamp} {' | '.join(parts)}", flush=True)
    if error:
        print(f"{stamp} not yet: {error}", flush=True)


__all__ = ["register", "run_follow", "run_status"]
