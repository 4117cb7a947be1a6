"""``tepo-agent serve``: share one local model over a vLLM/OpenAI-compatible HTTP API.

    tepo-agent serve [--model DIR] [--host 127.0.0.1] [--port 8000] [--served-model-name NAME]
                     [--max-batch-size 8] [--device auto] [--dtype auto] [--api-key KEY]
                     [--db tepo-agent.db]

Without ``--model`` it serves the embedded default model (built on first use). The API key comes
from ``--api-key`` or, when that is absent, ``TEPO_AGENT_API_KEY`` (read once, at start).
With ``--db`` the live dashboard of that store is also served, read-only, at ``/dashboard``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model over an OpenAI/vLLM-compatible HTTP API",
        description="Run the in-process backend behind /v1/completions, /v1/chat/completions, "
        "/v1/models, /v1/load_lora_adapter and /v1/reload_weights (vLLM's protocol plus an "
        "exact per-token entropy field).",
    )
    parser.add_argument("--model", help="model directory (default: the embedded default model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--served-model-name", help="name clients send as `model` (default: the directory name)"
    )
    parser.add_argument("--max-batch-size", type=int, default=8, help="requests decoded together")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto"
    )
    parser.add_argument(
        "--api-key", help="require `Authorization: Bearer KEY` (default: $TEPO_AGENT_API_KEY)"
    )
    parser.add_argument(
        "--db",
        help="follow the policy registry in this trajectory database: each newly live version "
        "is hot-swapped in between requests",
    )
    parser.add_argument(
        "--poll-s", type=float, default=1.0, help="registry poll interval with --db (default 1)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from tepo_agent.backends.transformers_backend import TransformersBackend
    from tepo_agent.chat.format import ChatFormat
    from tepo_agent.errors import ConfigError
    from tepo_agent.model.default import ensure_default_model
    from tepo_agent.server.app import create_app

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    model_dir = args.model or str(ensure_default_model())
    name = args.served_model_name or os.path.basename(os.path.normpath(model_dir))
    api_key = args.api_key or os.environ.get("TEPO_AGENT_API_KEY") or None
    chat_format = ChatFormat.from_pretrained(model_dir)
    backend = TransformersBackend.from_pretrained(
        model_dir, device=args.device, dtype=args.dtype, max_batch_size=args.max_batch_size
    )
    follower = None
    if args.db:
        from tepo_agent.policy.hotswap import InProcessTarget, PolicyFollower

        # The model directory serves until the registry names a live version; from then on
        # each newly live version is loaded between batches (never inside a request).
        follower = PolicyFollower(args.db, InProcessTarget(backend), current_version=-1)
        follower.on_swap = lambda rec: print(f"tepo-agent serve: now serving v{rec.version}")
        follower.poll_once()
        follower.start(poll_interval_s=args.poll_s)
    try:
        app = create_app(backend, chat_format, model_name=name, api_key=api_key)
        if args.db:  # the live dashboard of the same store, read-only, behind the same key
            from tepo_agent.report.dashboard import create_dashboard_app

            app.mount("/dashboard", create_dashboard_app(args.db, api_key=api_key))
        print(f"tepo-agent serve: {name} from {model_dir} on http://{args.host}:{args.port}")
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        if follower is not None:
            follower.stop()
        backend.close()
    return 0
