"""The in-process backend: a transformers causal LM with batched decoding and exact entropy.

One worker thread owns the model. ``generate`` calls from any thread or event loop go into a
queue; the worker takes up to ``max_batch_size`` waiting requests (waiting up to ``batch_wait_s``
for more), left-pads them and runs one batched decode loop over a KV cache. For every sampled
token it reports the raw temperature-1 log-probability and the exact full-vocabulary entropy,
computed in float32 (:mod:`tepo_agent.entropy`) even when the model runs in bf16.

Weight reloads (:meth:`TransformersBackend.load_weights`, :meth:`~TransformersBackend.
load_state_dict`) are queued behind the requests already waiting and run by the worker *between*
batches, so a request never sees two versions of the weights (docs/architecture.md, invariant 7).

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
import inspect
import math
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel

from tepo_agent.backends._sampling import left_pad, sample_tokens, sampled_logprobs
from tepo_agent.backends.base import Generation, SamplingParams
from tepo_agent.errors import BackendError, ConfigError, ModelLoadError
from tepo_agent.model.io import DType, end_and_pad_ids, load_causal_lm

__all__ = ["BackendStats", "TransformersBackend"]


@dataclass(frozen=True)
class BackendStats:
    """Counters since the backend started (a snapshot; read ``backend.stats`` again to refresh).

    Attributes:
        requests: generate requests completed (successfully or not).
        batches: batched decode loops run; ``requests / batches`` is the mean batch size.
        tokens: tokens sampled and returned.
        max_batch: the largest batch run so far.
        weight_loads: successful weight reloads.
        failed_requests: requests that ended with an error.
    """

    requests: int = 0
    batches: int = 0
    tokens: int = 0
    max_batch: int = 0
    weight_loads: int = 0
    failed_requests: int = 0


@dataclass
class _Request:
    prompt: tuple[int, ...]
    params: SamplingParams
    future: concurrent.futures.Future[Generation]


@dataclass
class _Control:
    run: Callable[[], None]
    future: concurrent.futures.Future[None]


_SHUTDOWN = object()


class TransformersBackend:
    """A :class:`~tepo_agent.backends.base.Backend` running a causal LM in this process.

    Args:
        model: a loaded causal LM (eval mode is set here); the backend owns it from now on.
        eos_token_ids: the model's end ids; every request stops on these plus its own
            ``stop_token_ids``.
        pad_token_id: id used for left padding (never attended to, so any valid id works).
        max_batch_size: most requests decoded together.
        batch_wait_s: how long the worker waits for more requests before starting a batch.
        policy_version: version of the weights loaded now.
        compute_entropy: False skips the full-vocabulary entropy (for measuring its cost):
            ``entropies`` are then NaN, still labelled ``entropy_kind="exact"`` because nothing is
            estimated; logprobs are computed either way.
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
    ) -> None:
        if max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if not (batch_wait_s >= 0 and math.isfinite(batch_wait_s)):
            raise ConfigError(f"batch_wait_s must be a finite number >= 0, got {batch_wait_s}")
        self._model = model.eval()
        self._vocab_size = int(model.get_output_embeddings().weight.shape[0])
        if not 0 <= pad_token_id < self._vocab_size:
            raise ConfigError(f"pad_token_id {pad_token_id} is outside the vocabulary")
        self._eos = frozenset(int(t) for t in eos_token_ids)
        self._pad = int(pad_token_id)
        self._max_batch = int(max_batch_size)
        self._wait = float(batch_wait_s)
        self._version = int(policy_version)
        self._compute_entropy = bool(compute_entropy)
        self._max_positions: int | None = getattr(model.config, "max_position_embeddings", None)
        # transformers 5 renamed forward's `past_key_values` to `cache`; support both.
        forward_params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in forward_params else "past_key_values"
        self._stats = BackendStats()
        self._stats_lock = threading.Lock()
        self._queue: queue.Queue[object] = queue.Queue()
        self._closed = False
        self._close_lock = threading.Lock()
        self._default_gen = torch.Generator(device=self.device)
        self._default_gen.seed()
        self._worker = threading.Thread(target=self._serve, name="tepo-transformers", daemon=True)
        self._worker.start()

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
    def stats(self) -> BackendStats:
        with self._stats_lock:
            return self._stats

    # ---------------------------------------------------------------- generation

    def submit(
        self, prompt_token_ids: Sequence[int], params: SamplingParams
    ) -> concurrent.futures.Future[Generation]:
        """Queue one request and return its future (used by every ``generate`` flavour)."""
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
        self._put(_Request(prompt, params, future))
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
            with self._stats_lock:
                self._stats = replace(self._stats, weight_loads=self._stats.weight_loads + 1)

        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._put(_Control(apply, future))
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
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_SHUTDOWN)
        self._worker.join()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> TransformersBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _put(self, item: _Request | _Control) -> None:
        with self._close_lock:
            if self._closed:
                raise BackendError("the backend is closed: create a new one")
            self._queue.put(item)

    # ---------------------------------------------------------------- worker

    def _serve(self) -> None:
        pending: object | None = None
        while True:
            item = pending if pending is not None else self._queue.get()
            pending = None
            if item is _SHUTDOWN:
                self._drain()
                return
            if isinstance(item, _Control):
                self._run_control(item)
                continue
            assert isinstance(item, _Request)
            batch = [item]
            deadline = time.monotonic() + self._wait
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if not isinstance(nxt, _Request):
                    pending = nxt  # a reload or shutdown waits for this batch to finish
                    break
                batch.append(nxt)
            self._run_batch(batch)

    def _run_control(self, control: _Control) -> None:
        if not control.future.set_running_or_notify_cancel():
            return
        try:
            control.run()
        except Exception as exc:
            control.future.set_exception(_wrap(exc, "weight load failed"))
        else:
            control.future.set_result(None)

    def _run_batch(self, batch: list[_Request]) -> None:
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            results: list[Generation | BaseException] = list(self._decode(live))
        except Exception as exc:  # never kill the worker: fail this batch's requests instead
            results = [_wrap(exc, "generation failed") for _ in live]
        with self._stats_lock:
            tokens = sum(len(g.token_ids) for g in results if isinstance(g, Generation))
            failed = sum(1 for g in results if not isinstance(g, Generation))
            s = self._stats
            self._stats = replace(
                s,
                requests=s.requests + len(live),
                batches=s.batches + 1,
                tokens=s.tokens + tokens,
                max_batch=max(s.max_batch, len(live)),
                failed_requests=s.failed_requests + failed,
            )
        for request, result in zip(live, results, strict=True):
            if isinstance(result, Generation):
                request.future.set_result(result)
            else:
                request.future.set_exception(result)

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Request | _Control) and item.future.set_running_or_notify_cancel():
                item.future.set_exception(BackendError("the backend was closed before this ran"))

    @torch.inference_mode()
    def _decode(self, batch: list[_Request]) -> list[Generation]:
        device = self.device
        b = len(batch)
        ids, mask, positions = left_pad([r.prompt for r in batch], self._pad, device)
        budgets = [self._budget(r) for r in batch]
        stops = [self._eos | set(r.params.stop_token_ids) for r in batch]
        gens = [self._generator(r.params.seed) for r in batch]
        out_ids: list[list[int]] = [[] for _ in batch]
        out_lp: list[list[float]] = [[] for _ in batch]
        out_h: list[list[float]] = [[] for _ in batch]
        finish: list[Literal["stop", "length"]] = ["length"] * b
        version = self._version
        cache = DynamicCache(config=self._model.config)
        rows = list(range(b))  # batch rows still decoding, in cache order
        next_pos = positions[:, -1] + 1  # (B,)
        out = self._forward(ids, mask, positions, cache)
        while True:
            logits = out.logits[:, -1, :].float()  # (R, V), raw temperature-1
            chosen = sample_tokens(logits, [batch[i].params for i in rows], [gens[i] for i in rows])
            lp, h = sampled_logprobs(logits, chosen, entropy=self._compute_entropy)
            chosen_l, lp_l, h_l = chosen.tolist(), lp.tolist(), h.tolist()
            keep: list[int] = []
            for j, i in enumerate(rows):
                out_ids[i].append(chosen_l[j])
                out_lp[i].append(lp_l[j])
                out_h[i].append(h_l[j])
                if chosen_l[j] in stops[i]:
                    finish[i] = "stop"
                elif len(out_ids[i]) < budgets[i]:
                    keep.append(j)
            if not keep:
                break
            if len(keep) < len(rows):  # drop finished rows from the cache and the batch
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, next_pos, chosen = mask[index], next_pos[index], chosen[index]
                rows = [rows[j] for j in keep]
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            out = self._forward(chosen.unsqueeze(-1), mask, next_pos.unsqueeze(-1), cache)
            next_pos = next_pos + 1
        return [
            Generation(
                prompt_token_ids=r.prompt,
                token_ids=tuple(out_ids[i]),
                logprobs=tuple(out_lp[i]),
                entropies=tuple(out_h[i]),
                entropy_kind="exact",
                finish_reason=finish[i],
                policy_version=version,
            )
            for i, r in enumerate(batch)
        ]

    def _forward(self, ids: Tensor, mask: Tensor, positions: Tensor, cache: DynamicCache) -> Any:
        """One step: ids (R, S) with mask (R, W) over everything cached so far plus these."""
        return self._model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,  # only the last position's logits are sampled from
            **{self._cache_kwarg: cache},
        )

    def _budget(self, request: _Request) -> int:
        if self._max_positions is None:
            return request.params.max_tokens
        return min(request.params.max_tokens, self._max_positions - len(request.prompt))

    def _generator(self, seed: int | None) -> torch.Generator:
        if seed is None:
            return self._default_gen
        return torch.Generator(device=self.device).manual_seed(seed)


def _wrap(exc: Exception, what: str) -> BackendError:
    """``exc`` as the BackendError callers catch (one object per request: tracebacks differ)."""
    if isinstance(exc, BackendError):
        return exc
    error = BackendError(f"{what}: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error
