"""Record runs of your own LangGraph graph token-exact: ``TepoChatModel`` + ``TrajectoryRecorder``.

What it shows: an application that builds its own ``StateGraph`` (here the classic
model → tools → model loop with LangGraph's prebuilt ``ToolNode``) only swaps its chat model for
:class:`~tepo_agent.TepoChatModel` and passes a :class:`~tepo_agent.TrajectoryRecorder` as a
callback. Every top-level run then lands in the SQLite store as a token-exact trajectory: the
assistant turns are the ids the model sampled (with logprobs and entropies), never re-tokenized,
and the stored sequence is exactly what the model saw. The same two lines work with
``langchain.agents.create_agent(model, tools)``.

Run it::

    python examples/own_graph.py "What is 12 * 12 - 4?" [--model DIR] [--db tepo-agent.db]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from tepo_agent import (
    ChatFormat,
    TepoChatModel,
    TrajectoryRecorder,
    TrajectoryStore,
    TransformersBackend,
)
from tepo_agent.paths import resolve_model_dir
from tepo_agent.tools import make_calculator_tool


def build_graph(model: TepoChatModel) -> object:
    """The application's own graph: call the model, run the tools it asked for, repeat."""
    tools = [make_calculator_tool()]
    llm = model.bind_tools(tools)

    def call_model(state: MessagesState) -> dict[str, list[AIMessage]]:
        return {"messages": [llm.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("model", call_model)
    graph.add_node("tools", ToolNode(tools))
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", tools_condition)  # → "tools" or END
    graph.add_edge("tools", "model")
    return graph.compile()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="What is 12 * 12 - 4?")
    parser.add_argument("--model", type=Path, help="model directory (default: the default model)")
    parser.add_argument("--db", type=Path, default=Path("tepo-agent.db"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model_dir = resolve_model_dir(args.model)
    fmt = ChatFormat.from_pretrained(model_dir)
    with (
        TransformersBackend.from_pretrained(model_dir) as backend,
        TrajectoryStore(args.db) as store,
    ):
        model = TepoChatModel(backend=backend, chat_format=fmt, max_tokens=64, seed=args.seed)
        graph = build_graph(model)
        recorder = TrajectoryRecorder(store, fmt, app_tag="own-graph-example")
        out = graph.invoke(  # type: ignore[attr-defined]
            {"messages": [HumanMessage(args.question)]},
            config={"callbacks": [recorder], "recursion_limit": 12},
        )
        replies = [m for m in out["messages"] if isinstance(m, AIMessage)]
        for k, reply in enumerate(replies):
            meta = reply.response_metadata
            print(
                f"turn {k}: {len(meta['token_ids'])} tokens, H = {meta['turn_entropy']:.3f}, "
                f"policy v{meta['policy_version']}, prompt {meta['prompt_render']}, "
                f"tool calls {[c['name'] for c in reply.tool_calls]}"
            )
        print(f"answer: {replies[-1].text!r}")

        stored = store.get(recorder.trajectory_ids[-1])
        sampled = [list(r.response_metadata["token_ids"]) for r in replies]
        logged = [t.token_ids for t in stored.assistant_turns()]
        last = replies[-1].response_metadata
        seen_by_model = list(last["prompt_token_ids"]) + list(last["token_ids"])
        print(f"stored trajectory {stored.id} in {args.db} (app tag {stored.app_tag!r})")
        print(f"assistant turns stored as sampled: {sampled == logged}")
        print(f"stored sequence == what the model saw: {stored.full_token_ids() == seen_by_model}")
        for turn in stored.tool_turns():
            print(f"  tool {turn.tool_name}({turn.tool_args}) → {turn.tool_result!r}")


if __name__ == "__main__":
    main()
