"""Handoffs: the ``fslm_handoff`` custom event and :class:`HandoffLogger`, which writes them as JSON lines.

Each time a stage finishes, the stack dispatches one ``fslm_handoff`` event (a LangChain custom event) with
the text the stage hands to the next one (``to_stage`` is ``"output"`` after the last stage). The events
reach every callback handler, LangSmith traces and ``astream_events(version="v2")`` as
``on_custom_event``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler, BaseCallbackManager
from langchain_core.runnables import RunnableConfig
from pydantic import BaseModel

HANDOFF_EVENT = "fslm_handoff"
FINAL_TARGET = "output"


class Handoff(BaseModel):
    """One handoff between stages (the payload of an ``fslm_handoff`` event).

    Attributes:
        stack: Name of the stack.
        from_stage: The stage that produced the text.
        to_stage: The stage that reads it next, or ``"output"`` after the last stage.
        text: The text handed over (the parsed value written back as text).
        raw: The text as generated.
        parsed: The parsed value as a dict (None if parsing failed under ``pass_raw``).
        output_type: Name of the stage's output type.
        parse_error: Why parsing failed, if it did (the raw text was handed on, flagged here).
        prompt_tokens: Tokens in the stage's prompt.
        completion_tokens: Tokens the stage generated.
        latency_s: Wall time of the stage in seconds.
        attempts: Generations the stage needed (1 unless a parse failure was retried).
    """

    stack: str
    from_stage: str
    to_stage: str
    text: str
    raw: str
    parsed: dict[str, Any] | None
    output_type: str
    parse_error: str | None = None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    attempts: int = 1


def trace_handoff(config: RunnableConfig, event: dict[str, Any]) -> None:
    """Add a handoff to the stage's run's ``events`` in every tracer (LangSmith shows them on the run).

    Tracers ignore custom events, so without this a LangSmith trace would not show handoffs. ``config`` is
    the config the handoff is dispatched with; the event goes to the nearest run up from there that is
    named after the stage (the stage's step in the stack), else to the run itself.
    """
    from datetime import datetime, timezone

    from langchain_core.tracers.base import BaseTracer

    manager = config.get("callbacks")
    if not isinstance(manager, BaseCallbackManager) or manager.parent_run_id is None:
        return
    for handler in manager.handlers:
        if not isinstance(handler, BaseTracer):
            continue
        run = start = handler.run_map.get(str(manager.parent_run_id))
        while run is not None and run.name != event["from_stage"]:
            run = handler.run_map.get(str(run.parent_run_id)) if run.parent_run_id else None
        run = run or start
        if run is not None:
            now = datetime.now(timezone.utc).isoformat()
            run.events.append({"name": HANDOFF_EVENT, "time": now, "kwargs": event})


class HandoffLogger(BaseCallbackHandler):
    """Callback handler that records every handoff, and appends it to a JSON-lines file if given one.

    Args:
        path: File to append to (one JSON object per line, flushed per line). None keeps records in
            memory only.
        on_record: Called with each record as it arrives (``fslm run --show-handoffs`` prints them).

    Example:
        .. code-block:: python

            logger = HandoffLogger("handoffs.jsonl")
            stack.invoke("Why is the sky blue?", config={"callbacks": [logger]})
            logger.records[0]["from_stage"]  # "intent"
    """

    def __init__(
        self, path: str | Path | None = None, on_record: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.on_record = on_record  # called with each record as it arrives (e.g. to print it live)
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def on_custom_event(
        self,
        name: str,
        data: Any,
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Record ``fslm_handoff`` events; ignore the rest."""
        if name != HANDOFF_EVENT:
            return
        record = {"run_id": str(run_id), **dict(data)}
        line = json.dumps(record, ensure_ascii=False, default=str)
        with self._lock:
            self.records.append(record)
            if self.path is not None:
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(line + "\n")
        if self.on_record is not None:
            self.on_record(record)
