"""One forward pass for a mixed step: the running rows' next tokens and the joining rows' prompts.

vLLM's chunked prefill in miniature. A scheduler step feeds every running row (a *decode* row)
its last sampled token and every *joining* row the prompt tokens its cached prefix does not cover,
all in one forward pass: the query tokens are packed into one sequence of T tokens (decode rows
first, one token each, then each joining row's tokens in order), with no padding, so the weights
are read once per step and the per-call overhead is paid once, however many rows join.

HF's modeling code cannot run a packed ragged batch over per-row caches, so this is a small
forward of its own for Llama-shaped decoders (:func:`packed_support` says which), built from the
loaded model's own modules and weights: ``embed_tokens``, per layer ``input_layernorm``,
``self_attn.{q,k,v,o}_proj`` (with their biases), ``post_attention_layernorm`` and ``mlp``, then
``norm`` and ``lm_head`` (at the sampled positions only). Rotary cos/sin come from the model's
``rotary_emb`` (it knows the rope type) and transformers' ``apply_rotary_pos_emb``.

Cache layout (:mod:`._kv`): the caller has already made room in the :class:`~._kv.BatchKV`
(W columns after this step): a decode row's new token is its last column, ``W - 1``; a joining
row holds its cached prefix and then its new tokens, right-aligned, so its new tokens are its
last ``new`` columns and its keys are its last ``cached + new`` columns. Each layer writes the
new keys and values into those columns in place, then attends: the decode rows together in one
SDPA call under the batch's (R, W) mask, each joining row on its own, its queries against its
prefix and its own keys with a causal mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from tepo_agent.backends._kv import BatchKV, RowKV

SUPPORTED_MODEL_TYPES = frozenset({"qwen2", "llama"})
"""Config ``model_type`` s whose decoder layers are exactly what :class:`PackedLM` computes."""

_LENGTH_DEPENDENT_ROPE = frozenset({"dynamic", "longrope"})
"""Rope types whose frequencies depend on the sequence length, not on the position alone."""


def packed_support(model: PreTrainedModel) -> str | None:
    """None when :class:`PackedLM` computes ``model`` exactly, else why not (HF's forward is
    used then): another model type, sliding-window layers, a rope type that depends on the
    sequence length, or modules other than the Llama/Qwen2 ones."""
    config = model.config
    kind = getattr(config, "model_type", None)
    if kind not in SUPPORTED_MODEL_TYPES:
        return f"model type {kind!r} is not one of {sorted(SUPPORTED_MODEL_TYPES)}"
    if getattr(config, "use_sliding_window", False):
        return "sliding-window attention"
    if set(getattr(config, "layer_types", None) or ["full_attention"]) != {"full_attention"}:
        return "layers other than full attention"
    inner = getattr(model, "model", None)
    rotary = getattr(inner, "rotary_emb", None)
    if rotary is None or getattr(rotary, "rope_type", "default") in _LENGTH_DEPENDENT_ROPE:
        return "a rope type whose frequencies depend on the sequence length"
    attn = inner.layers[0].self_attn  # type: ignore[union-attr]
    if any(hasattr(attn, name) for name in ("q_norm", "k_norm")):
        return "q/k norms"
    mlp = inner.layers[0].mlp  # type: ignore[union-attr]
    if not all(hasattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return "an MLP other than the gated one"
    for layer in inner.layers:  # type: ignore[union-attr]
        a, m = layer.self_attn, layer.mlp
        projections = (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj)
        if any(type(p) is not nn.Linear for p in projections):  # e.g. an unmerged LoRA layer
            return "projections other than plain nn.Linear (an unmerged adapter?)"
    return None


FUSE_BELOW_BYTES = 64 * 2**20
"""Fuse each layer's q/k/v and gate/up projections into one matmul each when all their weights
together take less than this: a fused copy, rebuilt whenever an original changes in place (a
weight swap). On small models the per-call overhead, not the arithmetic, is what a step costs;
on large ones the copy is not worth its memory and the model's own projections are used."""


