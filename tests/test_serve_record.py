"""``tepo-agent serve --db DB --record`` against the real ``openai`` client and raw HTTP.

One server process (the CLI, a keys file with an admin and two application keys) serves a tiny
model fine-tuned here for a few seconds to answer "What is 2+2?" with two calculator calls in a
row, so an unmodified OpenAI tool-calling loop has real tool calls to run. The tests read the
database the server wrote: one token-exact trajectory per conversation, tool results as
environment tokens, ΔH per call, the policy version per turn, check-logprobs below 1e-3, new
trajectories (with the reason) for edited histories, and feedback over HTTP on the trainer's
cursor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch

from tepo_agent.chat.format import ChatFormat
from tepo_agent.model.default import DefaultModelConfig, init_model
from tepo_agent.net import free_port
from tepo_agent.store import TrajectoryStore
from tepo_agent.trainer.logprob_check import check_logprobs

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluate arithmetic.",
            "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
        },
    }
]
QUESTION = "What is 2+2?"
CALLS = ("2+2", "4*1")  # the two calls the model learns to make, in order
KEYS = {"ops": "sk-admin", "support": "sk-support", "batch": "sk-batch"}
SMALL = DefaultModelConfig(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


def _call_text(expression: str) -> str:
    body = json.dumps({"name": "calculator", "arguments": {"expression": expression}})
    return f"<tool_call>\n{body}\n</tool_call>"


def _memorise_two_calls(model_dir: Path) -> None:
    """Fine-tune until greedy decoding calls the calculator with CALLS[0], then CALLS[1]."""
    from transformers import AutoModelForCausalLM

    fmt = ChatFormat.from_pretrained(model_dir)
    history: list[dict[str, Any]] = [{"role": "user", "content": QUESTION}]
    ids = fmt.render(history, TOOLS)
    labels = [-100] * len(ids)
    for expression in CALLS:
        target = [*fmt.encode(_call_text(expression)), fmt.end_of_turn_id]
        ids, labels = ids + target, labels + target
        history.append(fmt.parse(fmt.decode(target)).as_message())
        result = [{"role": "tool", "content": str(eval(expression)), "tool_call_id": "x"}]
        env = fmt.environment_tokens(history, result, TOOLS, sampled_end_of_turn=True)
        history += result
        ids, labels = ids + env, labels + [-100] * len(env)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    x, y = torch.tensor([ids]), torch.tensor([labels])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(400):
            loss = model(input_ids=x, labels=y).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if loss.item() < 0.003:
                break
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(str(model_dir))


class Served:
    def __init__(self, url: str, db: Path, proc: subprocess.Popen[str]) -> None:
        self.url, self.db, self.proc = url, db, proc

    def client(self, key: str = "support", **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=KEYS[key], **kwargs)

    def http(self, key: str = "support") -> httpx.Client:
        headers = {"Authorization": f"Bearer {KEYS[key]}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def store(self) -> TrajectoryStore:
        return TrajectoryStore(self.db, create=False)


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, wait_healthy: Callable[..., None]
) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("record")
    model_dir = init_model(root / "model", seed=0, config=SMALL)
    _memorise_two_calls(model_dir)
    keys = [{"name": n, "key": k, "admin": n == "ops"} for n, k in KEYS.items()]
    (root / "keys.json").write_text(json.dumps({"keys": keys}))
    port, db = free_port(), root / "t.db"
    command = [
        sys.executable, "-m", "tepo_agent", "serve", "--model", str(model_dir), "--db", str(db),
        "--record", "--keys-file", str(root / "keys.json"), "--port", str(port),
        "--served-model-name", "tiny", "--log-level", "warning",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield Served(url, db, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def run_tool_loop(
    client: openai.OpenAI, question: str = QUESTION, *, stream_last: bool = False
) -> tuple[list[Any], list[str]]:
    """An ordinary OpenAI tool-calling loop (as an application writes it): returns the
    conversation and the response ids."""
    messages: list[Any] = [{"role": "user", "content": question}]
    response_ids: list[str] = []
    for _ in range(4):
        response = client.chat.completions.create(
            model="tiny", messages=messages, tools=TOOLS, temperature=0, max_tokens=48
        )
        response_ids.append(response.id)
        message = response.choices[0].message
        messages.append(message)
        if not message.tool_calls:
            return messages, response_ids
        for call in message.tool_calls:
            expression = json.loads(call.function.arguments)["expression"]
            messages.append(
                {"role": "tool", "tool_call_id": call.id, "content": str(eval(expression))}
            )
    return messages, response_ids


def trajectory_of(store: TrajectoryStore, response_id: str) -> Any:
    """The trajectory holding a response, once the server's writer thread has stored it."""
    deadline = time.monotonic() + 20
    while True:
        rows = store.read(
            "SELECT trajectory_id FROM served_responses WHERE response_id = ?", [response_id]
        )
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(rows) == 1, rows
    return store.get(rows[0]["trajectory_id"])


