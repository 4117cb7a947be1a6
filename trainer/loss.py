"""The TEPO policy loss: token-level PPO-clip with clip-higher, TIS and an optional KL penalty.

A pure tensor function. Per token t of sequence b (every tensor is (B, T), aligned to target
positions: entry t is about token t, predicted from the logits at t − 1)::

    old      = proximal logprob if given, else behaviour logprob     (detached)
    ratio    = exp(logp − old)
    pg       = −min(ratio·A, clip(ratio, 1 − ε_low, 1 + ε_high)·A)
    w        = min(exp(proximal − behaviour), C)  on off-policy tokens, 1 elsewhere  (detached)
    kl       = exp(ref − logp) − (ref − logp) − 1                     (k3, if ref given)
    loss_t   = w·pg + β·kl

aggregated over the tokens with ``loss_mask`` = 1.

The ratios, precisely. *Behaviour* logprobs are the ones the sampling backend logged (raw, T = 1).
*Proximal* logprobs are the trainer's own recomputation with the weights at the start of this
optimisation step (``recompute.recompute``, no grad). On-policy data (sampled by the version being
trained) has proximal ≈ behaviour, and the PPO ratio is taken against the proximal policy if given,
else the behaviour policy. For off-policy tokens (sampled by an older version) this is decoupled
PPO (Hilton et al. 2022; AReaL): the trust region is around the proximal policy, and the shift
from the behaviour policy is corrected by the truncated importance weight
``min(exp(logp_proximal − logp_behaviour), C)`` — the TIS of Yao et al. 2025 ("Your efficient RL
framework secretly brings you off-policy RL training"; TRL's ``vllm_importance_sampling_cap``),
with C = ``LossConfig.tis_cap``. The weight is detached: it rescales the gradient, it is not
optimised.

Where this departs from textbook GRPO (DeepSeekMath), and why:

- **Token-mean** aggregation (DAPO; ``aggregation="token_mean"``): every unmasked token of the batch
  weighs the same. GRPO's per-sequence mean down-weights the tokens of long trajectories, a length
  bias (Dr. GRPO); ``"sequence_mean"`` keeps it available.
- **Clip-higher** (DAPO): separate ε_low = 0.2 and ε_high = 0.28 so that low-probability tokens
  with a positive advantage can still grow, which slows entropy collapse.
- **TIS** for off-policy tokens (above): production trajectories come from whatever version was
  live, often older than the one being trained.
- **KL off by default** (β = 0, as DAPO and Dr. GRPO); k3 to a reference policy when β > 0.
- Advantages are per token (the dense TEPO reward gives different turns different advantages;
  see ``advantages.py``), not one scalar per sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tepo_agent.errors import TrainerError
from tepo_agent.trainer.config import LossConfig

_EMPTY_METRICS = (
    "pg_loss",
    "clip_frac_low",
    "clip_frac_high",
    "ratio_mean",
    "ratio_min",
    "ratio_max",
    "tis_weight_mean",
    "tis_capped_frac",
    "off_policy_frac",
)


@dataclass(frozen=True)
class LossOutput:
    """The scalar loss (with grad) and detached metrics over the unmasked tokens.

    ``metrics`` keys: ``loss``, ``pg_loss``, ``tokens``, ``clip_frac_low`` (A < 0 and the ratio
    below 1 − ε_low: clipped, no gradient), ``clip_frac_high`` (A > 0 and the ratio above
    1 + ε_high), ``ratio_mean``, ``ratio_min``, ``ratio_max``, ``tis_weight_mean``,
    ``tis_capped_frac`` (tokens whose weight hit the cap), ``off_policy_frac``, and ``kl`` /
    ``entropy`` (means) when a reference / entropies were given.
    """

    loss: torch.Tensor
    metrics: dict[str, float]


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(π‖π_ref): exp(ref − logp) − (ref − logp) − 1, >= 0."""
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1.0


def tis_weights(
    proximal_logprobs: torch.Tensor,
    behaviour_logprobs: torch.Tensor,
    off_policy: torch.Tensor,
    cap: float,
) -> torch.Tensor:
    """min(exp(proximal − behaviour), cap) where ``off_policy``, 1 elsewhere; (B, T), detached."""
    ratio = torch.exp(proximal_logprobs.detach() - behaviour_logprobs.detach())
    return torch.where(off_policy, ratio.clamp(max=cap), torch.ones_like(ratio))