class _Fused:
    """Several linears over the same input as one: outputs split back in the same order. The
    concatenated weights are rebuilt when any original's storage or version counter changes."""

    def __init__(self, linears: Sequence[nn.Module]) -> None:
        self._linears = list(linears)
        self._sizes = [int(lin.out_features) for lin in self._linears]
        self._key: tuple[tuple[int, int], ...] = ()
        self._weight: Tensor | None = None
        self._bias: Tensor | None = None

    def __call__(self, x: Tensor) -> list[Tensor]:
        params = [p for lin in self._linears for p in (lin.weight, lin.bias) if p is not None]
        key = tuple((p.data_ptr(), p._version) for p in params)
        if key != self._key or self._weight is None:
            self._rebuild()
            self._key = key
        return list(F.linear(x, self._weight, self._bias).split(self._sizes, dim=-1))

    def _rebuild(self) -> None:
        self._weight = torch.cat([lin.weight.detach() for lin in self._linears])
        if all(lin.bias is None for lin in self._linears):
            self._bias = None
            return
        self._bias = torch.cat(
            [
                lin.weight.new_zeros(lin.out_features) if lin.bias is None else lin.bias.detach()
                for lin in self._linears
            ]
        )


@dataclass(frozen=True)
class Joining:
    """A joining row of the step: its row in the batch, how many of its prompt tokens come from
    the prefix cache, and how many are computed now (its query tokens)."""

    row: int
    cached: int
    new: int


class PackedLM:
    """The packed forward of a supported model (check :func:`packed_support` first).

    Args:
        model: the loaded causal LM; its modules are used as they are, so a weight swap
            (copied in place) is seen at once.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        reason = packed_support(model)
        if reason is not None:
            raise ValueError(f"the packed forward does not support this model: {reason}")
        self._inner: nn.Module = model.model  # type: ignore[assignment]
        self._lm_head: nn.Module = model.get_output_embeddings()
        self._layers: Sequence[nn.Module] = list(self._inner.layers)  # type: ignore[arg-type]
        attn = self._layers[0].self_attn
        self._head_dim = int(attn.head_dim)
        self._kv_heads = int(attn.k_proj.out_features) // self._head_dim
        self._q_heads = int(attn.q_proj.out_features) // self._head_dim
        self._param = next(model.parameters())
        fused = [
            (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj)
            for layer in self._layers
        ] + [(layer.mlp.gate_proj, layer.mlp.up_proj) for layer in self._layers]
        size = sum(lin.weight.numel() * lin.weight.element_size() for g in fused for lin in g)
        self._qkv = (
            [_Fused(g) for g in fused[: len(self._layers)]] if size < FUSE_BELOW_BYTES else []
        )
        self._gate_up = [_Fused(g) for g in fused[len(self._layers) :]] if self._qkv else []

    def blank_row(self, prefix: RowKV | Tensor | None, new: int) -> RowKV:
        """A joining row's cache before its step: ``prefix`` then ``new`` zero columns that
        the step overwrites with the keys and values it computes."""
        layers = []
        for layer in range(len(self._layers)):
            zeros = self._param.new_zeros((self._kv_heads, new, self._head_dim))
            if prefix is None:
                layers.append((zeros, zeros.clone()))
            else:
                k, v = prefix[layer]
                layers.append((torch.cat([k, zeros], dim=1), torch.cat([v, zeros], dim=1)))
        return tuple(layers)

    @torch.inference_mode()
    def forward(
        self, ids: Tensor, positions: Tensor, kv: BatchKV, decode: int, joining: Sequence[Joining]
    ) -> Tensor:
        """Logits (decode + len(joining), V) in float32: one per decode row (rows ``0..decode``,
        one query token each) and one per joining row (at its last token).

        Args:
            ids: (T,) the packed query tokens: the decode rows' then each joining row's.
            positions: (T,) their positions in their own sequences.
            kv: the batch's cache and mask, room already made (module docstring).
            decode: how many decode rows (the first rows of ``kv``).
            joining: the joining rows, in the order their tokens are packed.
        """
        h = self._inner.embed_tokens(ids)  # (T, hidden)
        cos, sin = self._inner.rotary_emb(h, positions[None])
        cos, sin = cos[0], sin[0]  # (T, head_dim)
        group = self._q_heads // self._kv_heads
        keep = _additive(kv.mask[:decode].bool()[:, None, None, :], h.dtype)  # (R, 1, 1, W)
        causal = [_additive(_causal(j, h.device).repeat(group, 1), h.dtype) for j in joining]
        for i, (layer, (keys, values)) in enumerate(
            zip(self._layers, kv.layer_views(), strict=True)
        ):
            residual = h
            h = _norm(layer.input_layernorm, h)
            q, k, v = self._project(i, h, cos, sin)
            out = _attend(q, k, v, keys, values, keep, decode, joining, causal, layer.self_attn)
            h = residual + layer.self_attn.o_proj(out.reshape(h.shape[0], -1))
            h = h + self._mlp(i, _norm(layer.post_attention_layernorm, h))
        last = [decode + sum(j.new for j in joining[: i + 1]) - 1 for i in range(len(joining))]
        index = torch.tensor([*range(decode), *last], dtype=torch.long, device=h.device)
        return self._lm_head(_norm(self._inner.norm, h[index])).float()

    def _project(
        self, i: int, h: Tensor, cos: Tensor, sin: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Layer i's queries (T, Hq, D), keys and values (T, Hkv, D), rotated at their
        positions."""
        attn = self._layers[i].self_attn
        if self._qkv:
            q, k, v = self._qkv[i](h)
        else:
            q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
        shape = (h.shape[0], -1, self._head_dim)
        q, k = apply_rotary_pos_emb(q.view(shape), k.view(shape), cos, sin, unsqueeze_dim=1)
        return q, k, v.view(shape)

    def _mlp(self, i: int, h: Tensor) -> Tensor:
        """Layer i's gated MLP: ``down(act(gate(h)) * up(h))``."""
        mlp = self._layers[i].mlp
        if not self._gate_up:
            return mlp(h)  # type: ignore[no-any-return]
        gate, up = self._gate_up[i](h)
        return mlp.down_proj(mlp.act_fn(gate) * up)  # type: ignore[no-any-return]