def test_an_openai_tool_loop_is_one_token_exact_trajectory(served: Served) -> None:
    messages, response_ids = run_tool_loop(served.client())
    calls = [m.tool_calls[0] for m in messages if getattr(m, "tool_calls", None)]
    assert [json.loads(c.function.arguments)["expression"] for c in calls] == list(CALLS)
    assert len(response_ids) == 3
    with served.store() as store:
        trajectory = trajectory_of(store, response_ids[-1])
        assert {trajectory_of(store, r).id for r in response_ids} == {trajectory.id}
    assert [t.role for t in trajectory.turns] == ["assistant", "tool"] * 2 + ["assistant"]
    assert trajectory.app_tag == "support" and trajectory.task == QUESTION
    assert trajectory.metadata["token_exact"] is True
    assert trajectory.metadata["response_ids"] == response_ids
    assert trajectory.metadata["started"] == "new conversation"
    assert trajectory.metadata["ended"] == "answered"
    assistant, tools = trajectory.assistant_turns(), trajectory.tool_turns()
    assert all(t.policy_version == 0 for t in assistant)
    assert [t.tool_result for t in tools] == ["4", "4"]
    assert [t.tool_args for t in tools] == [{"expression": e} for e in CALLS]
    for turn in tools:  # the tool results are environment tokens (masked), ΔH per call
        assert turn.token_ids and turn.logprobs is None
        assert turn.delta_entropy is not None
    h = [t.entropy_mean for t in assistant]
    assert tools[0].delta_entropy == pytest.approx(h[1] - h[0], abs=1e-5)
    fmt = ChatFormat.from_pretrained(_model_dir(served))
    assert "<tool_response>\n4\n</tool_response>" in fmt.decode(tools[0].token_ids)
    # the sampled ids, spliced: the stored sequence is the last prompt plus what it sampled
    assert fmt.parse(fmt.decode(assistant[0].token_ids)).tool_calls[0].arguments == {
        "expression": "2+2"
    }
    report = check_logprobs(served.db, limit=1)
    assert report.trajectories == 1 and report.tokens == sum(len(t.token_ids) for t in assistant)
    assert report.max_abs_diff < 1e-3


def _streamed_turn(
    client: openai.OpenAI, messages: list[Any]
) -> tuple[dict[str, Any], list[Any], dict[str, str]]:
    """One streamed request with the unmodified OpenAI client: the assistant message the
    deltas add up to, the chunks, and the response headers."""
    raw = client.chat.completions.with_raw_response.create(
        model="tiny", messages=messages, tools=TOOLS, temperature=0, max_tokens=48, stream=True
    )
    chunks = list(raw.parse())
    content, calls = "", []
    for chunk in chunks:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            calls += [c.model_dump(exclude={"index"}) for c in choice.delta.tool_calls or []]
    message = {"role": "assistant", "content": content or None, "tool_calls": calls or None}
    return message, chunks, dict(raw.headers)


