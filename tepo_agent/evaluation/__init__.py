"""Evaluation on held-out items: the per-item evaluator, its statistics and its stored records.

The runtime side of measurement: ``tepo-agent eval``, the trainer's publishing gate, the demo's
before/after and ``tepo-agent compare`` all evaluate through :func:`evaluate_items` and read the
figures with :func:`summarize` / :func:`paired_change` (so they can never disagree on what
"accuracy" or "a tool call" means). The trainer imports this package; it never imports the
trainer.
"""

from tepo_agent.evaluation.calls import CallOutcome, call_outcomes, error_kind, result_used
from tepo_agent.evaluation.items import (
    CORRECT_AT,
    EvalConfig,
    ItemResult,
    aevaluate_items,
    evaluate_items,
    item_result,
)
from tepo_agent.evaluation.records import (
    EvalMeta,
    find_evaluation,
    list_evaluations,
    load_evaluation,
    save_evaluation,
)
from tepo_agent.evaluation.report import (
    EvalSummary,
    PilotTable,
    item_calls,
    item_scores,
    paired_change,
    paired_scores,
    summarize,
    summarize_by_suite,
)
from tepo_agent.evaluation.stats import (
    Interval,
    mean_interval,
    mean_sd,
    paired_interval,
    relative_change,
    score_interval,
    t_quantile,
    wilson_interval,
)

__all__ = [
    "CORRECT_AT",
    "CallOutcome",
    "EvalConfig",
    "EvalMeta",
    "EvalSummary",
    "Interval",
    "ItemResult",
    "PilotTable",
    "aevaluate_items",
    "call_outcomes",
    "error_kind",
    "evaluate_items",
    "find_evaluation",
    "item_calls",
    "item_result",
    "item_scores",
    "list_evaluations",
    "load_evaluation",
    "mean_interval",
    "mean_sd",
    "paired_change",
    "paired_interval",
    "paired_scores",
    "relative_change",
    "result_used",
    "save_evaluation",
    "score_interval",
    "summarize",
    "summarize_by_suite",
    "t_quantile",
    "wilson_interval",
]
