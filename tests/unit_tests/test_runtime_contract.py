"""LangChain runtime contract: early-closed streams, streams and calls on one engine."""

from __future__ import annotations

import asyncio

import pytest

from langchain_fslm import FSLMChain
from langchain_fslm.roles import default_stage_specs


@pytest.fixture()
def stack(tiny_engine) -> FSLMChain:
    return FSLMChain.from_specs(default_stage_specs(max_new_tokens=6), engine=tiny_engine)


async def test_astream_closed_early_releases_the_engine(stack):
    stream = stack.astream("Why is the sky blue?")
    async for _ in stream:
        break
    await stream.aclose()
    # the engine lock must not be left held by the stream's worker thread
    assert await asyncio.wait_for(stack.ainvoke("Why is the sky blue?"), 60)
    assert await asyncio.wait_for(asyncio.to_thread(stack.invoke, "Why is the sky blue?"), 60)


def test_engine_call_between_stream_chunks_does_not_corrupt_the_stream(tiny_engine, tiny_adapters):
    specs = [
        spec.model_copy(update={"adapter": str(tiny_adapters[name])})
        for spec, name in zip(default_stage_specs(max_new_tokens=16), "abcd", strict=True)
    ]
    stack = FSLMChain.from_specs(specs, engine=tiny_engine)
    reference, other = stack.invoke("Why is the sky blue?"), stack.invoke("Tell me about cats.")
    pieces, nested = [], []
    for piece in stack.stream("Why is the sky blue?"):
        pieces.append(piece)
        if len(nested) < 2:  # same thread, while the stream's generate may still be running
            nested.append(stack.invoke("Tell me about cats."))
    assert "".join(pieces) == reference
    assert nested == [other] * len(nested)
