"""Which conversation a chat request continues, and the token ids it continues with.

A chat application sends the whole history with every request. ``serve --record`` links the
requests of one conversation into trajectories (docs/architecture.md, invariants 1 and 4):

- **Linking.** A request whose history holds assistant turns is linked by its LAST assistant
  turn: the turns this server returned are indexed by their exact content (text and tool calls,
  whose ids the server made up, so a tool-calling turn is unique); a candidate counts only if the
  whole history up to that turn, and the tools offered, equal what the server saw and returned.
  A shared opening alone never links two chats (a history without assistant turns starts a new
  trajectory), and two candidates (two chats that sampled the same answer) are ambiguous: a new
  trajectory. An explicit session (``X-Session-Id`` or a per-session key, see
  :mod:`tepo_agent.server.keys`) restricts the candidates to that session's; keys never see each
  other's.
- **What the request does to the trajectory.** It *continues* the linked trajectory when only
  tool results follow the turn (a tool loop); it starts a new trajectory in the same session,
  whose prompt holds the earlier turns, when a user message follows (the next question), when the
  linked turn is not the trajectory's last (the client truncated or regenerated), or when the
  history was edited after an earlier turn that did match.
- **Token ids.** Up to the linked (or last matching) turn the prompt is the ids the server sent
  and sampled, spliced, never re-tokenized; what follows is rendered by the chat format's
  :meth:`~tepo_agent.chat.format.ChatFormat.environment_tokens`. Only a history with assistant
  turns this server cannot match is rendered from text, and is marked ``rerendered``.

Each new trajectory records why it started (``started``), and each closed one why it ended.
Memory is bounded: at most ``max_live`` trajectories (open ones and recently finished ones kept
for the next question of a chat) are held; the least recently used goes first, an open one is
recorded as finished. Not thread-safe: :class:`~tepo_agent.server.recording.Recorder` locks.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tepo_agent.backends.base import Generation
from tepo_agent.chat.format import ChatFormat
from tepo_agent.server.canonical import Canon, canonical, digest


def new_session_id() -> str:
    return f"sess-{uuid.uuid4().hex[:20]}"


@dataclass
class SampledTurn:
    """An assistant turn this server returned: the generation and the message it answered."""

    response_id: str
    generation: Generation
    prompt_render: str  # fresh | spliced | rerendered: how the prompt it continued was built

    def full_ids(self) -> list[int]:
        """The prompt it was sampled from, then its sampled ids."""
        return [*self.generation.prompt_token_ids, *self.generation.token_ids]


@dataclass
class LiveTrajectory:
    """A trajectory being recorded: the conversation it covers and its own sampled turns.

    ``messages`` is the whole conversation (earlier questions included), canonical; ``turns``
    maps the index of each assistant message THIS trajectory sampled to its turn.
    """

    id: str
    owner: str
    session_id: str
    tools: list[dict[str, Any]]
    messages: list[Canon]
    started: str
    turns: dict[int, SampledTurn] = field(default_factory=dict)
    last_seen: float = field(default_factory=time.monotonic)
    open: bool = True
    ended: str | None = None

    def response_ids(self) -> list[str]:
        return [t.response_id for _, t in sorted(self.turns.items())]


@dataclass(frozen=True)
class Plan:
    """What a request does: the prompt ids to sample from and which trajectory they extend.

    ``extend`` is the open trajectory the request continues (None: the answer starts a new one in
    ``session_id``, ``started`` saying why); ``predecessor`` is a trajectory the new one follows
    (closed when the answer is recorded, as the client moved on from it).
    """

    owner: str
    session_id: str
    messages: list[Canon]
    tools: list[dict[str, Any]]
    prompt_ids: list[int]
    prompt_render: str
    started: str
    extend: LiveTrajectory | None = None
    extend_length: int = 0  # len(extend.messages) when planned: it must not have moved on
    predecessor: LiveTrajectory | None = None
    new_trajectory_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    """The id the first choice's trajectory gets when it starts a new one (a live stream names
    it in its headers before the answer is recorded)."""


class SessionTable:
    """The live trajectories, the index of returned turns, and the linking rules above."""

    def __init__(self, chat_format: ChatFormat, *, max_live: int = 1024) -> None:
        self.chat_format = chat_format
        self.max_live = max_live
        self._live: OrderedDict[str, LiveTrajectory] = OrderedDict()
        self._index: dict[tuple[str, str], list[tuple[str, int]]] = {}
        self._responses: dict[str, list[str]] = {}  # response id -> trajectories (n > 1)

    # -- lookups -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._live)

    def open_count(self) -> int:
        return sum(t.open for t in self._live.values())

    def by_response(self, response_id: str) -> list[LiveTrajectory]:
        """The live trajectories holding a response (each choice's, for n > 1)."""
        ids = self._responses.get(response_id, [])
        return [self._live[i] for i in ids if i in self._live]

    def by_id(self, trajectory_id: str) -> LiveTrajectory | None:
        return self._live.get(trajectory_id)

    def in_session(self, owner: str | None, session_id: str) -> list[LiveTrajectory]:
        """Live trajectories of a session (of every owner when ``owner`` is None: the admin)."""
        return [
            t
            for t in self._live.values()
            if t.session_id == session_id and (owner is None or t.owner == owner)
        ]

    def _matches(
        self,
        owner: str,
        session: str | None,
        messages: list[Canon],
        tools: list[dict[str, Any]],
        at: int,
    ) -> list[tuple[LiveTrajectory, int]]:
        """Trajectories that returned ``messages[at]`` after exactly ``messages[:at]``."""
        found = []
        for trajectory_id, index in self._index.get((owner, digest(messages[at])), []):
            live = self._live.get(trajectory_id)
            if live is None or index != at or live.tools != tools:
                continue
            if session is not None and live.session_id != session:
                continue
            if live.messages[: at + 1] == messages[: at + 1]:
                found.append((live, index))
        return found

    # -- planning a request --------------------------------------------------------------------

    def plan(
        self,
        owner: str,
        session: str | None,
        raw_messages: Sequence[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        rendered: list[int],
    ) -> Plan:
        """The plan of a request; ``rendered`` is the history rendered from text."""
        messages = [canonical(m) for m in raw_messages]
        tools = list(tools or [])
        assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        base = {"owner": owner, "messages": messages, "tools": tools}
        if not assistants:
            sid = session or new_session_id()
            return Plan(session_id=sid, prompt_ids=rendered, prompt_render="fresh",
                        started="new conversation", **base)  # fmt: skip
        last = assistants[-1]
        matches = self._matches(owner, session, messages, tools, last)
        if len(matches) > 1:
            return Plan(
                session_id=session or new_session_id(),
                prompt_ids=rendered,
                prompt_render="rerendered",
                started=f"ambiguous history: its last assistant turn matches {len(matches)} "
                "conversations",
                **base,
            )
        if matches:
            return self._linked(matches[0], messages, tools, base)
        return self._unmatched(owner, session, messages, tools, assistants, rendered, base)

    def _linked(
        self,
        match: tuple[LiveTrajectory, int],
        messages: list[Canon],
        tools: list[dict[str, Any]],
        base: dict[str, Any],
    ) -> Plan:
        live, at = match
        ids = self._splice(live, at, messages, tools)
        rest = messages[at + 1 :]
        is_last = at == len(live.messages) - 1
        tool_loop = bool(rest) and all(m["role"] == "tool" for m in rest)
        common = {"session_id": live.session_id, "prompt_ids": ids, **base}
        if live.open and is_last and tool_loop:
            return Plan(
                prompt_render="spliced",
                started="",
                extend=live,
                extend_length=len(live.messages),
                **common,
            )
        if not is_last:
            started = f"truncated history: continues from turn {at} of trajectory {live.id}"
        elif tool_loop:
            started = f"tool results for trajectory {live.id}, which had ended ({live.ended})"
        else:
            started = f"next question after trajectory {live.id}"
        return Plan(prompt_render="spliced", started=started, predecessor=live, **common)

    def _unmatched(
        self,
        owner: str,
        session: str | None,
        messages: list[Canon],
        tools: list[dict[str, Any]],
        assistants: list[int],
        rendered: list[int],
        base: dict[str, Any],
    ) -> Plan:
        """A history whose last assistant turn is not one this server returned after it."""
        for at in reversed(assistants[:-1]):
            matches = self._matches(owner, session, messages, tools, at)
            if len(matches) == 1:
                live, _ = matches[0]
                return Plan(
                    session_id=live.session_id,
                    prompt_ids=self._splice(live, at, messages, tools),
                    prompt_render="rerendered",
                    started=f"edited history: turns after turn {at} of trajectory {live.id} "
                    "differ from what was returned",
                    predecessor=live,
                    **base,
                )
        return Plan(
            session_id=session or new_session_id(),
            prompt_ids=rendered,
            prompt_render="rerendered",
            started="edited history: assistant turns this server did not return (or no longer "
            "remembers), re-tokenized from text",
            **base,
        )

    def _splice(
        self, live: LiveTrajectory, at: int, messages: list[Canon], tools: list[dict[str, Any]]
    ) -> list[int]:
        """The ids live's turn ``at`` was sampled with and as, then the rest rendered."""
        turn = live.turns[at]
        ids = turn.full_ids()
        ended = bool(turn.generation.token_ids) and ids[-1] == self.chat_format.end_of_turn_id
        env = self.chat_format.environment_tokens(
            _renderable(live.messages[: at + 1]),
            _renderable(messages[at + 1 :]),
            tools or None,
            sampled_end_of_turn=ended,
        )
        return ids + list(env)

    # -- recording answers ---------------------------------------------------------------------

    def record(
        self, plan: Plan, response_id: str, answers: Sequence[tuple[Generation, dict[str, Any]]]
    ) -> list[LiveTrajectory]:
        """Add each choice's turn (generation, returned message); return those that finished.

        The first choice extends ``plan.extend`` (when still open), every other one is its own
        trajectory. A choice without tool calls is a final answer: its trajectory finishes.
        """
        finished: list[LiveTrajectory] = []
        ext = plan.extend
        unchanged = ext is not None and ext.open and len(ext.messages) == plan.extend_length
        base = ext if unchanged else None
        for index, (generation, message) in enumerate(answers):
            fresh = plan.new_trajectory_id if index == 0 else None
            if base is not None and index == 0:
                live = base
            elif base is not None:
                live = self._new(plan, f"choice {index} forked from {base.id}", copy_of=base)
            elif ext is not None:  # it ended, or another request continued it, meanwhile
                why = f"had ended ({ext.ended})" if not ext.open else "another request continued"
                started = f"continues trajectory {ext.id}, which {why}"
                live = self._new(plan, started, None, fresh)
            else:
                live = self._new(plan, plan.started, None, fresh)
            live.messages = [*plan.messages, canonical(message)]
            at = len(live.messages) - 1
            live.turns[at] = SampledTurn(response_id, generation, plan.prompt_render)
            live.last_seen = time.monotonic()
            self._live.move_to_end(live.id)
            key = (live.owner, digest(live.messages[at]))
            self._index.setdefault(key, []).append((live.id, at))
            self._responses.setdefault(response_id, []).append(live.id)
            if not message.get("tool_calls"):
                finished.append(self._close(live, "answered"))
        if plan.predecessor is not None and plan.predecessor.open:
            finished.append(self._close(plan.predecessor, "the client moved on"))
        return finished + self._evict()

    def _new(
        self, plan: Plan, started: str, copy_of: LiveTrajectory | None, id: str | None = None
    ) -> LiveTrajectory:
        live = LiveTrajectory(
            id=id or uuid.uuid4().hex,
            owner=plan.owner,
            session_id=plan.session_id,
            tools=plan.tools,
            messages=list(plan.messages),
            started=started,
            turns=dict(copy_of.turns) if copy_of is not None else {},
        )
        self._live[live.id] = live
        return live

    # -- finishing -----------------------------------------------------------------------------

    def close(self, live: LiveTrajectory, reason: str) -> LiveTrajectory | None:
        """Finish ``live`` now (feedback arrived, the server stops); None if it had finished."""
        return self._close(live, reason) if live.open else None

    def _close(self, live: LiveTrajectory, reason: str) -> LiveTrajectory:
        live.open = False
        live.ended = reason
        return live

    def expire(self, idle_s: float, now: float | None = None) -> list[LiveTrajectory]:
        """Finish open trajectories idle for ``idle_s``; forget finished ones idle as long."""
        now = time.monotonic() if now is None else now
        finished = []
        for live in list(self._live.values()):
            if now - live.last_seen < idle_s:
                continue
            if live.open:
                finished.append(self._close(live, f"idle for {idle_s:g} s"))
            self._forget(live)
        return finished

    def close_all(self, reason: str) -> list[LiveTrajectory]:
        return [self._close(t, reason) for t in self._live.values() if t.open]

    def _evict(self) -> list[LiveTrajectory]:
        finished = []
        while len(self._live) > self.max_live:
            oldest = next(iter(self._live.values()))
            if oldest.open:
                finished.append(self._close(oldest, "evicted: too many live trajectories"))
            self._forget(oldest)
        return finished

    def _forget(self, live: LiveTrajectory) -> None:
        self._live.pop(live.id, None)
        for at, turn in live.turns.items():
            holders = [i for i in self._responses.get(turn.response_id, []) if i != live.id]
            if holders:
                self._responses[turn.response_id] = holders
            else:
                self._responses.pop(turn.response_id, None)
            key = (live.owner, digest(live.messages[at]))
            entries = [e for e in self._index.get(key, []) if e[0] != live.id]
            if entries:
                self._index[key] = entries
            else:
                self._index.pop(key, None)


def _renderable(messages: Sequence[Canon]) -> list[dict[str, Any]]:
    """Canonical messages as the chat format renders them (tool calls keep their arguments)."""
    return [dict(m) for m in messages]


__all__ = ["LiveTrajectory", "Plan", "SampledTurn", "SessionTable", "new_session_id"]
