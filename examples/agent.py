"""A LangGraph graph with the stack as one node: the stack answers, a check node reviews the answer and
sends it back once with a larger budget if it came out empty or cut short.

    python examples/agent.py "Give three tips for staying healthy."
"""

from __future__ import annotations

import argparse
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph

from langchain_fslm import FSLMChain, StackOutput


class State(TypedDict, total=False):
    question: str
    budget: int
    attempts: int
    answer: str
    stages: dict[str, str]


def build_graph(max_new_tokens: int = 64, max_attempts: int = 2) -> Any:
    """START -> stack -> check -> (stack again | END)."""

    def stack_node(state: State) -> State:
        budget = state.get("budget", max_new_tokens)
        stack = FSLMChain.default(max_new_tokens=budget).with_handoffs()
        out: StackOutput = stack.invoke(state["question"])
        return {
            "answer": out.output,
            "stages": {name: str(value) for name, value in out.stages.items()},
            "attempts": state.get("attempts", 0) + 1,
        }

    def check(state: State) -> str:
        done = state["answer"].strip().endswith((".", "!", "?")) or state["attempts"] >= max_attempts
        return "done" if done else "retry"

    def widen(state: State) -> State:
        return {"budget": 2 * state.get("budget", max_new_tokens)}

    graph = StateGraph(State)
    graph.add_node("stack", stack_node)
    graph.add_node("widen", widen)
    graph.add_edge(START, "stack")
    graph.add_conditional_edges("stack", check, {"done": END, "retry": "widen"})
    graph.add_edge("widen", "stack")
    return graph.compile()


def main(question: str, max_new_tokens: int = 64) -> State:
    """Run the graph and print each stage's output and the answer."""
    result: State = build_graph(max_new_tokens).invoke({"question": question})
    for name, text in result["stages"].items():
        print(f"-- {name}: {text!r}")
    print(f"answer after {result['attempts']} attempt(s): {result['answer']}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="Give three tips for staying healthy.")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    main(args.question, args.max_new_tokens)
