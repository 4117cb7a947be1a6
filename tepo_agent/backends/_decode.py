"""The running batch of :class:`~tepo_agent.backends.transformers_backend.TransformersBackend`.

Iteration-level scheduling, as vLLM and TGI do it: :meth:`DecodeBatch.admit` prefills new requests
(reusing cached prefixes, :mod:`._prefix_cache`), samples their first token and adds them to the
running rows; :meth:`DecodeBatch.step` feeds every running row its last token, samples the next
and lets finished rows leave. The scheduler calls ``admit`` between any two steps, so a request
never waits for the batch ahead of it to finish.

With the packed forward (:mod:`._packed`, Llama-shaped models), ``admit`` only looks up the
cached prefixes and the next ``step`` is a *mixed* step: the joining rows' uncached prompt tokens
are computed in the same forward pass as the running rows' next tokens (vLLM's chunked prefill),
so a join costs no forward pass of its own; every row then samples its next (or first) token.

Every row keeps its own sampling parameters and generator (a seeded request draws the same tokens
alone or in any batch), and for every sampled token its raw temperature-1 log-probability and the
exact full-vocabulary entropy (float32, :func:`tepo_agent.entropy.token_logprobs_and_entropy`).
"""

from __future__ import annotations

import concurrent.futures
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor
from transformers import PreTrainedModel

from tepo_agent.backends._kv import BatchKV, fill_holes
from tepo_agent.backends._packed import Joining, PackedLM
from tepo_agent.backends._prefix_cache import PrefixCache
from tepo_agent.backends._sampling import sample_tokens, sampled_logprobs
from tepo_agent.backends.base import Generation, SamplingParams


@dataclass
class Request:
    """One queued ``generate`` call; ``on_token(id, logprob, entropy)`` runs in the worker
    thread for each token as it is sampled (streaming), before the future is resolved."""

    prompt: tuple[int, ...]
    params: SamplingParams
    future: concurrent.futures.Future[Generation]
    on_token: Callable[[int, float, float], None] | None = None


@dataclass
class _Row:
    """A request being decoded: what it sampled so far and when it stops."""

    request: Request
    gen: torch.Generator
    stops: frozenset[int]
    budget: int  # most tokens it may sample (max_tokens, cut at the context length)
    version: int  # the weights that serve it from its first token to its last
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    finish: Literal["stop", "length"] = "length"

    def record(self, token: int, logprob: float, entropy: float) -> bool:
        """Append one sampled token; True when the row is finished."""
        self.ids.append(token)
        self.logprobs.append(logprob)
        self.entropies.append(entropy)
        if self.request.on_token is not None:
            try:
                self.request.on_token(token, logprob, entropy)
            except Exception:  # a gone listener must not fail the batch; the future still
                self.request.on_token = None  # gets the whole generation
        if token in self.stops:
            self.finish = "stop"
            return True
        return len(self.ids) >= self.budget

    def fed(self) -> list[int]:
        """The tokens whose KV the row holds: the prompt and all sampled tokens but the last."""
        return [*self.request.prompt, *self.ids[:-1]]

    def generation(self) -> Generation:
        return Generation(
            prompt_token_ids=self.request.prompt,
            token_ids=tuple(self.ids),
            logprobs=tuple(self.logprobs),
            entropies=tuple(self.entropies),
            entropy_kind="exact",
            finish_reason=self.finish,
            policy_version=self.version,
        )


Finished = list[tuple[Request, Generation]]


class JoinFailed(Exception):
    """A mixed step failed with rows joining: these joining requests fail, the running rows go
    on (the exception's ``__cause__`` is the error)."""

    def __init__(self, requests: list[Request]) -> None:
        super().__init__(f"{len(requests)} joining requests failed")
        self.requests = requests


