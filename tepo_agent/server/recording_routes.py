"""The routes ``serve --record`` adds: feedback, a session's trajectories, the recording counters.

- ``POST /v1/feedback`` ``{"response_id" | "trajectory_id" | "session_id", "value", "source"}``:
  a score in [0, 1] for the trajectory holding that completion, for that trajectory, or for every
  trajectory of that session. It may arrive any time later (the trainer's cursor trains on late
  feedback); an open trajectory it names is recorded as finished first. Answers
  ``{"object": "feedback", "trajectory_ids": [...], "value", "source"}``.
- ``GET /v1/sessions/{session_id}``: the session's trajectories (id, open, why it started and
  ended, its response ids; once written, status, score and policy version).
- ``GET /v1/recording/metrics``: the counters of the caller's key (the admin: every key's and
  the totals): ``requests``, ``recorded_requests``, ``recording_failures``,
  ``trajectories_recorded``, ``write_failures``, ``expired``, ``feedback``.

A key sees and scores only its own sessions; an id of another key's is answered 404, the same as
an unknown one. The admin key sees and scores everything.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tepo_agent.errors import ConfigError, StoreError
from tepo_agent.server.keys import OPEN, Principal
from tepo_agent.server.protocol import OpenAIHTTPError
from tepo_agent.server.recording import NotFound, Recorder
from tepo_agent.server.sessions import LiveTrajectory
from tepo_agent.server.validation import parse_body


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback``: name exactly one of the three ids."""

    model_config = ConfigDict(extra="forbid")

    response_id: str | None = None
    trajectory_id: str | None = None
    session_id: str | None = None
    value: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    source: str = Field(default="http", min_length=1, max_length=100)

    @model_validator(mode="after")
    def _one_id(self) -> FeedbackRequest:
        named = [self.response_id, self.trajectory_id, self.session_id]
        if sum(x is not None for x in named) != 1:
            raise ValueError("name exactly one of response_id, trajectory_id, session_id")
        return self


def principal(request: Request) -> Principal:
    """Who sent ``request`` (set by the server's key check; open servers: ``default``)."""
    who = getattr(request.state, "principal", None)
    return who if isinstance(who, Principal) else Principal(OPEN.name, True)


def _recorder(request: Request) -> Recorder:
    recorder: Recorder | None = request.app.state.tepo.recorder
    if recorder is None:
        raise OpenAIHTTPError(
            404, "recording is off: start `tepo-agent serve --db DB --record`", "NotFoundError"
        )
    return recorder


def _live(recorder: Recorder, who: Principal, req: FeedbackRequest) -> list[LiveTrajectory]:
    owner = None if who.admin else who.name
    table = recorder.table
    if req.response_id is not None:
        found = table.by_response(req.response_id)
    elif req.trajectory_id is not None:
        one = table.by_id(req.trajectory_id)
        found = [one] if one is not None else []
    else:
        assert req.session_id is not None
        found = table.in_session(owner, req.session_id)
    return [t for t in found if owner is None or t.owner == owner]


def _stored(recorder: Recorder, who: Principal, req: FeedbackRequest) -> set[str]:
    """Ids of written trajectories ``req`` names that ``who`` may score."""
    store = recorder.store
    ids = store.served_trajectory_ids(  # the request names exactly one of the three
        response_id=req.response_id,
        trajectory_id=req.trajectory_id,
        session_id=req.session_id,
        owner=None if who.admin else who.name,
    )
    if who.admin and req.trajectory_id is not None:  # any stored trajectory, recorded here or not
        ids |= store.existing_ids([req.trajectory_id])
    return ids


def apply_feedback(recorder: Recorder, who: Principal, req: FeedbackRequest) -> dict[str, Any]:
    """Score what ``req`` names (run on the writer thread, after the writes queued before)."""
    with recorder.lock:
        live = _live(recorder, who, req)
    recorder.finish_now([t for t in live if t.open], "feedback arrived")
    ids = _stored(recorder, who, req)
    if live:
        ids |= recorder.store.existing_ids(t.id for t in live)
    if not ids:
        raise NotFound("no recorded trajectory of this key has that id")
    for trajectory_id in sorted(ids):
        recorder.store.record_feedback(trajectory_id, req.value, req.source)
    recorder.count(who.name, "feedback", len(ids))
    return {
        "object": "feedback",
        "trajectory_ids": sorted(ids),
        "value": req.value,
        "source": req.source,
    }


async def feedback(request: Request) -> Any:
    recorder = _recorder(request)
    req = await parse_body(request, FeedbackRequest)  # every malformed body is a 400 naming it
    who = principal(request)
    future = recorder.submit(lambda: apply_feedback(recorder, who, req))
    try:
        return await asyncio.wrap_future(future)
    except NotFound as exc:
        raise OpenAIHTTPError(404, str(exc), "NotFoundError") from exc
    except (ConfigError, StoreError) as exc:
        raise OpenAIHTTPError(400, str(exc)) from exc


def session_view(recorder: Recorder, who: Principal, session_id: str) -> dict[str, Any]:
    """What ``GET /v1/sessions/{session_id}`` answers (NotFound when ``who`` has none)."""
    owner = None if who.admin else who.name
    with recorder.lock:
        live = {
            t.id: {
                "id": t.id,
                "open": t.open,
                "started": t.started,
                "ended": t.ended,
                "response_ids": t.response_ids(),
            }
            for t in recorder.table.in_session(owner, session_id)
        }
    for row in recorder.store.session_trajectories(session_id, owner):
        stored = asdict(row)
        live[row.id] = {**live.get(row.id, {}), **stored, "open": False}
    if not live:
        raise NotFound(f"no session {session_id!r} of this key")
    return {"object": "session", "session_id": session_id, "trajectories": list(live.values())}


async def session(request: Request) -> Any:
    recorder = _recorder(request)
    who = principal(request)
    session_id = request.path_params["session_id"]
    try:
        return await asyncio.to_thread(session_view, recorder, who, session_id)
    except NotFound as exc:
        raise OpenAIHTTPError(404, str(exc), "NotFoundError") from exc


async def metrics(request: Request) -> Any:
    return _recorder(request).metrics(principal(request))


ROUTES = (
    ("POST", "/v1/feedback", feedback),
    ("GET", "/v1/sessions/{session_id}", session),
    ("GET", "/v1/recording/metrics", metrics),
)

__all__ = ["ROUTES", "FeedbackRequest", "apply_feedback", "principal", "session_view"]
