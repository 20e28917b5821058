"""A LangGraph ReAct agent whose model is the stack: it calls a tool, reads the result, and answers.

``ChatFSLM.bind_tools`` lists the tools in the last stage's system block and constrains its reply to a
valid call (name + arguments that fit the tool's schema), so even the 135M default stack writes calls that
parse. A model this small is not a good judge of *when* to call, so the graph picks the tool choice per
turn (LangGraph's dynamic model): a call on the user's turn, plain text once a tool result is in (pass
``--tool-choice auto`` to let the model decide). On an engine that cannot constrain decoding the first turn
is ``auto`` too: the unconstrained model may then answer in prose without calling a tool.

    python examples/agent.py "What is the weather in Paris?"
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.prebuilt import create_react_agent

from langchain_fslm import ChatFSLM, FSLMChain

WEATHER = {"paris": "sunny, 21 °C", "london": "light rain, 14 °C", "tokyo": "cloudy, 18 °C"}


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return WEATHER.get(city.strip().lower(), f"no weather report for {city}")


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


TOOLS = [get_weather, multiply]


def build_agent(
    max_new_tokens: int = 16,
    call_tokens: int = 48,
    tool_choice: str | None = None,
    stack: FSLMChain | None = None,
) -> Any:
    """The ReAct graph (model -> tools -> model) over the default stack.

    Args:
        max_new_tokens: Budget of the stack's upstream stages.
        call_tokens: Budget of the last stage (a tool call must fit in it).
        tool_choice: The first turn's choice (default: ``any`` where the engine constrains, else ``auto``).
        stack: The stack to use instead of the default one.
    """
    stack = stack or FSLMChain.default(max_new_tokens=max_new_tokens)
    chat = ChatFSLM(stack=stack, max_tokens=call_tokens)
    constrained = stack.stages[-1].engine.capabilities().constrained
    first = tool_choice or ("any" if constrained else "auto")

    def model(state: dict[str, Any], runtime: Any) -> Any:
        after_tool = isinstance(state["messages"][-1], ToolMessage)
        return chat.bind_tools(TOOLS, tool_choice="none" if after_tool else first)

    with warnings.catch_warnings():  # its successor, langchain's create_agent, is not a dependency here
        warnings.simplefilter("ignore")
        return create_react_agent(model, TOOLS)


def main(
    question: str, max_new_tokens: int = 16, call_tokens: int = 48, tool_choice: str | None = None
) -> dict:
    """Run the agent on one question and print each message."""
    agent = build_agent(max_new_tokens, call_tokens, tool_choice)
    result: dict = agent.invoke({"messages": [("user", question)]}, {"recursion_limit": 6})
    messages: list[BaseMessage] = result["messages"]
    for message in messages:
        calls = getattr(message, "tool_calls", None)
        print(f"-- {message.type}: {calls if calls else message.text!r}")
    answer = messages[-1]
    assert isinstance(answer, AIMessage)
    return {
        "messages": messages,
        "answer": answer.text,
        "tool_calls": sum(isinstance(m, ToolMessage) for m in messages),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="What is the weather in Paris?")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--call-tokens", type=int, default=48)
    parser.add_argument("--tool-choice", default=None, help="first turn: any, auto or a tool name")
    args = parser.parse_args()
    main(args.question, args.max_new_tokens, args.call_tokens, args.tool_choice)
