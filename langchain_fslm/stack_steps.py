"""The pieces of a stack's LCEL sequence: the state, one step per stage, the handoff, the output.

The data path of ``FSLMChain.invoke``::

    fslm_input         input (str | PromptValue | messages) -> state {"input": text, "_results": []}
    <stage 1>          state -> stage 1 (fields | prompt | SmallLM | parser) -> state + its output
    ...                (each step dispatches one ``fslm_handoff`` event)
    <stage N>          the last stage; streamed, its text pieces are the stack's stream
    -> str             (or a StackOutput with every stage's result, ``include_handoffs=True``)

The state is a plain dict: ``input``, one entry per finished stage (its parsed value) and
``_results`` (the :class:`StageResult` of each stage, in order).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, cast

from langchain_core.callbacks import adispatch_custom_event, dispatch_custom_event
from langchain_core.runnables import Runnable, RunnableConfig, RunnableGenerator, RunnableLambda
from pydantic import BaseModel, ConfigDict

from langchain_fslm.engine.base import check_stops
from langchain_fslm.handoff import FINAL_TARGET, HANDOFF_EVENT, Handoff, trace_handoff
from langchain_fslm.inputs import input_to_text
from langchain_fslm.outputs import StageOutput
from langchain_fslm.stage import STOP_KEY, SLMRunnable
from langchain_fslm.stage_parser import StageResult

State = dict[str, Any]
"""The stack state: ``input`` (str), one entry per finished stage, and ``_results`` (StageResults)."""

RESULTS_KEY = "_results"


class StackOutput(BaseModel):
    """Everything a stack produced, returned when ``include_handoffs=True``.

    Attributes:
        output: The final answer text.
        input: The input text the stack read.
        stages: Each stage's parsed value (or raw text, if it did not parse under ``pass_raw``).
        results: Each stage's :class:`StageResult` (raw text, token counts, latency), in order.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    output: str
    input: str
    stages: dict[str, StageOutput | str]
    results: list[StageResult]

    @property
    def usage(self) -> dict[str, int]:
        """Token totals over all stages."""
        prompt = sum(r.prompt_tokens for r in self.results)
        completion = sum(r.completion_tokens for r in self.results)
        return {"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion}


def initial_state(value: Any, stop: list[str] | str | None = None, **kwargs: Any) -> State:
    """The state a stack starts from (``stop``: extra stop sequences for the last stage).

    Raises:
        TypeError: For any other call argument, naming it.
    """
    if kwargs:
        raise TypeError(
            f"A stack got unsupported keyword argument(s) {sorted(kwargs)}; it takes only stop=[...] "
            "per call (generation settings: with_generation())."
        )
    state: State = {"input": input_to_text(value), RESULTS_KEY: []}
    if stops := check_stops(stop):
        state[STOP_KEY] = stops
    return state


def stage_fields(state: State, last: bool = False) -> dict[str, Any]:
    """What a stage reads from the state: every field but the results (and the stops, but last)."""
    return {k: v for k, v in state.items() if k != RESULTS_KEY and (last or k != STOP_KEY)}


def advance(state: State, result: StageResult) -> State:
    """The state after a stage: its value stored under its name, its result appended."""
    value: StageOutput | str = result.value if result.value is not None else result.raw.strip()
    return {**state, result.stage: value, RESULTS_KEY: [*state[RESULTS_KEY], result]}


def handoff_of(result: StageResult, stage: SLMRunnable, to_stage: str, stack: str) -> Handoff:
    """The ``fslm_handoff`` payload of a finished stage."""
    return Handoff(
        stack=stack,
        from_stage=stage.spec.name,
        to_stage=to_stage,
        text=result.text,
        raw=result.raw,
        parsed=result.value.model_dump() if result.value is not None else None,
        output_type=stage.output_type.type_name,
        parse_error=result.parse_error,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        latency_s=round(result.latency_s, 6),
        attempts=result.attempts,
    )


class StageStep:
    """One stage inside a stack: reads its fields from the state, runs, hands off, updates the state.

    Args:
        stage: The stage.
        to_stage: The stage that reads its output next (``"output"`` after the last).
        stack: The stack's name (in the handoff events).
    """

    def __init__(self, stage: SLMRunnable, to_stage: str = FINAL_TARGET, stack: str = "FSLMChain") -> None:
        self.stage = stage
        self.to_stage = to_stage
        self.stack = stack
        self.last = to_stage == FINAL_TARGET

    def handoff(self, result: StageResult) -> Handoff:
        """This stage's handoff for a result."""
        return handoff_of(result, self.stage, self.to_stage, self.stack)

    def _run(self, state: State, config: RunnableConfig) -> State:
        result = self.stage.invoke(stage_fields(state, self.last), config)
        event = self.handoff(result).model_dump()
        dispatch_custom_event(HANDOFF_EVENT, event, config=config)
        trace_handoff(config, event)
        return advance(state, result)

    async def _arun(self, state: State, config: RunnableConfig) -> State:
        result = await self.stage.ainvoke(stage_fields(state, self.last), config)
        event = self.handoff(result).model_dump()
        await adispatch_custom_event(HANDOFF_EVENT, event, config=config)
        trace_handoff(config, event)
        return advance(state, result)

    def runnable(self) -> Runnable[State, State]:
        """The step as a runnable named after the stage (one run per stage in traces)."""
        return RunnableLambda(self._run, afunc=self._arun, name=self.stage.spec.name)

    def answer(self) -> Runnable[Any, Any]:
        """The last stage as the stack's answer: its text, streamed piece by piece by ``stream``.

        ``fields | stage (cleaned stream, ending with its result) | answer text``: invoked, the stage
        returns its :class:`StageResult` and the answer is its text; streamed, its text pieces pass
        straight through and its result, which comes last, is only handed off.
        """
        return (
            RunnableLambda(lambda state: stage_fields(state, last=True), name="fields")
            | self.stage.pipeline(clean_stream=True, emit_result=True)
            # (RunnableGenerator passes the config to functions that take one; its stubs omit that)
            | RunnableGenerator(cast(Any, self._text), cast(Any, self._atext), name="answer_text")
        ).with_config(run_name=self.stage.spec.name)

    def _text(self, chunks: Iterator[Any], config: RunnableConfig) -> Iterator[str]:
        streamed = False
        for chunk in chunks:
            if isinstance(chunk, StageResult):
                event = self.handoff(chunk).model_dump()
                dispatch_custom_event(HANDOFF_EVENT, event, config=config)
                trace_handoff(config, event)
                text = None if streamed else chunk.text  # invoked: the result is all there is
            else:
                text, streamed = str(chunk), True
            if text:
                yield text

    async def _atext(self, chunks: AsyncIterator[Any], config: RunnableConfig) -> AsyncIterator[str]:
        streamed = False
        async for chunk in chunks:
            if isinstance(chunk, StageResult):
                event = self.handoff(chunk).model_dump()
                await adispatch_custom_event(HANDOFF_EVENT, event, config=config)
                trace_handoff(config, event)
                text = None if streamed else chunk.text
            else:
                text, streamed = str(chunk), True
            if text:
                yield text


def stack_output(state: State) -> StackOutput:
    """The :class:`StackOutput` of a finished state."""
    results: list[StageResult] = state[RESULTS_KEY]
    stages = {r.stage: state[r.stage] for r in results}
    return StackOutput(output=results[-1].text, input=state["input"], stages=stages, results=results)


def run_upstream(
    steps: Sequence[StageStep],
    inputs: Sequence[Any],
    on_error: Callable[[StageStep, Any, Exception], StageResult],
    config: RunnableConfig | None = None,
) -> list[State]:
    """Run ``steps`` over many inputs, a batch per step; a failed row continues with ``on_error``'s result.

    For evaluation: every stage but the last runs once per distinct context, and a row whose stage
    failed continues with what ``on_error(step, input, error)`` hands on (it may raise to stop).

    Returns:
        The state of each input after the steps.
    """
    states = [initial_state(i) for i in inputs]
    for step in steps:
        runnable = step.runnable()
        rows: list[Any] = runnable.batch(
            states, {**(config or {}), "max_concurrency": max(1, len(states))}, return_exceptions=True
        )
        for i, row in enumerate(rows):
            if isinstance(row, Exception):
                handed_on = on_error(step, inputs[i], row)
                rows[i] = advance(states[i], handed_on)
        states = rows
    return states
