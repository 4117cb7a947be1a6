"""Bootstrap the embedded default model: supervised fine-tuning on synthetic tool-use traces.

A random-weight model cannot call tools, and there are no weights to download, so the default
model is taught first: training worlds (``tepo_agent.tasks.world``, seeds ``0 .. train_worlds-1``)
are indexed for the real ``search`` tool, demonstrations with real agents' habits are produced by
scripted solvers that call the real tools (``tepo_agent.tasks.traces``), and the model is
fine-tuned on them (``trainer.sft``). Copying names into tool calls appears abruptly during
training, so the checkpoint is chosen by measured greedy accuracy on a validation world (a seed
neither the demonstrations nor the held-out evaluation use), not by step count. The chosen model
is then evaluated on a held-out world (``EVAL_SEED``) and the figures are recorded::

    DIR/                    config.json, model.safetensors, tokenizer files
    DIR/world/              a training world (corpus.jsonl, search.db) for examples
    DIR/bootstrap.json      command, config, seeds, data sizes, machine, wall time, losses,
                            checkpoint selection, held-out figures, prompt-format hash

The package ships such a directory (``tepo_agent.paths.shipped_model_dir``); ``tepo-agent
bootstrap`` rebuilds it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from langchain_core.utils.function_calling import convert_to_openai_tool
from tqdm import tqdm

from tepo_agent.atomic import publish_directory
from tepo_agent.chat.format import ChatFormat
from tepo_agent.errors import ConfigError
from tepo_agent.evaluation import EvalConfig
from tepo_agent.model.default import DefaultModelConfig, init_model
from tepo_agent.model.io import load_causal_lm
from tepo_agent.paths import bootstrap_cache_dir, bootstrapped_model_dir
from tepo_agent.tasks.base import NO_TOOL_SHARE, Task
from tepo_agent.tasks.traces import Habits, Message, solve_with_tools
from tepo_agent.tasks.world import EVAL_SEED, build_world, suite_tasks, world_tools
from tepo_agent.trainer.bootstrap_record import (
    SUITES,
    evaluate_model,
    headline,
    held_out_sets,
    machine,
    prompt_format_hash,
)
from tepo_agent.trainer.sft import SFTConfig, TokenizedTrace, sft, tokenize_trace

__all__ = [
    "EVAL_SEED",
    "BootstrapConfig",
    "bootstrap_model",
    "build_world",
    "ensure_bootstrapped_model",
    "world_tools",
]


@dataclass(frozen=True)
class BootstrapConfig:
    """How the default model is bootstrapped (the defaults are the shipped model's recipe).

    Attributes:
        seed: Seed of the model's initial weights and of the SFT shuffling.
        train_worlds: Demonstrations come from worlds ``0 .. train_worlds-1``: many small
            samples of many worlds, so almost every demonstration is about names seen nowhere
            else and copying them (from the question into a search, from a result into the next
            search or the answer) is the only way to lower the loss; with few worlds the names
            repeat dozens of times and the model memorises them instead (the 8-world recipe
            copied the first piece of a name and made up the rest).
        math_items / knowledge_items / deep_search_items: Demonstrations per suite and world
            (a multiple of 4 keeps exactly one in four items no-tool in every world; math items
            do not depend on the world, each world seed gives fresh ones).
        habits: The scripted solver's habits (unneeded calls, repeated searches, guesses).
        validation_seed: The world checkpoints are chosen on: a training-side seed
            (< ``EVAL_SEED``) that no demonstration uses.
        validation_items: Items per suite of the validation world.
        select_from / select_every: Checkpoints measured: every ``select_every`` steps from
            ``select_from`` on, and the last step.
        held_out_items: Items per suite of the held-out figures (greedy and sampled).
        held_out_samples: Samples per item at temperature 1 for the sampled figures.
        check_items: Items per suite of the small greedy check a test repeats from the weights.
        model: Shape of the model.
        sft: Fine-tuning settings.
        init_from: A bootstrapped model directory (with its ``bootstrap.json``) to continue
            training from instead of random weights (``None``: from scratch). Its shape and
            prompt format must be this recipe's; the new record chains its record and the
            SHA-256 of its weights, so the whole lineage stays reproducible.
    """

    seed: int = 0
    train_worlds: int = 600
    math_items: int = 16
    knowledge_items: int = 8
    deep_search_items: int = 8
    habits: Habits = field(default_factory=Habits)
    validation_seed: int = 999
    validation_items: int = 24
    select_from: int = 2600
    select_every: int = 200
    held_out_items: int = 60
    held_out_samples: int = 2
    check_items: int = 8
    model: DefaultModelConfig = field(default_factory=DefaultModelConfig)
    sft: SFTConfig = field(default_factory=lambda: SFTConfig(steps=3600, first_turn_steps=2200))
    init_from: str | None = None

    def __post_init__(self) -> None:
        if self.train_worlds < 1:
            raise ConfigError(f"train_worlds must be >= 1, got {self.train_worlds}")
        if not self.train_worlds <= self.validation_seed < EVAL_SEED:
            raise ConfigError(
                f"validation_seed must be a world no demonstration uses and below the held-out "
                f"seeds: {self.train_worlds} <= validation_seed < {EVAL_SEED}"
            )
        for name in ("validation_items", "select_every", "held_out_items", "check_items"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


def demonstration_messages(
    cfg: BootstrapConfig, worlds_dir: Path
) -> Iterator[tuple[Task, list[Message], list[dict[str, Any]]]]:
    """Every demonstration of the recipe: its task, its messages and the tool schemas it was
    made with (the training worlds are built and indexed under ``worlds_dir``)."""
    sizes = {"math": cfg.math_items, "knowledge": cfg.knowledge_items}
    sizes["deep_search"] = cfg.deep_search_items
    for seed in tqdm(range(cfg.train_worlds), desc="demonstrations", unit="world", leave=False):
        kb = build_world(seed, worlds_dir / f"world-{seed}")
        tools = world_tools(worlds_dir / f"world-{seed}")
        schemas = [convert_to_openai_tool(t) for t in tools]
        by_name = {t.name: (lambda args, t=t: str(t.invoke(args))) for t in tools}
        for suite in SUITES:
            for task in suite_tasks(suite, kb, sizes[suite], seed):
                yield task, solve_with_tools(task, by_name, kb, habits=cfg.habits), schemas


def demonstrations(
    cfg: BootstrapConfig, fmt: ChatFormat, worlds_dir: Path
) -> tuple[list[TokenizedTrace], dict[str, Any]]:
    """Tokenized demonstrations from the training worlds, and what they contain."""
    traces: list[TokenizedTrace] = []
    counts: Counter[str] = Counter()
    for task, messages, schemas in demonstration_messages(cfg, worlds_dir):
        traces.append(tokenize_trace(fmt, messages, schemas))
        calls = sum(len(m.get("tool_calls") or ()) for m in messages)
        suite = task.suite
        counts[f"{suite}/items"] += 1
        counts[f"{suite}/no_tool_items"] += not task.needs_tool
        counts[f"{suite}/calls"] += calls
        counts[f"{suite}/unneeded_calls"] += 0 if task.needs_tool else calls
        counts[f"{suite}/wrong_answers"] += task.score(messages[-1]["content"]) < 1.0
    info = {
        "demonstrations": len(traces),
        "tokens": sum(len(t.input_ids) for t in traces),
        "loss_tokens": sum(sum(t.loss_mask) for t in traces),
        "no_tool_share": NO_TOOL_SHARE,
        "per_suite": {
            s: {k.split("/")[1]: v for k, v in counts.items() if k.startswith(s + "/")}
            for s in SUITES
        },
    }
    return traces, info


def _validation_sets(cfg: BootstrapConfig, work: Path) -> dict[str, Any]:
    """Items of every suite from the validation world (built like a held-out world)."""
    where = work / f"world-{cfg.validation_seed}"
    kb = build_world(cfg.validation_seed, where)
    tools = world_tools(where)
    return {
        s: (suite_tasks(s, kb, cfg.validation_items, cfg.validation_seed), tools) for s in SUITES
    }


GREEDY = EvalConfig(max_tool_calls=6, max_new_tokens=64, max_total_tokens=1024)
"""How the bootstrap evaluates: greedy, limits that fit the world's longest runs (4 hops and a
repeated search)."""


def _fine_tune(
    cfg: BootstrapConfig,
    model: Any,
    fmt: ChatFormat,
    traces: list[TokenizedTrace],
    validation: dict[str, Any],
) -> tuple[list[float], list[dict[str, Any]], int]:
    """SFT, measuring greedy validation accuracy at checkpoints; leaves the best weights loaded.

    Returns the losses, the measured checkpoints and the chosen step.
    """
    measured: list[dict[str, Any]] = []
    best: dict[str, Any] = {"score": -1.0, "step": 0, "state": None}
    bar = tqdm(total=cfg.sft.steps, desc="bootstrap SFT", unit="step")

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        done = step + 1
        due = done >= cfg.select_from and (done - cfg.select_from) % cfg.select_every == 0
        if not (due or done == cfg.sft.steps):
            return
        figures = headline(evaluate_model(model, fmt, validation, GREEDY))
        score = sum(f["accuracy"] for f in figures.values()) / len(figures)
        measured.append({"step": done, "mean_accuracy": round(score, 4), "suites": figures})
        suites = ", ".join(
            f"{s} {f['accuracy']:.2f} ({f['calls_per_run_tool_items'] or 0:.1f} calls)"
            for s, f in figures.items()
        )
        bar.write(f"step {done}: validation greedy accuracy {score:.3f} ({suites})")
        if score > best["score"]:
            best.update(score=score, step=done, state=copy.deepcopy(model.state_dict()))

    pad = fmt.tokenizer.pad_token_id or 0
    losses = sft(model, traces, cfg.sft, pad_token_id=pad, on_step=on_step)
    bar.close()
    model.load_state_dict(best["state"])
    return losses, measured, int(best["step"])


def _continued_from(cfg: BootstrapConfig, fmt: ChatFormat) -> dict[str, Any] | None:
    """What the record chains about ``cfg.init_from`` (``None`` from scratch), checked first.

    Refuses a directory without ``bootstrap.json`` or trained on another prompt format (its
    weights would be taught one format and shown another).
    """
    if cfg.init_from is None:
        return None
    source = Path(cfg.init_from)
    record_file = source / "bootstrap.json"
    if not record_file.is_file():
        raise ConfigError(
            f"--init-from {source}: no bootstrap.json there; continue only from a model "
            "`tepo-agent bootstrap` built"
        )
    record = json.loads(record_file.read_text())
    current = prompt_format_hash(fmt, world_tools(source / "world"))
    if record.get("prompt_format_sha256") != current:
        raise ConfigError(
            f"--init-from {source} was trained on another prompt format (hash "
            f"{record.get('prompt_format_sha256')}, now {current}): bootstrap from scratch"
        )
    weights = source / "model.safetensors"
    return {
        "path": str(source),
        "model_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "bootstrap": record,
    }


def _load_source(model: Any, lineage: dict[str, Any] | None) -> None:
    """Replace ``model``'s random weights with those of the model it continues (if any)."""
    if lineage is None:
        return
    source = lineage["path"]
    try:
        model.load_state_dict(load_causal_lm(source, device="cpu", dtype="float32").state_dict())
    except RuntimeError as exc:
        raise ConfigError(f"--init-from {source} is not a model of this shape: {exc}") from exc