def _norm(norm: nn.Module, h: Tensor) -> Tensor:
    """The model's RMSNorm: one fused op in float32 (the same numbers), its own code otherwise."""
    eps = getattr(norm, "variance_epsilon", None)
    if h.dtype != torch.float32 or eps is None:
        return norm(h)  # type: ignore[no-any-return]
    return F.rms_norm(h, (h.shape[-1],), norm.weight, eps)


def _additive(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """A bool mask as SDPA's additive one (0 or -inf): cheaper per call, made once per step."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, float("-inf")
    )


def _causal(joining: Joining, device: torch.device) -> Tensor:
    """(new, cached + new) bool: query i sees the prefix and its own tokens up to itself."""
    width = joining.cached + joining.new
    seen = torch.arange(width, device=device)[None, :]
    upto = torch.arange(joining.cached, width, device=device)[:, None]
    return seen <= upto


def _attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    keys: Tensor,
    values: Tensor,
    keep: Tensor,
    decode: int,
    joining: Sequence[Joining],
    causal: Sequence[Tensor],
    attn: nn.Module,
) -> Tensor:
    """Write the step's keys/values into the batch's (R', Hkv, W, D) views and attend; returns
    (T, Hq, D) in packed order.

    Grouped-query attention without repeating keys: query head h reads key/value head
    ``h // G`` (G = Hq / Hkv, HF's ``repeat_kv`` order), so a key/value head's G query heads are
    folded into the query length: (R, Hkv, G, D) for the decode rows (one token each), and
    (1, Hkv, G * new, D) for a joining row, its causal mask repeated G times."""
    out = torch.empty_like(q)
    scale = float(attn.scaling)
    q_heads, dim = q.shape[1:]
    kv_heads = k.shape[1]
    group = q_heads // kv_heads
    if decode:
        keys[:decode, :, -1] = k[:decode]
        values[:decode, :, -1] = v[:decode]
        o = F.scaled_dot_product_attention(
            q[:decode].view(decode, kv_heads, group, dim),
            keys[:decode],
            values[:decode],
            attn_mask=keep,
            scale=scale,
        )
        out[:decode] = o.reshape(decode, q_heads, dim)
    start = decode
    for j, mask in zip(joining, causal, strict=True):
        span = slice(start, start + j.new)
        keys[j.row, :, -j.new :] = k[span].transpose(0, 1)
        values[j.row, :, -j.new :] = v[span].transpose(0, 1)
        seen = -(j.cached + j.new)
        folded = q[span].view(j.new, kv_heads, group, dim).permute(1, 2, 0, 3)
        o = F.scaled_dot_product_attention(
            folded.reshape(1, kv_heads, group * j.new, dim),
            keys[j.row : j.row + 1, :, seen:],
            values[j.row : j.row + 1, :, seen:],
            attn_mask=mask,
            scale=scale,
        )
        o = o.view(kv_heads, group, j.new, dim).permute(2, 0, 1, 3)
        out[span] = o.reshape(j.new, q_heads, dim)
        start += j.new
    return out


__all__ = ["SUPPORTED_MODEL_TYPES", "Joining", "PackedLM", "packed_support"]
