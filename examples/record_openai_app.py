"""Record any OpenAI-client application with ``tepo-agent serve --record``, score it, retrain it.

What it shows:

1. ``tepo-agent serve --db DB --record`` started as a subprocess (the default model, on a free
   port of 127.0.0.1): an OpenAI-compatible server that records every chat completion as a
   token-exact trajectory;
2. an ordinary OpenAI-client tool-calling loop (:func:`answer`, the ``openai`` package, nothing
   of tepo-agent in it): the one change an existing application makes is its ``base_url``;
3. a score for each conversation, sent later over HTTP: ``POST /v1/feedback`` with the response
   id of the conversation's last completion;
4. ``tepo-agent train`` on the recorded trajectories (one step; ``--no-gate`` so that the example
   always shows a swap: in production keep the held-out gate);
5. the server swapping the new version in between requests (it follows the database's policy
   registry), and the next request served by it: its recorded trajectory names the version.

Run it (about a minute on 2 CPU cores with the default model)::

    python examples/record_openai_app.py [--db record/tepo-agent.db] [--model DIR]
"""

from __future__ import annotations

import argparse
import ast
import json
import operator
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

from tepo_agent.net import free_port

QUESTIONS = ["What is 17 * 23?", "What is 2 to the power 10?", "What is 144 / 12?", "What is 9+8?"]
EXPECTED = ["391", "1024", "12", "17"]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluate an arithmetic expression.",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string"}},
                "required": ["expression"],
            },
        },
    }
]
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.Pow: operator.pow, ast.USub: operator.neg}  # fmt: skip


# -- the application: an ordinary OpenAI-client tool loop -------------------------------------


def calculator(expression: str) -> str:
    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.operand))
        raise ValueError("not arithmetic")

    try:
        result = value(ast.parse(expression, mode="eval").body)
    except (ValueError, SyntaxError, ZeroDivisionError, OverflowError, TypeError) as exc:
        return f"error: {exc}"
    return str(int(result)) if float(result).is_integer() else str(result)


def answer(client: OpenAI, question: str, model: str) -> tuple[str, str]:
    """Run the tool loop on one question: (the final answer, its completion's response id)."""
    messages: list[Any] = [{"role": "user", "content": question}]
    for _ in range(3):
        response = client.chat.completions.create(
            model=model, messages=messages, tools=TOOLS, max_tokens=64
        )
        message = response.choices[0].message
        messages.append(message)
        if not message.tool_calls:
            break
        for call in message.tool_calls:
            try:
                expression = json.loads(call.function.arguments).get("expression", "")
            except ValueError:
                expression = ""
            messages.append(
                {"role": "tool", "tool_call_id": call.id, "content": calculator(str(expression))}
            )
    return message.content or "", response.id


def score(reply: str, expected: str) -> float:
    """The application's signal on [0, 1]: the right number, any number, nothing."""
    return 1.0 if expected in reply else 0.5 if any(ch.isdigit() for ch in reply) else 0.0


# -- around it: the recording server, feedback, training ------------------------------------


def start_server(db: Path, model: Path | None, port: int) -> subprocess.Popen[str]:
    command = [
        sys.executable, "-m", "tepo_agent", "serve", "--db", str(db), "--record",
        "--port", str(port), "--served-model-name", "tepo", "--poll-s", "0.5",
        "--log-level", "warning",
    ]  # fmt: skip
    if model is not None:
        command += ["--model", str(model)]
    print("$ tepo-agent " + " ".join(command[3:]))
    proc = subprocess.Popen(command, text=True)
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit("tepo-agent serve did not start; see its output above")
        time.sleep(0.3)


def serving_version(http: httpx.Client) -> int:
    return int(http.get("/v1/models").json()["data"][0]["policy_version"])


def recorded_version(http: httpx.Client, session_id: str) -> int | None:
    """The policy version of a session's stored trajectory (None until it is written)."""
    for _ in range(100):
        stored = http.get(f"/v1/sessions/{session_id}").json().get("trajectories", [])
        if stored and stored[-1].get("policy_version") is not None:
            return int(stored[-1]["policy_version"])
        time.sleep(0.1)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=Path("record/tepo-agent.db"))
    parser.add_argument("--model", type=Path, help="model directory (default: the default model)")
    args = parser.parse_args()
    args.db.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = start_server(args.db, args.model, port)
    url = f"http://127.0.0.1:{port}"
    try:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused")  # the one-line change
        http = httpx.Client(base_url=url, timeout=60)
        for round_ in range(2):
            for question, expected in zip(QUESTIONS, EXPECTED, strict=True):
                reply, response_id = answer(client, question, "tepo")
                value = score(reply, expected)
                sent = http.post("/v1/feedback", json={"response_id": response_id, "value": value})
                sent.raise_for_status()
                if round_ == 0:
                    print(f"{question!r} -> {reply[:40]!r}: feedback {value}")
        print(f"recorded and scored {2 * len(QUESTIONS)} conversations on v{serving_version(http)}")

        train = [
            sys.executable, "-m", "tepo_agent", "train", "--db", str(args.db), "--steps", "1",
            "--batch", "8", "--lr", "1e-4", "--no-gate", "--device", "cpu", "--no-progress",
        ]  # fmt: skip
        print("$ tepo-agent " + " ".join(train[3:]))
        subprocess.run(train, check=True)
        deadline = time.monotonic() + 60
        while serving_version(http) == 0 and time.monotonic() < deadline:
            time.sleep(0.3)
        print(f"the server now serves v{serving_version(http)}")

        # the same loop again; this time the app names its session (a header) to look it up
        named = client.with_options(default_headers={"X-Session-Id": "after-training"})
        reply, response_id = answer(named, "What is 6 * 7?", "tepo")
        http.post("/v1/feedback", json={"response_id": response_id, "value": score(reply, "42")})
        print(f"next request served by v{recorded_version(http, 'after-training')}")
        http.close()
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
