"""The linking rules of ``serve --record`` (tepo_agent.server.sessions) and its recorder's bounds:
idle expiry, eviction, ambiguity, and a failed recording that still answers the request.

The session table is driven with the real chat format of the default model and generations
built from the ids of known texts (the table never looks at logprob values); the failure test
runs the real app on a real uvicorn server.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from tepo_agent.backends.base import Generation
from tepo_agent.chat.format import ChatFormat
from tepo_agent.server.canonical import canonical
from tepo_agent.server.keys import ApiKey, KeyRing, Principal
from tepo_agent.server.recording import Recorder, RecordingConfig
from tepo_agent.server.sessions import SessionTable
from tepo_agent.store import TrajectoryStore

TOOLS = [{"type": "function", "function": {"name": "calculator", "parameters": {}}}]
USER = {"role": "user", "content": "What is 2+2?"}


@pytest.fixture(scope="module")
def fmt(default_model_dir: Path) -> ChatFormat:
    return ChatFormat.from_pretrained(default_model_dir)


def sample(fmt: ChatFormat, prompt: list[int], text: str) -> Generation:
    ids = [*fmt.encode(text), fmt.end_of_turn_id]
    n = len(ids)
    return Generation(tuple(prompt), tuple(ids), (-0.5,) * n, (1.0,) * n, "exact", "stop", 0)


def answer(fmt: ChatFormat, text: str) -> dict[str, Any]:
    """The message the server returns for ``text`` (tool calls as the chat route writes them)."""
    parsed = fmt.parse(text)
    calls = [
        {"id": c.id, "type": "function",
         "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
        for c in parsed.tool_calls
    ]  # fmt: skip
    return {"role": "assistant", "content": parsed.content or None, "tool_calls": calls}


CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+2"}}\n</tool_call>'


def turn(
    table: SessionTable, fmt: ChatFormat, history: list[dict[str, Any]], text: str, rid: str,
    owner: str = "app", session: str | None = None,
) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """Plan a request, sample ``text`` for it, record it: (plan, returned message)."""
    plan = table.plan(owner, session, history, TOOLS, fmt.render(history, TOOLS))
    message = answer(fmt, text)
    table.record(plan, rid, [(sample(fmt, plan.prompt_ids, text), message)])
    return plan, message


def test_a_tool_loop_is_spliced_and_an_alike_opening_is_not_joined(fmt: ChatFormat) -> None:
    table = SessionTable(fmt)
    first, call = turn(table, fmt, [USER], CALL, "r1")
    other, _ = turn(table, fmt, [USER], CALL, "r2")  # another chat, same opening
    assert first.session_id != other.session_id and first.started == "new conversation"
    result = {"role": "tool", "tool_call_id": call["tool_calls"][0]["id"], "content": "4"}
    history = [USER, call, result]
    plan = table.plan("app", None, history, TOOLS, fmt.render(history, TOOLS))
    (live,) = table.by_response("r1")
    assert plan.extend is live and plan.session_id == first.session_id
    sampled = live.turns[1].full_ids()
    assert plan.prompt_ids[: len(sampled)] == sampled  # the sampled ids, not re-tokenized
    # another key never links to this conversation
    assert table.plan("intruder", None, history, TOOLS, []).extend is None


def test_two_chats_that_sampled_the_same_answer_are_ambiguous(fmt: ChatFormat) -> None:
    table = SessionTable(fmt)
    _, hello = turn(table, fmt, [USER], "Four.", "r1")
    turn(table, fmt, [USER], "Four.", "r2")
    history = [USER, hello, {"role": "user", "content": "Sure?"}]
    plan = table.plan("app", None, history, TOOLS, fmt.render(history, TOOLS))
    assert plan.started.startswith("ambiguous history: its last assistant turn matches 2")
    assert plan.extend is None and plan.predecessor is None
    named = table.plan("app", table.by_response("r2")[0].session_id, history, TOOLS, [])
    assert named.started.startswith("next question after trajectory")  # a session decides


def test_idle_trajectories_finish_and_the_oldest_are_evicted(fmt: ChatFormat) -> None:
    table = SessionTable(fmt, max_live=2)
    turn(table, fmt, [USER], CALL, "r1")
    turn(table, fmt, [USER], "Four.", "r2")  # answered: finished, kept for a next question
    (waiting,) = table.by_response("r1")
    assert waiting.open and not table.by_response("r2")[0].open
    _, _ = turn(table, fmt, [{"role": "user", "content": "Hi"}], CALL, "r3")
    assert waiting.ended == "evicted: too many live trajectories"
    assert table.by_response("r1") == [] and len(table) == 2
    (fresh,) = table.by_response("r3")
    finished = table.expire(idle_s=60, now=fresh.last_seen + 61)
    assert finished == [fresh] and fresh.ended == "idle for 60 s" and len(table) == 0


def test_canonical_messages_ignore_client_spelling() -> None:
    sent = {
        "role": "assistant", "content": None, "refusal": None,
        "tool_calls": [{"id": "c1", "type": "function",
                        "function": {"name": "f", "arguments": '{"a": 1}'}}],
    }  # fmt: skip
    returned = {
        "role": "assistant", "content": "",
        "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": {"a": 1}}}],
    }  # fmt: skip
    assert canonical(sent) == canonical(returned)
    assert canonical({**sent, "content": [{"type": "text", "text": "x"}]})["content"] == "x"


def test_an_open_trajectory_idle_too_long_is_stored_as_finished(
    fmt: ChatFormat, tmp_path: Path
) -> None:
    store = TrajectoryStore(tmp_path / "t.db")
    recorder = Recorder(store, fmt, RecordingConfig(idle_s=0.2, tick_s=0.05))
    who = Principal("app", False)
    try:
        plan = recorder.plan(who, [USER], TOOLS, fmt.render([USER], TOOLS))
        assert plan is not None
        recorder.record(plan, "r1", [(sample(fmt, plan.prompt_ids, CALL), answer(fmt, CALL))])
        deadline = time.monotonic() + 10
        while store.count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        (summary,) = store.list()
        stored = store.get(summary.id)
        assert stored.status == "error" and stored.metadata["ended"] == "idle for 0.2 s"
        assert recorder.metrics(who)["expired"] == 1
    finally:
        recorder.close()
        store.close()


def test_keys_file_needs_one_admin_and_keys_see_their_sessions(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [{"name": "a", "key": "k1"}, {"name": "b", "key": "k2"}]}))
    with pytest.raises(ValueError, match="exactly one key must be the admin"):
        KeyRing.from_file(path)
    ring = KeyRing([ApiKey("a", "k1", admin=True), ApiKey("b", "k2")])
    assert ring.authenticate("Bearer k2#chat-1", None) == Principal("b", False, "chat-1")
    assert ring.authenticate("Bearer k2", "s-9") == Principal("b", False, "s-9")
    assert ring.authenticate("Bearer k3", None) is None
    assert KeyRing.single(None).authenticate("", None) == Principal("default", True)


# -- a failed recording still answers --------------------------------------------------------


@pytest.fixture(scope="module")
def live_app(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tepo_agent.backends.transformers_backend import TransformersBackend
    from tepo_agent.server.app import create_app

    fmt = ChatFormat.from_pretrained(default_model_dir)
    backend = TransformersBackend.from_pretrained(default_model_dir, device="cpu")
    store = TrajectoryStore(tmp_path_factory.mktemp("fail") / "t.db")
    recorder = Recorder(store, fmt)
    app = create_app(backend, fmt, model_name="tiny", recorder=recorder)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", recorder
    finally:
        server.should_exit = True
        thread.join(10)
        recorder.close()
        backend.close()


def test_a_request_whose_recording_fails_still_gets_its_answer(
    live_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, recorder = live_app
    body = {"model": "tiny", "messages": [USER], "max_tokens": 4, "temperature": 0}

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected: the session table failed")

    with monkeypatch.context() as patch:
        patch.setattr(recorder.table, "plan", broken)
        failed = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert failed.status_code == 200 and failed.json()["choices"][0]["message"]
    assert "x-tepo-trajectory-id" not in failed.headers
    recorder.store.close()  # a real failure: the answer's trajectory cannot be written
    written = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert written.status_code == 200 and written.headers["x-tepo-trajectory-id"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        counts = httpx.get(f"{url}/v1/recording/metrics").json()["total"]
        if counts.get("write_failures"):
            break
        time.sleep(0.05)
    assert counts["requests"] == 2 and counts["recording_failures"] == 1
    assert counts["recorded_requests"] == 1 and counts["write_failures"] == 1


def test_each_choice_of_a_continued_request_is_its_own_trajectory(fmt: ChatFormat) -> None:
    table = SessionTable(fmt)
    _, call = turn(table, fmt, [USER], CALL, "r1")
    (base,) = table.by_response("r1")
    result = {"role": "tool", "tool_call_id": call["tool_calls"][0]["id"], "content": "4"}
    history = [USER, call, result]
    plan = table.plan("app", None, history, TOOLS, [])
    answers = [(sample(fmt, plan.prompt_ids, t), answer(fmt, t)) for t in ("Four.", "4.")]
    finished = table.record(plan, "r2", answers)
    fork = next(t for t in table.by_response("r2") if t is not base)
    assert {t.id for t in finished} == {base.id, fork.id}  # both answered
    assert sorted(base.turns) == sorted(fork.turns) == [1, 3]
    assert fork.turns[1] is base.turns[1] and fork.started == f"choice 1 forked from {base.id}"
    assert base.response_ids() == fork.response_ids() == ["r1", "r2"]


def test_two_requests_continuing_one_turn_do_not_overwrite_each_other(fmt: ChatFormat) -> None:
    table = SessionTable(fmt)
    _, call = turn(table, fmt, [USER], CALL, "r1")
    result = {"role": "tool", "tool_call_id": call["tool_calls"][0]["id"], "content": "4"}
    history = [USER, call, result]
    first = table.plan("app", None, history, TOOLS, [])
    second = table.plan("app", None, history, TOOLS, [])  # a client retry, sent concurrently
    table.record(first, "r2", [(sample(fmt, first.prompt_ids, "Four."), answer(fmt, "Four."))])
    table.record(second, "r3", [(sample(fmt, second.prompt_ids, "4."), answer(fmt, "4."))])
    (base,) = table.by_response("r2")
    (other,) = table.by_response("r3")
    assert other is not base and base.response_ids() == ["r1", "r2"]
    assert other.started == f"continues trajectory {base.id}, which had ended (answered)"
