"""The in-process backend: a transformers causal LM with continuous batching and exact entropy.

One worker thread owns the model (:mod:`._scheduler`). ``generate`` calls from any thread or event
loop go into a queue; between any two decode steps the worker admits the requests queued
meanwhile into the running batch (up to ``max_batch_size`` rows) and lets finished ones leave, so
a short agent turn never waits for a long one ahead of it (iteration-level scheduling, as vLLM and
TGI do). Prompts reuse the KV of prefixes computed before (the system prompt with the tool
schemas, a conversation's earlier turns: :mod:`._prefix_cache`). For every sampled token it
reports the raw temperature-1 log-probability and the exact full-vocabulary entropy, computed in
float32 (:mod:`tepo_agent.entropy`) even when the model runs in bf16.

Weight reloads (:meth:`TransformersBackend.load_weights`, :meth:`~TransformersBackend.
load_state_dict`) keep their place in the queue: the requests in flight and those queued before
finish on the old weights, later ones wait, the swap runs with no row decoding and empties the
prefix cache, so a request never sees two versions of the weights (docs/architecture.md,
invariant 7), and a swap under continuous load waits only for the requests ahead of it.

Example::

    backend = TransformersBackend.from_pretrained("path/to/model", device="auto")
    gen = backend.generate_sync([1, 2, 3], SamplingParams(max_tokens=32, temperature=0))
    gen.token_ids, gen.logprobs, gen.entropies, gen.policy_version
    backend.load_weights("path/to/checkpoint-v2", policy_version=2)
    backend.close()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel

from tepo_agent.backends._decode import DecodeBatch, Request
from tepo_agent.backends._packed import packed_support
from tepo_agent.backends._prefix_cache import PrefixCache
from tepo_agent.backends._scheduler import BackendStats, Control, Scheduler
from tepo_agent.backends.base import Generation, SamplingParams
from tepo_agent.errors import BackendError, ConfigError, ModelLoadError
from tepo_agent.model.io import DType, end_and_pad_ids, load_causal_lm

__all__ = ["BackendStats", "TransformersBackend"]

DEFAULT_PREFIX_CACHE_BYTES = 256 * 2**20


class TransformersBackend:
    """A :class:`~tepo_agent.backends.base.Backend` running a causal LM in this process.

    Args:
        model: a loaded causal LM (eval mode is set here); the backend owns it from now on.
        eos_token_ids: the model's end ids; every request stops on these plus its own
            ``stop_token_ids``.
        pad_token_id: id used for left padding (never attended to, so any valid id works).
        max_batch_size: most requests decoded together; more wait until rows finish.
        batch_wait_s: how long an idle worker waits for more requests after the first arrives
            (a running batch admits new requests at every step without waiting).
        policy_version: version of the weights loaded now.
        compute_entropy: False skips the full-vocabulary entropy (for measuring its cost):
            ``entropies`` are then NaN, still labelled ``entropy_kind="exact"`` because nothing is
            estimated; logprobs are computed either way.
        prefix_cache_bytes: memory for the KV of cached prefixes (least recently used evicted
            beyond it); 0 turns prefix caching off. Emptied on every weight swap.
        join_delay_steps: how many decode steps a request arriving while a batch runs may wait
            for others to join with it (one prefill pass for all of them; TGI's
            ``max_waiting_tokens``); 0 (the default) joins at the next step, which measured
            better on the default model (benchmarks/RESULTS.md). An idle backend admits at once.
        packed_forward: compute a joining request's prompt in the same forward pass as the
            running rows' next tokens (mixed steps, :mod:`._packed`) instead of a prefill pass
            of its own. Used for Llama-shaped models (Qwen2, Llama: :func:`._packed.
            packed_support`); other models, and False, use HF's forward. Equal within float
            tolerance either way.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        eos_token_ids: Sequence[int] = (),
        pad_token_id: int = 0,
        max_batch_size: int = 8,
        batch_wait_s: float = 0.005,
        policy_version: int = 0,
        compute_entropy: bool = True,
        prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES,
        join_delay_steps: int = 0,
        packed_forward: bool = True,
    ) -> None:
        if max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if not (batch_wait_s >= 0 and math.isfinite(batch_wait_s)):
            raise ConfigError(f"batch_wait_s must be a finite number >= 0, got {batch_wait_s}")
        if join_delay_steps < 0:
            raise ConfigError(f"join_delay_steps must be >= 0, got {join_delay_steps}")
        if prefix_cache_bytes < 0:
            raise ConfigError(f"prefix_cache_bytes must be >= 0, got {prefix_cache_bytes}")
        _check_full_attention(model)
        self._model = model.eval()
        self._vocab_size = int(model.get_output_embeddings().weight.shape[0])
        if not 0 <= pad_token_id < self._vocab_size:
            raise ConfigError(f"pad_token_id {pad_token_id} is outside the vocabulary")
        self._version = int(policy_version)
        self._max_positions: int | None = getattr(model.config, "max_position_embeddings", None)
        self._prefix = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes else None
        self._default_gen = torch.Generator(device=self.device)
        self._default_gen.seed()
        self._packed = bool(packed_forward) and packed_support(self._model) is None
        batch = DecodeBatch(
            self._model,
            eos=frozenset(int(t) for t in eos_token_ids),
            pad_token_id=int(pad_token_id),
            compute_entropy=bool(compute_entropy),
            prefix_cache=self._prefix,
            generator=self._generator,
            max_rows=int(max_batch_size),
            packed=self._packed,
        )
        self._scheduler = Scheduler(
            batch,
            max_batch_size=int(max_batch_size),
            batch_wait_s=float(batch_wait_s),
            join_delay_steps=int(join_delay_steps),
            version=lambda: self._version,
        )

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str = "auto",
        dtype: DType = "auto",
        max_batch_size: int = 8,
        policy_version: int = 0,
        **kw: Any,
    ) -> TransformersBackend:
        """Load a Hugging Face model directory (:func:`tepo_agent.model.io.load_causal_lm`).

        Args:
            path: a directory written by ``save_pretrained``.
            device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
            dtype: ``auto`` is bf16 on CUDA and float32 on CPU; or ``float32``/``bfloat16``/
                ``float16``.
            max_batch_size, policy_version, kw: passed to the constructor. Unless given in
                ``kw``, end ids come from ``generation_config.json`` (else ``config.json``, else
                the tokenizer's eos token) and the pad id from the same, else the first end id.
        """
        model = load_causal_lm(path, device=device, dtype=dtype)
        eos, pads = end_and_pad_ids(model, path)
        kw.setdefault("eos_token_ids", eos)
        kw.setdefault("pad_token_id", pads[0] if pads else (eos[0] if eos else 0))
        return cls(model, max_batch_size=max_batch_size, policy_version=policy_version, **kw)

    # ---------------------------------------------------------------- properties

    @property
    def policy_version(self) -> int:
        """The version of the weights that will serve the next batch."""
        return self._version

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def device(self) -> torch.device:
        return next(self._model.parameters()).device

    @property
    def model(self) -> PreTrainedModel:
        """The served model. Read it freely; change weights only through ``load_*``."""
        return self._model

    @property
    def packed_forward(self) -> bool:
        """Whether joining requests' prompts ride in the running batch's step (mixed steps)."""
        return self._packed

    @property
    def stats(self) -> BackendStats:
        return self._scheduler.stats

    @property
    def prefix_cache(self) -> PrefixCache | None:
        """The prefix cache (None when turned off); read its ``nbytes`` and ``blocks``."""
        return self._prefix

    # ---------------------------------------------------------------- generation

    def submit(
        self,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        on_token: Callable[[int, float, float], None] | None = None,
    ) -> concurrent.futures.Future[Generation]:
        """Queue one request and return its future (used by every ``generate`` flavour).

        ``on_token(token_id, logprob, entropy)``, when given, is called from the worker thread
        for each token as soon as it is sampled (for streaming); keep it short and thread-safe.
        """
        prompt = tuple(int(t) for t in prompt_token_ids)
        if not prompt:
            raise BackendError("the prompt is empty: render at least one token before generating")
        bad = [t for t in prompt if not 0 <= t < self._vocab_size]
        if bad:
            raise BackendError(
                f"prompt token ids {bad[:5]} are outside the vocabulary [0, {self._vocab_size}): "
                "render the prompt with this model's tokenizer"
            )
        if self._max_positions is not None and len(prompt) >= self._max_positions:
            raise BackendError(
                f"the prompt has {len(prompt)} tokens; the model holds at most "
                f"{self._max_positions} positions: shorten the conversation"
            )
        future: concurrent.futures.Future[Generation] = concurrent.futures.Future()
        self._scheduler.put(Request(prompt, params, future, on_token))
        return future

    async def generate(self, prompt_token_ids: Sequence[int], params: SamplingParams) -> Generation:
        """Sample one completion; concurrent calls are batched together."""
        return await asyncio.wrap_future(self.submit(prompt_token_ids, params))

    def generate_sync(self, prompt_token_ids: Sequence[int], params: SamplingParams) -> Generation:
        """Blocking :meth:`generate` for scripts and threads (no event loop needed)."""
        return self.submit(prompt_token_ids, params).result()

    async def generate_many(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams
    ) -> list[Generation]:
        """Sample one completion per prompt, all queued at once so they share batches."""
        futures = [self.submit(p, params) for p in prompts]
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))

    # ---------------------------------------------------------------- weights

    def load_weights(self, path: str | Path, *, policy_version: int) -> None:
        """Replace the weights in place from a directory of ``*.safetensors`` (full weights).

        The files are read in the calling thread; the copy runs in the worker between batches.
        Blocks until the new weights serve. Raises :class:`BackendError` (old weights keep
        serving) when names or shapes do not match the model.
        """
        from safetensors.torch import load_file

        directory = Path(path)
        files = sorted(directory.glob("*.safetensors")) if directory.is_dir() else []
        if not files:
            raise ModelLoadError(
                f"no *.safetensors files in {directory}: pass a checkpoint directory written "
                "with save_pretrained(safe_serialization=True)"
            )
        state: dict[str, Tensor] = {}
        for file in files:
            state.update(load_file(str(file)))
        self.load_state_dict(state, policy_version=policy_version)

    def load_state_dict(self, state_dict: Mapping[str, Tensor], *, policy_version: int) -> None:
        """Copy ``state_dict`` into the model in place, between batches; bumps the version.

        Every parameter must be given (a tied weight counts as given when its twin is), with the
        model's shapes. Blocks until applied. Raises :class:`BackendError` otherwise, leaving the
        old weights serving.
        """

        def apply() -> None:
            self._copy_weights(state_dict)
            self._version = int(policy_version)
            if self._prefix is not None:  # its KV was computed by the old weights
                self._prefix.clear()

        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._scheduler.put(Control(apply, future))
        future.result()

    def _copy_weights(self, state_dict: Mapping[str, Tensor]) -> None:
        target = self._model.state_dict()
        unexpected = sorted(set(state_dict) - set(target))
        if unexpected:
            raise BackendError(
                f"weights hold {len(unexpected)} names this model lacks (e.g. {unexpected[:3]}): "
                "the checkpoint is for a different architecture"
            )
        wrong = [
            f"{k}: {tuple(v.shape)} != {tuple(target[k].shape)}"
            for k, v in state_dict.items()
            if tuple(v.shape) != tuple(target[k].shape)
        ]
        if wrong:
            raise BackendError(
                f"weight shapes do not match the model ({'; '.join(wrong[:3])}): the checkpoint "
                "is for a different model size; old weights keep serving"
            )
        given_storage = {target[k].data_ptr() for k in state_dict}
        missing = sorted(k for k in target if k not in state_dict)
        untied = [k for k in missing if target[k].data_ptr() not in given_storage]
        if untied:
            raise BackendError(
                f"weights miss {len(untied)} tensors (e.g. {untied[:3]}): pass a full checkpoint"
            )
        with torch.no_grad():
            for k, v in state_dict.items():
                target[k].copy_(v.to(device=target[k].device, dtype=target[k].dtype))

    # ---------------------------------------------------------------- shutdown

    def close(self) -> None:
        """Stop the worker after the current batch; queued requests fail with BackendError."""
        self._scheduler.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> TransformersBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _generator(self, seed: int | None) -> torch.Generator:
        if seed is None:
            return self._default_gen
        return torch.Generator(device=self.device).manual_seed(seed)


def _check_full_attention(model: PreTrainedModel) -> None:
    """Refuse models with sliding-window or other non-global attention layers: the batch's
    cache layout (left padding, rows joining at any step) assumes every layer sees all tokens."""
    kinds = set(getattr(model.config, "layer_types", None) or ["full_attention"])
    sliding = bool(getattr(model.config, "use_sliding_window", False))
    if sliding or kinds != {"full_attention"}:
        raise ConfigError(
            "this backend serves models whose layers all use full attention; "
            f"{type(model).__name__} has {sorted(kinds)} (sliding window: {sliding}): "
            "serve it with vLLM (tepo-agent vllm serve) instead"
        )
