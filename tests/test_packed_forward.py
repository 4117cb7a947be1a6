"""The packed forward of a mixed step (:mod:`tepo_agent.backends._packed`) gives, for every row,
the logits HF's own forward gives for that row run alone: prefills with and without a cached
prefix, decode steps of ragged rows, and steps where rows join a running batch, on the shipped
default model, a random Qwen2 with 2 key/value heads and biases, and a random Llama (no biases)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _tiny_lm import tiny_model
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from tepo_agent.backends import _packed
from tepo_agent.backends._kv import BatchKV, RowKV
from tepo_agent.backends._packed import Joining, PackedLM, packed_support
from tepo_agent.model.io import load_causal_lm

CPU = torch.device("cpu")
TOL = 1e-4


def _llama() -> LlamaForCausalLM:
    torch.manual_seed(3)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.2,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(params=["default", "qwen2-gqa", "llama"])
def model(request: pytest.FixtureRequest, default_model_dir: Path) -> PreTrainedModel:
    if request.param == "default":
        return load_causal_lm(default_model_dir, device="cpu", dtype="float32").eval()
    return tiny_model(1) if request.param == "qwen2-gqa" else _llama()


class Driver:
    """Runs rows through :class:`PackedLM` as the decode batch does: each step opens a column
    for the running rows and adds the joining rows with blank columns for their new tokens."""

    def __init__(self, model: PreTrainedModel, lm: PackedLM | None = None) -> None:
        self.lm = lm or PackedLM(model)
        self.kv = BatchKV.from_rows([], CPU, capacity=6)
        self.seqs: list[list[int]] = []
        self.fed: list[int] = []  # tokens of each row in the cache

    def step(self, joins: list[tuple[list[int], RowKV | None, int, int]]) -> torch.Tensor:
        """joins: (sequence, cached prefix KV, cached length, tokens to have after the step)."""
        ids, pos = [], []
        decode = len(self.seqs)
        if decode:
            self.kv.open_column()
        for r in range(decode):
            ids.append(self.seqs[r][self.fed[r]])
            pos.append(self.fed[r])
            self.fed[r] += 1
        plans, rows = [], []
        for i, (seq, prefix, cached, upto) in enumerate(joins):
            plans.append(Joining(decode + i, cached, upto - cached))
            rows.append((prefix, upto - cached))
            ids += seq[cached:upto]
            pos += range(cached, upto)
            self.seqs.append(seq)
            self.fed.append(upto)
        if rows:  # into the free rows of the buffers, or (first step) blank rows extended
            self.kv.join(rows, self.lm.blank_row)
        return self.lm.forward(torch.tensor(ids), torch.tensor(pos), self.kv, decode, plans)


def _alone(model: PreTrainedModel, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([tokens])).logits[0, -1].float()


def _hf_prefix(model: PreTrainedModel, tokens: list[int]) -> RowKV:
    """A prefix's KV as HF computes it (what the prefix cache holds)."""
    with torch.no_grad():
        cache = model(input_ids=torch.tensor([tokens]), use_cache=True).past_key_values
    return tuple((layer.keys[0], layer.values[0]) for layer in cache.layers)


def _check(model: PreTrainedModel, driver: Driver, logits: torch.Tensor) -> None:
    assert logits.shape[0] == len(driver.seqs)
    for r, (seq, fed) in enumerate(zip(driver.seqs, driver.fed, strict=True)):
        diff = (logits[r] - _alone(model, seq[:fed])).abs().max().item()
        assert diff < TOL, (r, fed, diff)


def test_prefill_decode_and_mixed_steps_equal_each_row_alone(model: PreTrainedModel) -> None:
    assert packed_support(model) is None
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(5)
    seqs = [torch.randint(0, vocab, (90,), generator=g).tolist() for _ in range(4)]
    seqs[3][:24] = seqs[0][:24]  # row 3 shares row 0's first 24 tokens
    driver = Driver(model)
    # a prefill of two ragged rows, one with a cached prefix (HF's), one without
    joins = [(seqs[0], None, 0, 30), (seqs[1], _hf_prefix(model, seqs[1][:8]), 8, 13)]
    _check(model, driver, driver.step(joins))
    for _ in range(3):  # decode steps of ragged rows
        _check(model, driver, driver.step([]))
    # a mixed step: two rows join the running ones, one longer than the batch (it widens)
    joins = [(seqs[2], None, 0, 70), (seqs[3], _hf_prefix(model, seqs[3][:24]), 24, 29)]
    _check(model, driver, driver.step(joins))
    for _ in range(2):
        _check(model, driver, driver.step([]))
    # rows leave (the last takes the first's place), a row joins with a prefix this batch made
    kept = [3, 1, 2]
    prefix = driver.kv.row(0)
    driver.kv.select(kept)
    driver.seqs = [driver.seqs[i] for i in kept]
    driver.fed = [driver.fed[i] for i in kept]
    cached = int(prefix[0][0].shape[1])
    _check(model, driver, driver.step([(seqs[0], prefix, cached, 60)]))
    _check(model, driver, driver.step([]))


def test_unsupported_models_are_named() -> None:
    config = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        use_sliding_window=True,
        sliding_window=8,
        max_window_layers=0,
    )
    reason = packed_support(Qwen2ForCausalLM(config))
    assert reason is not None and "sliding" in reason
    with pytest.raises(ValueError, match="sliding"):
        PackedLM(Qwen2ForCausalLM(config))
    wrapped = tiny_model(1)  # a projection that is not a plain Linear (an unmerged adapter)
    wrapped.model.layers[1].self_attn.q_proj = torch.nn.Sequential(
        wrapped.model.layers[1].self_attn.q_proj
    )
    assert "nn.Linear" in (packed_support(wrapped) or "")


@pytest.mark.parametrize("fuse_below", [_packed.FUSE_BELOW_BYTES, 0], ids=["fused", "unfused"])
def test_weights_changed_in_place_are_used_at_once(
    fuse_below: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_packed, "FUSE_BELOW_BYTES", fuse_below)
    model, other = tiny_model(1), tiny_model(2)
    lm = PackedLM(model)
    assert bool(lm._qkv) is (fuse_below > 0)
    seq = [(5 * i + 1) % 500 for i in range(40)]
    driver = Driver(model, lm)
    _check(model, driver, driver.step([(seq, None, 0, 20)]))
    with torch.no_grad():  # a weight swap: copied in place, as the backend does
        target = model.state_dict()
        for name, value in other.state_dict().items():
            target[name].copy_(value)
    driver = Driver(model, lm)  # a fresh batch: the old rows' KV belongs to the old weights
    logits = driver.step([(seq, None, 0, 20)])
    _check(model, driver, logits)
    _check(other, driver, logits)