def _aggregate(per_token: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    if how == "token_mean":
        return (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    per_seq_tokens = mask.sum(dim=1)  # (B,)
    per_seq = (per_token * mask).sum(dim=1) / per_seq_tokens.clamp(min=1.0)  # (B,)
    has_tokens = (per_seq_tokens > 0).to(per_token.dtype)
    return (per_seq * has_tokens).sum() / has_tokens.sum().clamp(min=1.0)


def policy_loss(
    logprobs: torch.Tensor,
    behaviour_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    cfg: LossConfig,
    *,
    proximal_logprobs: torch.Tensor | None = None,
    off_policy: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
) -> LossOutput:
    """The PPO-clip loss of the module docstring.

    Args:
        logprobs: (B, T) current policy logprobs of the target tokens, with grad.
        behaviour_logprobs: (B, T) logprobs logged by the sampler.
        advantages: (B, T) per-token advantages.
        loss_mask: (B, T) 1 on tokens that train, 0 elsewhere (prompt, tool, padding).
        cfg: Clip range, aggregation, TIS cap, KL coefficient.
        proximal_logprobs: (B, T) the trainer's recomputed logprobs at step start (detached
            here); the PPO anchor when given. Required when any token is off-policy.
        off_policy: (B, T) or (B,) bool: tokens (sequences) sampled by an older policy version.
        ref_logprobs: (B, T) reference-policy logprobs for the KL penalty (needed if kl_coef > 0).
        entropy: (B, T) token entropies, only reported in the metrics.

    Raises:
        TrainerError: shapes differ, or off-policy tokens come without proximal logprobs, or
            ``kl_coef > 0`` without reference logprobs.
    """
    shape = logprobs.shape
    named = {
        "behaviour_logprobs": behaviour_logprobs,
        "advantages": advantages,
        "loss_mask": loss_mask,
        "proximal_logprobs": proximal_logprobs,
        "ref_logprobs": ref_logprobs,
        "entropy": entropy,
    }
    _check_shapes(shape, named)
    if cfg.kl_coef > 0 and ref_logprobs is None:
        raise TrainerError("LossConfig.kl_coef > 0 needs ref_logprobs from a reference policy")
    mask = loss_mask.to(logprobs.dtype)  # (B, T)
    off = _off_policy_tokens(off_policy, shape, logprobs.device)
    if proximal_logprobs is None and bool((off & (mask > 0)).any()):
        raise TrainerError(
            "the batch has off-policy tokens but no proximal_logprobs; run "
            "recompute() with the current weights at the start of the step and pass its logprobs"
        )

    old = (proximal_logprobs if proximal_logprobs is not None else behaviour_logprobs).detach()
    ratio = torch.exp(logprobs - old)  # (B, T)
    clipped = ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    pg = -torch.minimum(ratio * advantages, clipped * advantages)  # (B, T)
    if proximal_logprobs is not None:
        weight = tis_weights(proximal_logprobs, behaviour_logprobs, off, cfg.tis_cap)
    else:
        weight = torch.ones_like(ratio)
    per_token = weight * pg
    kl = k3_kl(logprobs, ref_logprobs) if ref_logprobs is not None else None
    if kl is not None and cfg.kl_coef > 0:
        per_token = per_token + cfg.kl_coef * kl
    loss = _aggregate(per_token, mask, cfg.aggregation)
    terms = _LossTerms(ratio, advantages, weight, pg, mask, off, kl, entropy)
    return LossOutput(loss=loss, metrics=_metrics(loss, terms, cfg))


def _check_shapes(shape: torch.Size, tensors: dict[str, torch.Tensor | None]) -> None:
    for name, tensor in tensors.items():
        if tensor is not None and tensor.shape != shape:
            raise TrainerError(
                f"{name} has shape {tuple(tensor.shape)} but logprobs has {tuple(shape)}; "
                f"every per-token tensor must be (B, T) aligned to target positions"
            )


def _off_policy_tokens(
    off_policy: torch.Tensor | None, shape: torch.Size, device: torch.device
) -> torch.Tensor:
    """(B, T) bool: the tokens an older policy version sampled (none when not given)."""
    if off_policy is None:
        return torch.zeros(shape, dtype=torch.bool, device=device)
    off = off_policy.to(torch.bool)
    if off.dim() == 1:
        off = off[:, None].expand(shape)
    if off.shape != shape:
        raise TrainerError(
            f"off_policy must be (B,) or (B, T) = {tuple(shape)}, got {tuple(off.shape)}"
        )
    return off


@dataclass(frozen=True)
class _LossTerms:
    """The (B, T) pieces of one loss evaluation that its metrics are read from."""

    ratio: torch.Tensor
    advantages: torch.Tensor
    weight: torch.Tensor
    pg: torch.Tensor
    mask: torch.Tensor
    off: torch.Tensor
    kl: torch.Tensor | None
    entropy: torch.Tensor | None


@torch.no_grad()
def _metrics(loss: torch.Tensor, t: _LossTerms, cfg: LossConfig) -> dict[str, float]:
    on = t.mask > 0
    n = int(on.sum().item())
    metrics: dict[str, float] = {"loss": float(loss.item()), "tokens": float(n)}
    if n == 0:
        metrics.update(dict.fromkeys(_EMPTY_METRICS, 0.0))
        return metrics
    r = t.ratio[on]
    a = t.advantages[on]
    metrics["pg_loss"] = float(_aggregate(t.weight * t.pg, t.mask, cfg.aggregation).item())
    metrics["clip_frac_low"] = float(((a < 0) & (r < 1 - cfg.clip_low)).float().mean())
    metrics["clip_frac_high"] = float(((a > 0) & (r > 1 + cfg.clip_high)).float().mean())
    metrics["ratio_mean"] = float(r.mean())
    metrics["ratio_min"] = float(r.min())
    metrics["ratio_max"] = float(r.max())
    metrics["tis_weight_mean"] = float(t.weight[on].mean())
    capped = t.off[on] & (t.weight[on] >= cfg.tis_cap)
    metrics["tis_capped_frac"] = float(capped.float().mean())
    metrics["off_policy_frac"] = float(t.off[on].float().mean())
    if t.kl is not None:
        metrics["kl"] = float(t.kl[on].mean())
    if t.entropy is not None:
        metrics["entropy"] = float(t.entropy[on].mean())
    return metrics


__all__ = ["LossOutput", "k3_kl", "policy_loss", "tis_weights"]
