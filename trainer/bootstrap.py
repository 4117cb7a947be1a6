"""Bootstrap the embedded default model: supervised fine-tuning on synthetic tool-use traces.

A random-weight model cannot call tools, and there are no weights to download, so the default
model is taught the format first: a seeded world (``KnowledgeBase``, built by
:mod:`tepo_agent.tasks.world`) is indexed for the real ``search`` tool, demonstrations are
produced by scripted solvers that call the real tools (``tepo_agent.tasks.traces``), and the
model is fine-tuned on them (``trainer.sft``). The result is written as an ordinary Hugging
Face model directory with the world beside it::

    DIR/                    config.json, model.safetensors, tokenizer files
    DIR/world/corpus.jsonl  the knowledge base as documents
    DIR/world/search.db     its FTS5 index (what the agent's search tool reads)
    DIR/bootstrap.json      the settings and the final SFT loss

Held-out evaluation tasks use other seeds than the demonstrations (``tasks.world.EVAL_SEED``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from langchain_core.utils.function_calling import convert_to_openai_tool
from tqdm import tqdm

from tepo_agent.atomic import publish_directory
from tepo_agent.chat.format import ChatFormat
from tepo_agent.model.default import DefaultModelConfig, init_model
from tepo_agent.model.io import load_causal_lm
from tepo_agent.paths import bootstrapped_model_dir
from tepo_agent.tasks import deep_search_suite, knowledge_suite, math_suite
from tepo_agent.tasks.traces import solve_with_tools
from tepo_agent.tasks.world import EVAL_SEED, build_world, world_tools
from tepo_agent.trainer.sft import SFTConfig, sft, tokenize_trace


@dataclass(frozen=True)
class BootstrapConfig:
    """What the default model is bootstrapped on.

    Attributes:
        seed: Seed of the model's initial weights and of the demonstration tasks.
        kb_seed: Seed of the knowledge base (the world the search tool indexes).
        math_items / knowledge_items / deep_search_items: Demonstrations per suite.
        model: Shape of the model.
        sft: Fine-tuning settings.
    """

    seed: int = 0
    kb_seed: int = 0
    math_items: int = 600
    knowledge_items: int = 400
    deep_search_items: int = 200
    model: DefaultModelConfig = field(default_factory=DefaultModelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)


def bootstrap_model(out_dir: str | Path, cfg: BootstrapConfig = BootstrapConfig()) -> Path:
    """Build, fine-tune and save a bootstrapped default model into ``out_dir`` (must be new)."""
    out = Path(out_dir)
    started = time.perf_counter()
    init_model(out, seed=cfg.seed, config=cfg.model)
    kb = build_world(cfg.kb_seed, out / "world")
    tools = world_tools(out / "world")
    schemas = [convert_to_openai_tool(t) for t in tools]
    by_name = {t.name: (lambda args, t=t: str(t.invoke(args))) for t in tools}
    tasks = (
        math_suite(cfg.math_items, seed=cfg.seed)
        + knowledge_suite(kb, cfg.knowledge_items, seed=cfg.seed)
        + deep_search_suite(kb, cfg.deep_search_items, seed=cfg.seed)
    )
    fmt = ChatFormat.from_pretrained(out)
    traces = [
        tokenize_trace(fmt, solve_with_tools(task, by_name, kb), schemas)
        for task in tqdm(tasks, desc="demonstrations", unit="trace", leave=False)
    ]
    model = load_causal_lm(out, device="cpu", dtype="float32")
    bar = tqdm(total=cfg.sft.steps, desc="bootstrap SFT", unit="step")

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")

    losses = sft(
        model, traces, cfg.sft, pad_token_id=fmt.tokenizer.pad_token_id or 0, on_step=on_step
    )
    bar.close()
    model.save_pretrained(out, safe_serialization=True)
    tokens = sum(len(t.input_ids) for t in traces)
    (out / "bootstrap.json").write_text(
        json.dumps(
            {
                "config": asdict(cfg),
                "demonstrations": len(traces),
                "demonstration_tokens": tokens,
                "final_loss": sum(losses[-10:]) / len(losses[-10:]),
                "seconds": round(time.perf_counter() - started, 1),
                "eval_seed": EVAL_SEED,
            },
            indent=2,
        )
    )
    return out


def ensure_bootstrapped_model(cfg: BootstrapConfig = BootstrapConfig()) -> Path:
    """``default_home()/models/default-sft-v1``, bootstrapped once and cached.

    Built in a temporary sibling directory and moved into place
    (:func:`~tepo_agent.atomic.publish_directory`), so an interrupted bootstrap never leaves a
    half-written model behind and concurrent first calls are safe (one wins).
    """
    target = bootstrapped_model_dir()
    if (target / "bootstrap.json").is_file():
        return target
    return publish_directory(
        target,
        lambda out: bootstrap_model(out, cfg),
        is_complete=lambda done: (done / "bootstrap.json").is_file(),
    )
