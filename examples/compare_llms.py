"""The same chain on three models, side by side: the FSLM stack, the bare base model (through
langchain-huggingface), and an API chat model when ``OPENAI_API_KEY`` is set.

    python examples/compare_llms.py "Why is the sky blue?"
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_fslm import FSLMChain, HandoffLogger

PROMPT = ChatPromptTemplate.from_template("Answer briefly: {question}")


def bare_base_model(max_new_tokens: int) -> Any:
    """The stack's base model alone (SmolLM2-135M-Instruct): langchain-huggingface's ChatHuggingFace over a
    transformers pipeline on its own copy of the weights (no adapters), greedy."""
    from langchain_fslm.evaluation.specs import huggingface_model

    model, _ = huggingface_model(max_new_tokens=max_new_tokens)
    return model


def models(max_new_tokens: int) -> dict[str, Any]:
    """The models to compare (the API one only when its key is set)."""
    out: dict[str, Any] = {
        "fslm-stack": FSLMChain.default(max_new_tokens=max_new_tokens),
        "base-model": bare_base_model(max_new_tokens),
    }
    if os.environ.get("OPENAI_API_KEY"):
        from langchain_openai import ChatOpenAI

        out["openai"] = ChatOpenAI(
            model=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"), max_tokens=max_new_tokens
        )
    else:
        print("(skipping the API model: set OPENAI_API_KEY to include it)")
    return out


def main(question: str, max_new_tokens: int = 64) -> list[dict[str, Any]]:
    """Run ``PROMPT | model | StrOutputParser`` on every model; print and return answer, latency, handoffs."""
    rows = []
    for name, llm in models(max_new_tokens).items():
        logger = HandoffLogger()
        chain = PROMPT | llm | StrOutputParser()
        start = time.perf_counter()
        answer = chain.invoke({"question": question}, config={"callbacks": [logger]})
        rows.append(
            {
                "model": name,
                "answer": answer,
                "latency_s": time.perf_counter() - start,
                "handoffs": logger.records,
            }
        )
    for row in rows:
        print(f"== {row['model']}  ({row['latency_s']:.2f} s, {len(row['handoffs'])} handoffs)")
        for record in row["handoffs"]:
            print(f"   {record['from_stage']} -> {record['to_stage']}: {record['text']!r}")
        print(f"   answer: {row['answer'].strip()!r}")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="Why is the sky blue?")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    main(args.question, args.max_new_tokens)
