"""``check-logprobs``: do the trainer's recomputed logprobs match what the sampler logged?

docs/architecture.md, invariant 1: with the weights that sampled a trajectory, recomputing every
sampled token's logprob in one batched forward pass must give back the logged behaviour logprob.
A gap means the runtime's token ids are not what the model saw (re-tokenisation, a template
mismatch), the sampler does not log raw temperature-1 logprobs, or the serving precision differs
(bf16 vLLM vs float32 trainer: expect ~1e-2, not 1e-6). The importance ratio
exp(recomputed − logged) is what TIS would weight each token by, so its spread shows how
off-policy "on-policy" data really is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from tepo_agent.errors import TrainerError
from tepo_agent.model.io import load_causal_lm, load_tokenizer
from tepo_agent.policy.registry import PolicyRegistry
from tepo_agent.store import Store, open_store
from tepo_agent.trainer.batch import pack_batch
from tepo_agent.trainer.recompute import compare_logprobs, recompute
from tepo_agent.trajectory import Trajectory


@dataclass(frozen=True)
class LogprobReport:
    """The comparison over the checked trajectories' sampled tokens.

    Attributes:
        version: The policy version whose trajectories were checked.
        trajectories: Trajectories compared.
        tokens: Sampled tokens compared.
        mean_abs_diff, max_abs_diff: |recomputed − logged| statistics.
        ratio_min, ratio_max, ratio_std: Spread of exp(recomputed − logged).
    """

    version: int
    trajectories: int
    tokens: int
    mean_abs_diff: float
    max_abs_diff: float
    ratio_min: float
    ratio_max: float
    ratio_std: float

    def lines(self) -> list[str]:
        return [
            f"policy version {self.version}: {self.trajectories} trajectories, "
            f"{self.tokens} sampled tokens",
            f"|recomputed - logged| logprob: mean {self.mean_abs_diff:.3e}, "
            f"max {self.max_abs_diff:.3e}",
            f"importance ratio exp(recomputed - logged): min {self.ratio_min:.6f}, "
            f"max {self.ratio_max:.6f}, std {self.ratio_std:.3e}",
        ]


def _version_model(
    registry: PolicyRegistry, version: int, device: str
) -> tuple[torch.nn.Module, str]:
    """The weights of a registered version (a LoRA version merged into version 0)."""
    record = registry.get(version)
    if record.kind == "full":
        return load_causal_lm(record.path, device=device, dtype="float32"), record.path
    from tepo_agent.model.lora import merged_lora_weights
    from tepo_agent.policy.hotswap import base_weights

    base = registry.get(0).path
    model = load_causal_lm(base, device=device, dtype="float32")
    model.load_state_dict(merged_lora_weights(model, base_weights(base), record.path))
    return model, base


def _latest_sampled_version(store: Store) -> int:
    version = store.newest_sampled_version()
    if version is None:
        raise TrainerError(
            f"no trajectory of a registered policy version in {store.location}; run the agent "
            "with --db first (`tepo-agent run QUESTION --db ...`)"
        )
    return version


def check_logprobs(
    db: str | os.PathLike[str],
    *,
    model_dir: str | os.PathLike[str] | None = None,
    version: int | None = None,
    limit: int = 32,
    device: str = "cpu",
    micro_batch_size: int = 8,
) -> LogprobReport:
    """Compare the ``limit`` most recent trajectories of one version (see module docstring).

    Args:
        db: The trajectory database.
        model_dir: The weights to recompute with; default: the checked version's.
        version: The policy version whose trajectories are checked; default: the latest version
            that has trajectories (the one the last run sampled with).
        limit: Most trajectories to check.
    """
    if limit < 1:
        raise TrainerError(f"limit must be >= 1, got {limit}")
    with open_store(db, create=False) as store:
        registry = PolicyRegistry(store)
        if version is None:
            version = _latest_sampled_version(store)
        recent = store.list(policy_version=version, newest_first=True, limit=limit)
        trajectories: list[Trajectory] = [store.get(r.id) for r in recent]
        trajectories = [
            t
            for t in trajectories
            if all(turn.policy_version == version for turn in t.assistant_turns())
        ]
        if not trajectories:
            raise TrainerError(
                f"no trajectory of policy version {version} in {db}; run the agent first, or "
                "name a version that sampled some (`tepo-agent policies` counts them)"
            )
        if model_dir is not None:
            model = load_causal_lm(model_dir, device=device, dtype="float32")
            tokenizer_dir = str(model_dir)
        else:
            model, tokenizer_dir = _version_model(registry, version, device)
    pad = load_tokenizer(tokenizer_dir).pad_token_id or 0
    batch = pack_batch(trajectories, pad_token_id=int(pad))
    logprobs, _ = recompute(model, batch, micro_batch_size=micro_batch_size)
    check = compare_logprobs(batch, logprobs)
    sampled = batch.sampled_mask.clone()
    sampled[:, 0] = False
    ratio = torch.exp(logprobs - batch.behaviour_logprobs)[sampled]
    return LogprobReport(
        version=version,
        trajectories=len(trajectories),
        tokens=check.tokens,
        mean_abs_diff=check.mean_abs_diff,
        max_abs_diff=check.max_abs_diff,
        ratio_min=float(ratio.min()) if ratio.numel() else 1.0,
        ratio_max=float(ratio.max()) if ratio.numel() else 1.0,
        ratio_std=float(ratio.std()) if ratio.numel() > 1 else 0.0,
    )


__all__ = ["LogprobReport", "check_logprobs"]