def bootstrap_model(
    out_dir: str | Path, cfg: BootstrapConfig = BootstrapConfig(), *, command: str | None = None
) -> Path:
    """Build, fine-tune, evaluate and save a bootstrapped default model into ``out_dir`` (new).

    ``command`` is recorded in ``bootstrap.json`` (the CLI passes its command line).
    """
    out = Path(out_dir)
    started = time.perf_counter()
    init_model(out, seed=cfg.seed, config=cfg.model)
    build_world(0, out / "world")
    fmt = ChatFormat.from_pretrained(out)
    lineage = _continued_from(cfg, fmt)
    with tempfile.TemporaryDirectory(prefix="tepo-bootstrap-") as tmp:
        work = Path(tmp)
        traces, data = demonstrations(cfg, fmt, work / "train")
        validation = _validation_sets(cfg, work / "validation")
        model = load_causal_lm(out, device="cpu", dtype="float32")
        _load_source(model, lineage)
        losses, measured, chosen = _fine_tune(cfg, model, fmt, traces, validation)
        trained = time.perf_counter() - started
        model.save_pretrained(out, safe_serialization=True)
        sets = held_out_sets(cfg.held_out_items, EVAL_SEED, work / "held_out")
        greedy = headline(evaluate_model(model, fmt, sets, GREEDY))
        sampled_cfg = replace(GREEDY, temperature=1.0, samples=cfg.held_out_samples)
        sampled = headline(evaluate_model(model, fmt, sets, sampled_cfg))
        checks = held_out_sets(cfg.check_items, EVAL_SEED, work / "held_out")
        check = headline(evaluate_model(model, fmt, checks, GREEDY))
    tools = world_tools(out / "world")
    total = round(time.perf_counter() - started, 1)
    record = {
        "command": command or "tepo_agent.trainer.bootstrap.bootstrap_model",
        "config": asdict(cfg),
        "parameters": sum(p.numel() for p in model.parameters()),
        "seeds": {
            "weights_and_shuffling": cfg.seed,
            "train_worlds": list(range(cfg.train_worlds)),
            "validation_world": cfg.validation_seed,
            "held_out_world": EVAL_SEED,
            "shipped_world": 0,
        },
        "data": data,
        "machine": machine(),
        "wall_seconds": {
            "build_and_train": round(trained, 1),
            "total": total,
            # from random weights: this run and every run it continued
            "lineage_total": round(total + _lineage_seconds(lineage), 1),
        },
        "loss": {
            "final": sum(losses[-25:]) / len(losses[-25:]),
            "every_25_steps": [
                round(sum(losses[i : i + 25]) / 25, 4) for i in range(0, len(losses) - 24, 25)
            ],
        },
        "checkpoints": measured,
        "chosen_step": chosen,
        "held_out": {
            "seed": EVAL_SEED,
            "items_per_suite": cfg.held_out_items,
            "eval": asdict(GREEDY),
            "greedy": greedy,
            "sampled": {"temperature": 1.0, "samples": cfg.held_out_samples, **sampled},
        },
        "check": {"seed": EVAL_SEED, "items_per_suite": cfg.check_items, "greedy": check},
        "prompt_format_sha256": prompt_format_hash(fmt, tools),
        "init_from": lineage,
    }
    (out / "bootstrap.json").write_text(json.dumps(record, indent=2) + "\n")
    return out


def _lineage_seconds(lineage: dict[str, Any] | None) -> float:
    """Wall seconds of the runs a continued model stands on (0 for a model from scratch)."""
    if lineage is None:
        return 0.0
    seconds = lineage["bootstrap"]["wall_seconds"]
    return float(seconds.get("lineage_total", seconds["total"]))


def ensure_bootstrapped_model(cfg: BootstrapConfig = BootstrapConfig()) -> Path:
    """The bootstrapped default model: the shipped weights (or a cached rebuild), else built.

    ``tepo_agent.paths.bootstrapped_model_dir`` finds a rebuild in the cache first, then the
    weights shipped with the package. Only when neither exists (a source tree without the
    weights) is a model bootstrapped into the cache: built in a temporary sibling directory and
    moved into place (:func:`~tepo_agent.atomic.publish_directory`), so an interrupted bootstrap
    never leaves a half-written model behind and concurrent first calls are safe (one wins).
    """
    found = bootstrapped_model_dir()
    if (found / "bootstrap.json").is_file():
        return found
    return publish_directory(
        bootstrap_cache_dir(),
        lambda out: bootstrap_model(out, cfg, command=" ".join(sys.argv)),
        is_complete=lambda done: (done / "bootstrap.json").is_file(),
    )
