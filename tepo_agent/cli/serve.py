"""``tepo-agent serve``: share one local model over a vLLM/OpenAI-compatible HTTP API.

    tepo-agent serve [--model DIR] [--host 127.0.0.1] [--port 8000] [--served-model-name NAME]
                     [--max-batch-size 8] [--device auto] [--dtype auto] [--api-key KEY]
                     [--db tepo-agent.db] [--log-level info] [--weights-root DIR]
                     [--max-body-mb 8] [--record] [--keys-file keys.json]
                     [--session-idle-s 600] [--record-max-live 1024]

Serves /v1/completions, /v1/chat/completions, /v1/models, /v1/load_lora_adapter and
/v1/reload_weights (vLLM's protocol plus an exact per-token entropy field), and
/v1/fetch_weights: a published version copied from another host's weights server, checked
against its sha256, into <--weights-root>/fetched (`tepo-agent fleet follow` drives it; see
docs/deployment.md).

Which weights: without --db, --model DIR or the default model (the bootstrapped one; --model
random for random weights). With --db, the database's policy registry: its live version (a new
database is created, with the default model or --model registered as version 0), and each newly
live version is hot-swapped in between requests.

Every request is logged on one line (client, method, path, status, prompt and completion
tokens, latency, the policy version serving) at level info; --log-level warning silences them.
Bodies over --max-body-mb are refused (413), a body that stalls for 30 s gets 408, and with
--weights-root the weight-loading routes accept only directories inside it (RELIABILITY.md).
The request schemas are published at /openapi.json. The API key comes from --api-key or, when
that is absent, $TEPO_AGENT_API_KEY (read once).
With ``--db`` the live dashboard of that store is also served, read-only, at ``/dashboard``.

--record (needs --db) records every /v1/chat/completions request, from any OpenAI-compatible
client, as a token-exact trajectory in the database: requests of one conversation are linked by
an X-Session-Id header, a per-session key (KEY#SESSION) or the assistant turns this server
returned, and sampled ids are spliced, never re-tokenized. Each answer names its trajectory and
session in the X-Tepo-Trajectory-Id and X-Tepo-Session-Id headers. It adds POST /v1/feedback
(a score in [0, 1] for a response_id, trajectory_id or session_id), GET /v1/sessions/ID and
GET /v1/recording/metrics. An open trajectory idle for --session-idle-s is recorded as
finished. A recording failure never fails a request (it is logged and counted in the metrics).

--keys-file names several keys, one of them the admin: {"keys": [{"name": "ops", "key": "...",
"admin": true}, {"name": "support-bot", "key": "..."}]}. Each key sees and scores only its own
sessions (recorded with the key's name as app_tag); only the admin may load weights or open the
dashboard. docs/guide.md, "Record any application", has the details.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tepo_agent.errors import ConfigError

LOG = logging.getLogger("tepo_agent.serve")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve a model over an OpenAI/vLLM-compatible HTTP API", description=__doc__
    )
    parser.add_argument(
        "--model", metavar="DIR", help="model directory, or 'random' (default: the default model)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=8000, help="port")
    parser.add_argument(
        "--served-model-name", help="name clients send as `model` (default: the directory name)"
    )
    parser.add_argument("--max-batch-size", type=int, default=8, help="requests decoded together")
    parser.add_argument(
        "--prefix-cache-mb",
        type=int,
        default=256,
        help="memory for the KV of shared prompt prefixes, reused across requests (0: off)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto"
    )
    parser.add_argument(
        "--api-key", help="require `Authorization: Bearer KEY` (default: $TEPO_AGENT_API_KEY)"
    )
    parser.add_argument(
        "--db",
        metavar="PATH|URL",
        help="follow the policy registry in this trajectory store: a SQLite file (created if "
        "missing; or sqlite:///PATH) or a PostgreSQL URL postgresql://USER@HOST/DB",
    )
    parser.add_argument("--poll-s", type=float, default=1.0, help="registry poll interval (--db)")
    parser.add_argument(
        "--record",
        action="store_true",
        help="record every chat completion as a trajectory in --db, and serve /v1/feedback",
    )
    parser.add_argument(
        "--keys-file",
        metavar="PATH",
        help="JSON file of named API keys, one of them the admin (instead of --api-key)",
    )
    parser.add_argument(
        "--session-idle-s",
        type=float,
        default=600.0,
        help="--record: an open trajectory idle this long is recorded as finished",
    )
    parser.add_argument(
        "--record-max-live",
        type=int,
        default=1024,
        help="--record: most conversations held in memory (the least recent is finished first)",
    )
    parser.add_argument(
        "--weights-root",
        metavar="DIR",
        help="load_lora_adapter / reload_weights accept only directories inside DIR "
        "(default: any directory this process can read)",
    )
    parser.add_argument(
        "--max-body-mb", type=float, default=8.0, help="largest request body, in MiB (413 above)"
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="info logs one line per request",
    )
    parser.set_defaults(func=run)


def add_request_log(app: Any, version: Callable[[], int]) -> None:
    """Log one line per request: client, method, path, status, tokens, latency, version."""
    app.add_middleware(RequestLog, version=version)


class RequestLog:
    """Pure ASGI middleware writing :func:`add_request_log`'s line once the response is sent.

    The token counts are the ``usage`` the generation routes leave in ``request.state``
    (``scope["state"]["usage"]``), so the response body is neither buffered nor parsed again;
    with INFO logging off it does nothing but the check."""

    def __init__(self, app: Any, version: Callable[[], int]) -> None:
        self.app = app
        self.version = version

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not LOG.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def logged_send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        finally:
            usage = scope.get("state", {}).get("usage")
            tokens = "-" if usage is None else f"{usage[0]}+{usage[1]}"
            client = scope.get("client")
            LOG.info(
                '%s "%s %s" %d tokens=%s %.3fs v%s',
                client[0] if client else "-",
                scope["method"],
                scope["path"],
                status,
                tokens,
                time.perf_counter() - started,
                self.version(),
            )


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from tepo_agent.backends.transformers_backend import TransformersBackend
    from tepo_agent.chat.format import ChatFormat
    from tepo_agent.paths import resolve_model_dir
    from tepo_agent.server.app import create_app
    from tepo_agent.server.http_protocol import http_protocol
    from tepo_agent.server.validation import ServeLimits

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s", force=True
    )
    api_key = args.api_key or os.environ.get("TEPO_AGENT_API_KEY") or None
    keys = _keys(args, api_key)
    policy = None
    if args.db:
        policy = _registry_policy(args)
        model_dir = policy.model_dir
    else:
        model_dir = resolve_model_dir(args.model)
    name = args.served_model_name or os.path.basename(os.path.normpath(model_dir))
    chat_format = ChatFormat.from_pretrained(model_dir)
    backend = TransformersBackend.from_pretrained(
        model_dir,
        device=args.device,
        dtype=args.dtype,
        max_batch_size=args.max_batch_size,
        policy_version=(policy.version or 0) if policy is not None else 0,
        prefix_cache_bytes=args.prefix_cache_mb * 2**20,
    )
    follower = recorder = None
    try:
        if policy is not None:
            follower = _follow(args, backend, policy)
        if args.record:
            recorder = _recorder(args, chat_format)
        limits = ServeLimits(
            max_body_bytes=int(args.max_body_mb * 1024**2),
            weights_root=Path(args.weights_root) if args.weights_root else None,
        )
        app = create_app(
            backend, chat_format, model_name=name, keys=keys, recorder=recorder, limits=limits
        )
        if args.db:  # the live dashboard of the same store, read-only, behind the admin key
            from tepo_agent.report.dashboard import create_dashboard_app

            app.mount("/dashboard", create_dashboard_app(args.db, api_key=keys.admin_key))
        add_request_log(app, lambda: backend.policy_version)
        print(
            f"tepo-agent serve: {name} from {model_dir} on http://{args.host}:{args.port}/v1",
            flush=True,
        )
        # httptools and uvloop when installed (the project depends on both), else h11 and asyncio
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level="warning",
            http=http_protocol(),
            loop="auto",
        )
    finally:
        if recorder is not None:
            recorder.close()  # open trajectories are recorded as finished
            recorder.store.close()
        if follower is not None:
            follower.stop()
        backend.close()
    return 0


def _keys(args: argparse.Namespace, api_key: str | None) -> Any:
    from tepo_agent.server.keys import KeyRing

    if args.record and not args.db:
        raise ConfigError("--record writes trajectories into a database: add --db PATH")
    if args.keys_file is None:
        return KeyRing.single(api_key)
    if args.api_key:
        raise ConfigError("give either --api-key or --keys-file (put the key in the file)")
    return KeyRing.from_file(args.keys_file)


def _recorder(args: argparse.Namespace, chat_format: Any) -> Any:
    from tepo_agent.server.recording import Recorder, RecordingConfig
    from tepo_agent.store import open_store

    config = RecordingConfig(idle_s=args.session_idle_s, max_live=args.record_max_live)
    return Recorder(open_store(args.db), chat_format, config)


def _registry_policy(args: argparse.Namespace) -> Any:
    from tepo_agent.cli._db import creates_store, db_target
    from tepo_agent.cli._policy import choose_policy
    from tepo_agent.policy.registry import PolicyRegistry
    from tepo_agent.store import open_store

    path = db_target(args.db)
    if creates_store(path):
        print(f"tepo-agent serve: created trajectory database {path}", file=sys.stderr)
    with open_store(path) as store:
        return choose_policy(PolicyRegistry(store), args.model)


def _follow(args: argparse.Namespace, backend: Any, policy: Any) -> Any:
    """Serve the chosen version now, and each newly live version from then on."""
    from tepo_agent.cli._policy import load_policy
    from tepo_agent.policy.hotswap import InProcessTarget, PolicyFollower

    load_policy(backend, policy)
    follower = PolicyFollower(
        args.db,
        InProcessTarget(backend),
        current_version=policy.version if policy.version is not None else -1,
    )
    follower.on_swap = lambda rec: LOG.warning("now serving policy v%d", rec.version)
    follower.poll_once()
    follower.start(poll_interval_s=args.poll_s)
    return follower