def test_a_streamed_openai_tool_loop_is_the_same_token_exact_trajectory(served: Served) -> None:
    """Every turn streamed token by token (one chunk per token, with its entropy and logprob)
    is recorded as the same trajectory, with the same tokens, as the unstreamed loop."""
    _, unstreamed_ids = run_tool_loop(served.client("batch"))
    client = served.client("batch", default_headers={"X-Session-Id": "streamed-1"})
    messages: list[Any] = [{"role": "user", "content": QUESTION}]
    announced, recorded, last_id = set(), set(), ""
    for _ in range(4):
        message, chunks, headers = _streamed_turn(client, messages)
        tokens = [c.choices[0] for c in chunks if c.choices]
        tokens = [t for t in tokens if (t.model_extra or {}).get("entropies")]
        assert len(tokens) > 1 and all(len(t.model_extra["entropies"]) == 1 for t in tokens)
        assert all(t.finish_reason is None for t in tokens)
        announced.add(headers["x-tepo-trajectory-id"])
        last_id = chunks[0].id
        recorded.update(*[c.model_extra["trajectory_ids"] for c in chunks if not c.choices])
        messages.append({k: v for k, v in message.items() if v is not None})
        if not message["tool_calls"]:
            break
        for call in message["tool_calls"]:
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": "4"})
    assert len(announced) == 1 and announced == recorded
    with served.store() as store:
        unstreamed = trajectory_of(store, unstreamed_ids[-1])
        stored = trajectory_of(store, last_id)
    assert stored.id == announced.pop()
    assert stored.metadata["session_id"] == "streamed-1"
    assert [t.role for t in stored.turns] == ["assistant", "tool"] * 2 + ["assistant"]
    assert [t.token_ids for t in stored.turns] == [t.token_ids for t in unstreamed.turns]
    for mine, theirs in zip(stored.assistant_turns(), unstreamed.assistant_turns(), strict=True):
        assert mine.entropies == pytest.approx(theirs.entropies, abs=1e-4)


def _model_dir(served: Served) -> Path:
    with served.store() as store:
        return Path(store.read("SELECT path FROM policies WHERE version = 0")[0]["path"])


def _dicts(messages: list[Any]) -> list[dict[str, Any]]:
    return [m if isinstance(m, dict) else m.model_dump(exclude_none=True) for m in messages]


def test_an_edited_or_truncated_history_starts_a_new_trajectory(served: Served) -> None:
    client = served.client()
    messages, response_ids = run_tool_loop(client)
    history = _dicts(messages)
    with served.store() as store:
        original = trajectory_of(store, response_ids[0])
    session = original.metadata["session_id"]
    # truncated: the first call's result again, answered differently by the client
    retry = client.chat.completions.with_raw_response.create(
        model="tiny", messages=[*history[:2], {**history[2], "content": "5"}], tools=TOOLS,
        temperature=0, max_tokens=48,
    )  # fmt: skip
    # edited: the second call's arguments changed by the client
    edited_call = json.loads(json.dumps(history[3]))
    edited_call["tool_calls"][0]["function"]["arguments"] = '{"expression": "4*2"}'
    edit = client.chat.completions.with_raw_response.create(
        model="tiny", messages=[*history[:3], edited_call, {**history[4], "content": "8"}],
        tools=TOOLS, temperature=0, max_tokens=48,
    )  # fmt: skip
    # both answers are new calls, so their trajectories wait for results: feedback ends them
    with served.http() as http:
        for raw in (retry, edit):
            body = {"response_id": raw.parse().id, "value": 0.0}
            assert http.post("/v1/feedback", json=body).status_code == 200
    with served.store() as store:
        truncated = trajectory_of(store, retry.parse().id)
        changed = trajectory_of(store, edit.parse().id)
    assert {truncated.metadata["ended"], changed.metadata["ended"]} <= {
        "feedback arrived",
        "answered",
    }
    assert truncated.score == changed.score == 0.0
    assert len({original.id, truncated.id, changed.id}) == 3
    assert truncated.metadata["started"].startswith("truncated history: continues from turn 1")
    assert changed.metadata["started"].startswith("edited history: turns after turn 1")
    for new, header in ((truncated, retry.headers), (changed, edit.headers)):
        assert new.metadata["session_id"] == session == header["x-tepo-session-id"]
        assert header["x-tepo-trajectory-id"] == new.id
        assert new.turns[0].role == "assistant"  # earlier turns are in its prompt, not its turns
    # the truncated one continues the sampled ids of the first turn exactly
    first = original.assistant_turns()[0]
    head = original.prompt_token_ids + first.token_ids
    assert truncated.prompt_token_ids[: len(head)] == head
    assert truncated.metadata["token_exact"] is True
    assert changed.metadata["token_exact"] is False  # the edited call was re-tokenized


