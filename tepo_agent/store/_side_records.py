"""What the store keeps beside trajectories, as typed records: evaluations, served responses,
the report's aggregates and the filters the report and the tools select trajectories by.

Every backend returns these same records, so callers never see a row, a column name or SQL.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, TypedDict


class FeedbackRow(TypedDict):
    """One ``record_feedback`` call as kept (oldest first in ``Store.feedback``)."""

    source: str
    value: float
    created_at: float


@dataclass(frozen=True)
class TrajectoryFilter:
    """Which trajectories ``Store.list`` and ``Store.count`` select (None: any). All set fields
    must hold.

    Attributes:
        group_id: Only this GRPO group.
        app_tag: Only those the application tagged so.
        policy_version: Only those sampled by this version.
        min_score, max_score: Only scored ones within [min_score, max_score].
        tool: Only those with a tool turn calling this tool.
        since_seq: Only those written after this ``seq``.
        trajectory_id: Only the trajectory with this id.
    """

    group_id: str | None = None
    app_tag: str | None = None
    policy_version: int | None = None
    min_score: float | None = None
    max_score: float | None = None
    tool: str | None = None
    since_seq: int | None = None
    trajectory_id: str | None = None


@dataclass(frozen=True)
class EvaluationRecord:
    """One stored evaluation run (``tepo-agent eval``, the gate, the demo, compare).

    ``id`` and ``created_at`` are given by the store (ignored by ``save_evaluation``);
    ``config`` and ``summary`` are JSON objects.
    """

    policy_version: int | None
    label: str | None
    suite: str
    seed: int
    n: int
    samples: int
    temperature: float
    entropy_kind: str | None
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    id: int = 0
    created_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The columns in the order ``list_evaluations`` has always returned them."""
        data = asdict(self)
        return {"id": data.pop("id"), **data}


@dataclass(frozen=True)
class EvaluationItemRecord:
    """One item result of an evaluation (``calls``: each tool call's outcome as a JSON object)."""

    task_id: str
    sample: int
    suite: str
    needs_tool: bool
    score: float
    answer: str | None
    status: str
    tool_calls: int
    calls: list[dict[str, Any]]
    policy_version: int | None
    entropy_kind: str | None


@dataclass(frozen=True)
class ServedResponse:
    """A completion ``tepo-agent serve --record`` returned, and the trajectory it was recorded
    in (one per choice for n > 1); ``owner`` is the API key's name, so one key cannot score
    another's trajectories."""

    response_id: str
    trajectory_id: str
    session_id: str
    owner: str
    created_at: float


@dataclass(frozen=True)
class SessionTrajectory:
    """A stored trajectory of a recorded session, as ``GET /v1/sessions/{id}`` shows it
    (``started``, ``ended`` and ``response_ids`` come from the trajectory's metadata)."""

    id: str
    status: str
    score: float | None
    policy_version: int | None
    num_turns: int
    num_tool_calls: int
    started: float | None
    ended: float | None
    response_ids: list[str]


@dataclass(frozen=True)
class VersionStats:
    """Per policy version, over every stored trajectory (the report's "versions" table).

    Attributes:
        version: The policy version (None: trajectories of no registered version).
        runs: Trajectories. scored: those with a score. score, reward: their means (None if none).
        calls: Mean tool calls per trajectory.
        reducing_share: Entropy-reducing calls / all tool calls (None without calls).
    """

    version: int | None
    runs: int
    score: float | None
    scored: int
    reward: float | None
    calls: float | None
    reducing_share: float | None


@dataclass(frozen=True)
class ToolStats:
    """Per tool, over every stored tool turn (the report's "tools" table).

    Attributes:
        name: The tool (``(unparsed)`` for calls whose name could not be parsed).
        calls: Tool turns. known: those with a ΔH. mean_delta_entropy: their mean ΔH.
        reducing_share: Share of the ``known`` calls with ΔH < 0.
        mean_latency_s: Mean wall time of a call.
        errors: Failed calls by error kind (``malformed``, ``unknown_tool``, ...).
    """

    name: str
    calls: int
    mean_delta_entropy: float | None
    known: int
    reducing_share: float | None
    mean_latency_s: float | None
    errors: dict[str, int] = field(default_factory=dict)