class DecodeBatch:
    """The rows decoding together, their KV cache, and the prefix cache they read and fill.

    Args:
        model: the causal LM (read only here; the backend swaps its weights when no row runs).
        eos: end ids every request stops on, besides its own ``stop_token_ids``.
        pad_token_id: the id fed at padded positions (masked out, so any valid id works).
        compute_entropy: False reports NaN entropies (to measure their cost).
        prefix_cache: where prompts look for cached prefixes and finished rows leave theirs;
            None turns prefix caching off.
        generator: a request's generator from its seed (None: the backend's shared one).
        max_rows: the most rows decoded together (the cache's buffers are allocated for them, so
            a joining row is written into a free row instead of copying the batch).
        packed: run mixed steps with :class:`~._packed.PackedLM` (the caller checks
            :func:`~._packed.packed_support`); False: HF's forward, one prefill pass per admit.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        eos: frozenset[int],
        pad_token_id: int,
        compute_entropy: bool,
        prefix_cache: PrefixCache | None,
        generator: Callable[[int | None], torch.Generator],
        max_rows: int = 8,
        packed: bool = False,
    ) -> None:
        self._model = model
        self._eos = eos
        self._pad = pad_token_id
        self._compute_entropy = compute_entropy
        self._prefix = prefix_cache
        self._generator = generator
        self._max_positions: int | None = getattr(model.config, "max_position_embeddings", None)
        self._device = next(model.parameters()).device
        # transformers 5 renamed forward's `past_key_values` to `cache`; support both.
        forward_params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in forward_params else "past_key_values"
        self.rows: list[_Row] = []
        self._packed = PackedLM(model) if packed else None
        self._joining: list[tuple[_Row, int, Tensor | None]] = []  # admitted, (row, cached, kv)
        self._max_rows = max_rows
        self._kv = BatchKV.from_rows([], self._device, max_rows)
        self._last = torch.zeros(0, dtype=torch.long, device=self._device)  # (R,) to feed next
        self._pos = torch.zeros(0, dtype=torch.long, device=self._device)  # (R,) their positions
        self.prompt_tokens = 0  # prompt tokens admitted so far
        self.cached_tokens = 0  # of which read from the prefix cache instead of computed

    def __len__(self) -> int:
        """Rows running, and admitted rows waiting for their mixed step."""
        return len(self.rows) + len(self._joining)

    def clear(self) -> list[Request]:
        """Drop every running and admitted row (after an error) and return their requests."""
        dropped = [row.request for row in self.rows] + [row.request for row, _, _ in self._joining]
        self.rows, self._joining = [], []
        self._kv = BatchKV.from_rows([], self._device, self._max_rows)
        self._last, self._pos = self._last[:0], self._pos[:0]
        return dropped

    # ------------------------------------------------------------------ admission

    @torch.inference_mode()
    def admit(self, requests: Sequence[Request], version: int) -> Finished:
        """Prefill ``requests`` together, sample their first token, and add the unfinished ones
        to the running rows. Returns the requests that finished on their first token.

        With the packed forward, only look up their cached prefixes: the next :meth:`step`
        computes the rest of their prompts with the running rows' tokens (returns nothing)."""
        rows = [
            _Row(
                r,
                self._generator(r.params.seed),
                self._eos | set(r.params.stop_token_ids),
                self._budget(r),
                version,
            )
            for r in requests
        ]
        if self._packed is not None:
            for row in rows:
                cached, kv = self._lookup(row.request.prompt)
                self._joining.append((row, cached, kv))
                self.prompt_tokens += len(row.request.prompt)
                self.cached_tokens += cached
            return []
        kv, logits = self._prefill(rows)  # (N, V)
        done = self._sample(logits, rows)
        if self._prefix is not None:  # a row that goes on leaves its blocks when it finishes
            for i in done:
                self._prefix.store(rows[i].request.prompt, kv.row_source(i))
        keep = fill_holes(len(rows), done)
        finished = [(rows[i].request, rows[i].generation()) for i in done]
        if keep:
            if done:
                kv.select(keep)
            self._kv.extend(kv)
            new = [rows[i] for i in keep]
            pos = torch.tensor([len(r.request.prompt) for r in new], device=self._device)
            self.rows.extend(new)
            self._last, self._pos = self._last_tokens(), torch.cat([self._pos, pos])
        return finished

    def _prefill(self, rows: list[_Row]) -> tuple[BatchKV, Tensor]:
        """One forward pass over the prompts' uncached tokens, left-padded; returns the new
        rows' cache and their last-position logits (N, V)."""
        prompts = [row.request.prompt for row in rows]
        hits = [self._lookup(p) for p in prompts]
        kv = BatchKV.from_rows([kv for _, kv in hits], self._device, self._max_rows)
        todo = [p[n:] for p, (n, _) in zip(prompts, hits, strict=True)]
        width = max(len(t) for t in todo)
        ids = torch.full((len(rows), width), self._pad, dtype=torch.long)
        real = torch.zeros((len(rows), width), dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (tokens, (cached, _)) in enumerate(zip(todo, hits, strict=True)):
            ids[i, width - len(tokens) :] = torch.tensor(tokens)
            real[i, width - len(tokens) :] = 1
            positions[i, width - len(tokens) :] = torch.arange(cached, cached + len(tokens))
        kv.append_columns(real.to(self._device))
        out = self._forward(ids.to(self._device), positions.to(self._device), kv)
        self.prompt_tokens += sum(len(p) for p in prompts)
        self.cached_tokens += sum(n for n, _ in hits)
        return kv, out.logits[:, -1, :].float()

    def _lookup(self, prompt: tuple[int, ...]) -> tuple[int, Tensor | None]:
        if self._prefix is None:
            return 0, None
        # at least the last prompt token is computed: its logits give the first sampled token
        return self._prefix.lookup(prompt, len(prompt) - 1)

    # ------------------------------------------------------------------ decoding

    @torch.inference_mode()
    def step(self) -> Finished:
        """Feed every running row its last token, sample the next; finished rows leave. With
        the packed forward, the admitted rows' prompts ride in the same pass (a mixed step)."""
        if self._packed is not None:
            return self._mixed_step(self._packed)
        self._kv.append_columns(torch.ones_like(self._last).unsqueeze(-1))
        out = self._forward(self._last.unsqueeze(-1), self._pos.unsqueeze(-1), self._kv)
        self._pos = self._pos + 1
        done = self._sample(out.logits[:, -1, :].float(), self.rows)  # (R, V)
        return self._leave(done)

    def _mixed_step(self, lm: PackedLM) -> Finished:
        """One packed forward over the running rows' last tokens and the joining rows' uncached
        prompt tokens (:mod:`._packed`); every row samples, the joining ones their first.

        When the pass fails with rows joining, the cache is rolled back to the running rows and
        :class:`JoinFailed` fails the joining ones only (as a failed prefill pass did); the
        running rows retry at the next step, alone (if that fails too, they fail)."""
        joining = self._joining
        decode = len(self.rows)
        if decode:
            self._kv.open_column()
        try:
            logits = self._packed_pass(lm, decode)
        except Exception as exc:
            if not joining:
                raise
            self._kv.select(list(range(decode)))  # the joining rows go, then the new column
            self._kv.drop_last_column()
            self._joining = []
            raise JoinFailed([row.request for row, _, _ in joining]) from exc
        self.rows.extend(row for row, _, _ in joining)
        self._joining = []
        lengths = [len(row.request.prompt) for row, _, _ in joining]
        self._pos = torch.cat(
            [self._pos + 1, torch.tensor(lengths, dtype=torch.long, device=self._device)]
        )
        return self._leave(self._sample(logits, self.rows))

    def _packed_pass(self, lm: PackedLM, decode: int) -> Tensor:
        """Add the joining rows to the cache (the running rows' column is open) and run the
        packed forward; the logits (R + J, V)."""
        ids, pos = [self._last], [self._pos]
        plans, joins = [], []
        for i, (row, cached, prefix) in enumerate(self._joining):
            prompt = row.request.prompt
            plans.append(Joining(decode + i, cached, len(prompt) - cached))
            joins.append((prefix, len(prompt) - cached))
            ids.append(torch.tensor(prompt[cached:], dtype=torch.long, device=self._device))
            pos.append(torch.arange(cached, len(prompt), device=self._device))
        if joins:  # each prefix written once, into the row's place in the batch's buffers
            self._kv.join(joins, lm.blank_row)
        return lm.forward(torch.cat(ids), torch.cat(pos), self._kv, decode, plans)

    def _leave(self, done: set[int]) -> Finished:
        """Finished rows leave (their KV stored in the prefix cache); the rest feed next."""
        if not done:
            self._last = self._last_tokens()
            return []
        finished = []
        for i in done:
            row = self.rows[i]
            if self._prefix is not None:  # the conversation's next turn starts with these
                self._prefix.store(row.fed(), self._kv.row_source(i))
            finished.append((row.request, row.generation()))
        keep = fill_holes(len(self.rows), done)  # the last rows take the leaving rows' places
        self._kv.select(keep)
        self.rows = [self.rows[i] for i in keep]
        self._pos = self._pos[keep]
        self._last = self._last_tokens()
        return finished

    def _last_tokens(self) -> Tensor:
        """(R,) the token each running row feeds next: the one it sampled last."""
        return torch.tensor([r.ids[-1] for r in self.rows], dtype=torch.long, device=self._device)

    def _sample(self, logits: Tensor, rows: list[_Row]) -> set[int]:
        """Draw one token per row from ``logits`` (R, V) and record it; the finished rows."""
        chosen = sample_tokens(logits, [r.request.params for r in rows], [r.gen for r in rows])
        lp, h = sampled_logprobs(logits, chosen, entropy=self._compute_entropy)
        done = set()
        for i, (row, t, p, e) in enumerate(
            zip(rows, chosen.tolist(), lp.tolist(), h.tolist(), strict=True)
        ):
            if row.record(t, p, e):
                done.add(i)
        return done

    def _forward(self, ids: Tensor, positions: Tensor, kv: BatchKV) -> Any:
        """ids (R, S) at ``positions`` (R, S); ``kv.mask`` (R, W) already covers them."""
        return self._model(
            input_ids=ids,
            attention_mask=kv.mask,
            position_ids=positions,
            **{self._cache_kwarg: kv.cache},
            use_cache=True,
            logits_to_keep=1,  # only the last position's logits are sampled from
        )

    def _budget(self, request: Request) -> int:
        if self._max_positions is None:
            return request.params.max_tokens
        return min(request.params.max_tokens, self._max_positions - len(request.prompt))


__all__ = ["DecodeBatch", "Finished", "JoinFailed", "Request"]