def test_chats_that_begin_alike_are_not_joined(served: Served) -> None:
    client = served.client()
    _, first = run_tool_loop(client)
    _, second = run_tool_loop(client)
    with served.store() as store:
        a, b = trajectory_of(store, first[-1]), trajectory_of(store, second[-1])
    assert a.id != b.id and a.metadata["session_id"] != b.metadata["session_id"]
    assert a.metadata["response_ids"] == first and b.metadata["response_ids"] == second
    # the same greedy answer in two chats: the next question cannot tell them apart
    opening = [{"role": "user", "content": "Say hello."}]
    answers = [
        client.chat.completions.create(model="tiny", messages=opening, max_tokens=8, temperature=0)
        for _ in range(2)
    ]
    assert answers[0].choices[0].message.content == answers[1].choices[0].message.content
    follow = [
        *opening,
        _dicts([answers[0].choices[0].message])[0],
        {"role": "user", "content": "More."},
    ]
    again = client.chat.completions.create(
        model="tiny", messages=follow, max_tokens=8, temperature=0
    )
    with served.store() as store:
        assert trajectory_of(store, again.id).metadata["started"].startswith("ambiguous history")


def test_an_explicit_session_links_the_next_question(served: Served) -> None:
    client = served.client(default_headers={"X-Session-Id": "chat-7"})
    opening = [{"role": "user", "content": "Say hello."}]
    first = client.chat.completions.create(
        model="tiny", messages=opening, max_tokens=8, temperature=0
    )
    follow = [*opening, _dicts([first.choices[0].message])[0], {"role": "user", "content": "More."}]
    second = client.chat.completions.with_raw_response.create(
        model="tiny", messages=follow, max_tokens=8, temperature=0
    )
    assert second.headers["x-tepo-session-id"] == "chat-7"
    with served.store() as store:
        before, after = trajectory_of(store, first.id), trajectory_of(store, second.parse().id)
    assert after.metadata["started"] == f"next question after trajectory {before.id}"
    head = before.prompt_token_ids + before.turns[0].token_ids
    assert after.prompt_token_ids[: len(head)] == head  # the earlier answer spliced, as sampled
    # a per-session key names the session the same way
    keyed = openai.OpenAI(base_url=f"{served.url}/v1", api_key=f"{KEYS['batch']}#chat-7")
    raw = keyed.chat.completions.with_raw_response.create(
        model="tiny", messages=opening, max_tokens=4
    )
    assert raw.headers["x-tepo-session-id"] == "chat-7"


