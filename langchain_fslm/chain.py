"""``FSLMChain``: a stack of small-model stages, composed in LCEL, usable wherever an LLM goes.

The stack *is* an LCEL sequence, built once when the stack is made (see
:mod:`langchain_fslm.stack_steps` for its data path)::

    fslm_input | <stage 1> | ... | <stage N>

``FSLMChain`` binds that sequence the way LangChain's own ``RunnableBinding`` does, so ``invoke``,
``batch``, ``stream`` and their async forms are LangChain's, not ours.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from langchain_core.language_models import LanguageModelInput
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda, RunnableSequence
from langchain_core.runnables.base import RunnableBindingBase
from pydantic import ConfigDict, Field, PrivateAttr

from langchain_fslm.engine.registry import AdapterLoads as _AdapterLoads
from langchain_fslm.engine.registry import adapter_name as _adapter_name  # noqa: F401 - kept importable
from langchain_fslm.errors import AdapterError, InvalidInputError
from langchain_fslm.handoff import FINAL_TARGET
from langchain_fslm.models import BaseModelRef
from langchain_fslm.stack_building import StackBuilding
from langchain_fslm.stack_steps import (
    RESULTS_KEY,
    StackOutput,
    StageStep,
    State,
    initial_state,
    run_upstream,
    stack_output,
)
from langchain_fslm.stage import BATCH_CONCURRENCY, SLMRunnable
from langchain_fslm.stage_parser import StageResult

__all__ = ["RESULTS_KEY", "FSLMChain", "StackOutput", "StageStep", "State"]

_FIELDS = ("stages", "base_model", "include_handoffs", "adapter_sources", "description", "name")


class FSLMChain(StackBuilding, RunnableBindingBase[LanguageModelInput, Any]):
    """A fine-tuned stack of small language models, usable wherever LangChain expects an LLM.

    It reads a str, a PromptValue or a list of messages and returns the last stage's answer as a
    str (or a :class:`StackOutput` with every stage's parsed output when ``include_handoffs=True``).
    Per call it takes ``stop=[...]`` (extra stop sequences for the last stage).

    Args:
        stages: The stages, in order.
        base_model: Reference of the shared base model (written to the manifest on save).
        include_handoffs: Return a :class:`StackOutput` instead of a str.
        adapter_sources: Stage name -> adapter folder it was loaded from (used on save).
        description: Free text saved in the manifest.
        name: The stack's name (its run in traces, the ``stack`` of its handoff events).

    Example:
        .. code-block:: python

            from langchain_core.output_parsers import StrOutputParser
            from langchain_core.prompts import ChatPromptTemplate
            from langchain_fslm import FSLMChain

            stack = FSLMChain.default()
            chain = ChatPromptTemplate.from_template("Answer briefly: {q}") | stack | StrOutputParser()
            chain.invoke({"q": "Why is the sky blue?"})
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    stages: list[SLMRunnable] = Field(min_length=1)
    base_model: BaseModelRef | None = None
    include_handoffs: bool = False
    adapter_sources: dict[str, str] = Field(default_factory=dict)
    description: str = ""

    _adapters: _AdapterLoads = PrivateAttr(default_factory=_AdapterLoads)

    def __init__(
        self, *, stages: Sequence[SLMRunnable], include_handoffs: bool = False, **fields: Any
    ) -> None:
        super().__init__(
            bound=RunnableLambda(_unbuilt),  # replaced below: the sequence reads the validated fields
            stages=list(stages),
            include_handoffs=include_handoffs,
            custom_output_type=StackOutput if include_handoffs else str,
            # every row of a batch in flight at once, so each stage's rows share forward passes
            config={"max_concurrency": BATCH_CONCURRENCY},
            **fields,
        )
        self.bound = self._sequence()

    def _sequence(self) -> Runnable[Any, Any]:
        """The stack as one LCEL sequence (built once per stack)."""
        *upstream, last = self.steps
        tail: list[Runnable[Any, Any]] = (
            [last.runnable(), RunnableLambda(stack_output, name="fslm_output")]
            if self.include_handoffs
            else [last.answer()]
        )
        return RunnableSequence(
            RunnableLambda(self._initial_state, name="fslm_input"),
            *(step.runnable() for step in upstream),
            *tail,
            name=self.name or "FSLMChain",
        )

    def _initial_state(self, value: Any, **kwargs: Any) -> dict[str, Any]:
        self._check_not_released()
        return initial_state(value, **kwargs)

    def _check_not_released(self) -> None:
        if self._adapters.released:  # its adapter names may still be loaded for another stack
            raise AdapterError(
                f"Stack {self.name or 'FSLMChain'!r} was released (release()); its adapter stages cannot "
                "run. Load the stack again to use it."
            )

    @property
    def steps(self) -> list[StageStep]:
        """One step per stage, each knowing which stage reads its output next."""
        names = [s.spec.name for s in self.stages]
        stack = self.name or "FSLMChain"
        return [
            StageStep(s, names[i + 1] if i + 1 < len(names) else FINAL_TARGET, stack)
            for i, s in enumerate(self.stages)
        ]

    @property
    def InputType(self) -> Any:  # noqa: N802 - LangChain's name
        """What the stack accepts."""
        return LanguageModelInput

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> FSLMChain:
        """A copy with ``update`` applied, built anew so its sequence follows the new settings.

        The copy shares this stack's loaded adapters (:meth:`release` on either releases them).
        """
        fields = {k: getattr(self, k) for k in _FIELDS}
        copy = FSLMChain(**{**fields, **(update or {})})
        copy._adapters = self._adapters
        return copy

    def with_handoffs(self, include: bool = True) -> FSLMChain:
        """A copy that returns a :class:`StackOutput` (every stage's result) instead of a str."""
        return self.model_copy(update={"include_handoffs": include})

    def with_structured_output(
        self, schema: Any, *, include_raw: bool = False, **kwargs: Any
    ) -> Runnable[LanguageModelInput, Any]:
        """A runnable that returns the last stage's reply parsed into ``schema``.

        The last stage generates under the schema's constraint (on an engine that constrains decoding it
        can only write a valid object), its prompt names the form, and its reply is read strictly and
        validated: a reply that does not parse is regenerated (``parse_retries``) and then raises
        :class:`~langchain_fslm.errors.StageOutputError`. The upstream stages run as usual.

        Args:
            schema: A pydantic model (returns an instance), a TypedDict or JSON-schema dict (returns a dict),
                or a :class:`~langchain_fslm.outputs.StageOutput` subclass (returns one).
            include_raw: Return ``{"raw": str, "parsed": ..., "parsing_error": ...}`` (``raw``: the last
                stage's text; a reply that does not parse gives ``parsed=None`` and the error).
            **kwargs: Not supported.

        Raises:
            ConstraintError: For a recursive or unsupported schema, naming it, before any generation.

        Example: ``FSLMChain.default().with_structured_output(Person).invoke("Ada is 36.")``.
        """
        from langchain_fslm.structured import structured_stack

        if kwargs:
            raise TypeError(f"FSLMChain.with_structured_output got unsupported argument(s) {sorted(kwargs)}")
        return structured_stack(self, schema, include_raw=include_raw)

    def with_stage(self, stage: str, **updates: Any) -> FSLMChain:
        """A copy whose stage uses updated spec fields (``prompt``, ``system``, ``generation``, ...).

        Example: ``stack.with_stage("intent", parse_retries=3, on_parse_error="pass_raw")``.
        """
        index = self._stage_index(stage)
        stages = [s.model_copy(update=updates) if i == index else s for i, s in enumerate(self.stages)]
        return self.model_copy(update={"stages": stages})

    def with_generation(self, stage: str | None = None, **updates: Any) -> FSLMChain:
        """A copy whose stage (default: the last) uses updated generation settings.

        Example: ``stack.with_generation(temperature=0.7, max_new_tokens=64)``.
        """
        index = len(self.stages) - 1 if stage is None else self._stage_index(stage)
        stages = list(self.stages)
        stages[index] = stages[index].with_generation(**updates)
        return self.model_copy(update={"stages": stages})

    def _stage_index(self, stage: str) -> int:
        names = [s.spec.name for s in self.stages]
        if stage not in names:
            raise InvalidInputError(f"{self.get_name()} has no stage {stage!r}; its stages are {names}")
        return names.index(stage)

    def upstream_states(
        self,
        inputs: Sequence[Any],
        on_error: Callable[[StageStep, Any, Exception], StageResult],
        config: RunnableConfig | None = None,
    ) -> list[State]:
        """Run every stage but the last on many inputs (a batch per stage), for evaluation.

        Args:
            inputs: Stack inputs.
            on_error: Called with the step, the input and the exception of a row whose stage failed; returns
                the result handed on instead (or raises to stop).
            config: Runnable config for the runs.

        Returns:
            Each input's state before the last stage.
        """
        self._check_not_released()
        return run_upstream(self.steps[:-1], inputs, on_error, config)

    def release(self) -> None:
        """Free the weights of the LoRA adapters this stack loaded, unless another stack uses them.

        For long-running processes that load stacks again and again (a retrained stack, a stack
        per request): without it, each load's adapters stay in memory for the life of the process.
        The base model stays loaded, shared by the other stacks on it.

        Afterwards this stack, and the copies made from it (``with_generation``, a
        :class:`~langchain_fslm.ChatFSLM` around it), can no longer run its adapter stages: they
        raise :class:`~langchain_fslm.errors.AdapterError`. Releasing again does nothing. Remote
        stages are not affected.
        """
        self._adapters.release()


def _unbuilt(_: Any) -> Any:
    raise RuntimeError("FSLMChain is still being built")