def _sse_events(text: str) -> list[dict[str, Any]]:
    lines = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_a_streamed_raw_http_tool_loop_is_recorded(served: Served) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": QUESTION}]
    headers = {"X-Session-Id": "raw-1"}
    trajectory_ids = set()
    with served.http("batch") as http:
        for _ in range(3):
            body = {"model": "tiny", "messages": messages, "tools": TOOLS, "stream": True,
                    "temperature": 0, "max_tokens": 48}  # fmt: skip
            answer = http.post("/v1/chat/completions", json=body, headers=headers)
            assert answer.status_code == 200
            assert answer.headers["x-tepo-session-id"] == "raw-1"
            trajectory_ids.add(answer.headers["x-tepo-trajectory-id"])
            deltas = [c["choices"][0]["delta"] for c in _sse_events(answer.text) if c["choices"]]
            content = "".join(d.get("content") or "" for d in deltas)
            calls = [call for d in deltas for call in d.get("tool_calls") or []]
            messages.append({"role": "assistant", "content": content, "tool_calls": calls or None})
            if not calls:
                break
            messages += [{"role": "tool", "tool_call_id": c["id"], "content": "4"} for c in calls]
        (trajectory_id,) = trajectory_ids
        view = http.get("/v1/sessions/raw-1").json()
    assert [t["id"] for t in view["trajectories"]] == [trajectory_id]
    with served.store() as store:
        stored = store.get(trajectory_id)
    assert [t.role for t in stored.turns] == ["assistant", "tool"] * 2 + ["assistant"]
    assert stored.app_tag == "batch" and stored.metadata["session_id"] == "raw-1"


def test_feedback_over_http_reaches_the_trainers_cursor(served: Served) -> None:
    _, response_ids = run_tool_loop(served.client("batch"))
    with served.store() as store:
        trajectory = trajectory_of(store, response_ids[0])
        cursor = max([g.seq for g in store.scored_since(0)], default=0)
    session = trajectory.metadata["session_id"]
    with served.http("batch") as mine, served.http("support") as other, served.http("ops") as ops:
        named = {"response_id": response_ids[0], "value": 0.75, "source": "thumbs"}
        assert other.post("/v1/feedback", json=named).status_code == 404  # another key's
        assert other.get(f"/v1/sessions/{session}").status_code == 404
        assert mine.post("/v1/feedback", json={**named, "value": 1.5}).status_code == 400
        both = {**named, "session_id": session}
        assert mine.post("/v1/feedback", json=both).status_code == 400
        scored = mine.post("/v1/feedback", json=named)
        assert scored.status_code == 200, scored.text
        assert scored.json()["trajectory_ids"] == [trajectory.id]
        assert mine.get(f"/v1/sessions/{session}").json()["trajectories"][0]["score"] == 0.75
        by_session = ops.post("/v1/feedback", json={"session_id": session, "value": 0.5})
        assert by_session.json()["trajectory_ids"] == [trajectory.id]
        assert ops.post("/v1/reload_weights", json={"weights_path": "/nowhere"}).status_code == 400
        assert mine.post("/v1/reload_weights", json={"weights_path": "/x"}).status_code == 403
    with served.store() as store:
        (group,) = store.scored_since(cursor)  # what the trainer polls next
        assert [m.id for m in group.members] == [trajectory.id]
        assert group.members[0].score == 0.5  # latest wins
        assert [(f["source"], f["value"]) for f in store.feedback(trajectory.id)] == [
            ("thumbs", 0.75),
            ("http", 0.5),
        ]


def test_every_request_is_counted_recorded_or_failed(served: Served) -> None:
    with served.http("support") as http:
        http.post(
            "/v1/chat/completions",
            json={
                "model": "tiny",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2,
            },
        )
        own = http.get("/v1/recording/metrics").json()
    with served.http("ops") as ops:
        everything = ops.get("/v1/recording/metrics").json()
    assert own["key"] == "support" and own["requests"] >= 1
    assert set(everything["by_key"]) >= {"support"}
    total = everything["total"]
    assert total["requests"] == total["recorded_requests"] + total.get("recording_failures", 0)
    assert total.get("write_failures", 0) == 0 and total["trajectories_recorded"] >= 1
    # every trajectory recorded in this module (tool loops, next questions, edited and truncated
    # histories, streamed): the trainer recomputes the logged logprobs
    report = check_logprobs(served.db, limit=64)
    assert report.trajectories >= 10 and report.max_abs_diff < 1e-3
