"""Generation on an OpenAI-compatible server (vLLM, llama.cpp server) through langchain-openai.

A stage's adapter is chosen by *model name*, the way vLLM serves several LoRA adapters from one base
(``vllm serve BASE --enable-lora --lora-modules intent=PATH ...``): a stage with an adapter asks for the
model named after the adapter, an adapter-less stage asks for the base model's name.

The server's settings, request fields and error mapping are in :mod:`~langchain_fslm.engine.remote_http`
(re-exported here). langchain-openai (the ``remote`` extra) is imported only when a request is sent.
"""

from __future__ import annotations

import re
import threading
import zlib
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from langchain_fslm.engine.base import (
    Engine,
    EngineCapabilities,
    Generation,
    GenerationRequest,
    cut_at_stop,
    stream_until_stop,
)
from langchain_fslm.engine.constraint import OutputConstraint
from langchain_fslm.engine.remote_adapters import RemoteAdapters
from langchain_fslm.engine.remote_http import (
    CONSTRAINT_KINDS,
    CONTEXT_LENGTH_ERRORS,
    ENV_API_KEY,
    ENV_BASE_URL,
    ENV_MODEL,
    PENALTY_FIELDS,
    RemoteEngineError,
    RemoteSettings,
    ServerClients,
    ServerErrors,
    ServerRateLimitedError,
    ServerTimeoutError,
    ServerUnreachableError,
    constraint_fields,
    payload,
    request_input,
)
from langchain_fslm.errors import ConstraintError, FSLMError

__all__ = [
    "CONTEXT_LENGTH_ERRORS",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "ENV_MODEL",
    "PENALTY_FIELDS",
    "RemoteEngine",
    "RemoteEngineError",
    "RemoteSettings",
    "ServerRateLimitedError",
    "ServerTimeoutError",
    "ServerUnreachableError",
    "remote_engine",
    "remote_engine_from",
]

_PIECES = re.compile(r"\w+|[^\w\s]")
"""Words and punctuation marks: the estimate of tokens where the server's tokenizer is out of reach."""


class RemoteEngine(RemoteAdapters, Engine):
    """An :class:`~langchain_fslm.engine.base.Engine` whose text comes from an OpenAI-compatible server.

    The OpenAI API has no tokenizer endpoint, so :meth:`count_tokens` and :meth:`token_ids` are an
    estimate (one token per word or punctuation mark; ``capabilities().token_counts_exact`` is False);
    the token counts of generated replies are the server's own. It constrains decoding on a known server
    (vLLM, llama.cpp), and cannot score log-likelihoods or compile decoding. See docs/scaling.md.

    Args:
        settings: Server settings, or a ``base_url`` string.
        **kwargs: Other :class:`RemoteSettings` fields when ``settings`` is a string.
    """

    kind: ClassVar[str] = "remote"

    def __init__(self, settings: RemoteSettings | str, **kwargs: Any) -> None:
        if isinstance(settings, str):
            settings = RemoteSettings(base_url=settings, **kwargs)
        elif kwargs:
            settings = settings.model_copy(update=kwargs)
        self.settings = settings
        self.adapter_paths: dict[str, str] = {}
        self.adapter_users: dict[str, int] = {}  # adapter -> registrations not yet released
        self.clients = ServerClients(settings)
        self._base_model: str | None = settings.model
        self._lock = threading.RLock()
        self.errors = ServerErrors(settings, self.served_models)

    def __repr__(self) -> str:
        return f"RemoteEngine(base_url={self.settings.base_url!r}, api={self.settings.api!r})"

    @property
    def base_url(self) -> str:
        """The server's API root."""
        return self.settings.base_url

    def capabilities(self) -> EngineCapabilities:
        """Constrained decoding on a known server (``server="vllm"`` or ``"llamacpp"``), no other extras."""
        return EngineCapabilities(constrained=self.settings.server in CONSTRAINT_KINDS)

    def check_constraint(self, constraint: OutputConstraint, stage: str | None = None) -> None:
        """Refuse, before any request, a constraint kind the server does not take (``ConstraintError``)."""
        check_sendable(constraint, self.settings.server, stage)

    def _fields(self, request: GenerationRequest) -> dict[str, Any]:
        # the request's deadline (from now) travels to the transport (remote_transport), shared by retries
        from langchain_fslm.engine.remote_transport import deadline_header

        constraint = request.constraint if self.capabilities().constrained else None
        if constraint is not None:
            self.check_constraint(constraint, request.stage)
        fields = payload(request.config, self.settings.server, constraint)
        if self.settings.server == "llamacpp" and (request.adapter or self.adapter_paths):
            fields["extra_body"]["lora"] = self.lora_field(request.adapter)  # llama.cpp: per request
        return fields | {"extra_headers": deadline_header(self.settings.request_deadline)}

    # ----------------------------------------------------------------------------- prompts and tokens
    def render(self, prompt: str, system: str | None = None) -> str:
        """The text sent for a prompt: the system message, a blank line, the prompt.

        This is the whole text for ``api="completions"``; for ``chat`` the server wraps the same two
        messages in the model's chat template, which it does not share.
        """
        return f"{system}\n\n{prompt}" if system else prompt

    def token_ids(self, text: str) -> list[int]:
        """Estimated token ids: a stable hash of each word and punctuation mark (not the server's ids)."""
        return [zlib.crc32(piece.encode()) & 0x7FFFFFFF for piece in _PIECES.findall(text)]

    def count_tokens(self, text: str) -> int:
        """Estimated number of tokens: words and punctuation marks (BPE models use somewhat more)."""
        return len(_PIECES.findall(text))

    def model_name(self, adapter: str | None) -> str:
        """The served model name a request with this adapter asks for (also the name in traces)."""
        if adapter is not None:
            return self.settings.adapter_models.get(adapter, adapter)
        if self._base_model is None:
            served = self.served_models()
            if not served:
                raise RemoteEngineError(f"The server at {self.base_url} lists no models.")
            self._base_model = served[0]
        return self._base_model

    # ----------------------------------------------------------------------------- server
    def served_models(self) -> list[str]:
        """Model names the server lists under ``/models`` (base model and LoRA modules)."""
        import openai

        from langchain_fslm.engine.remote_transport import deadline_header

        try:
            listing = self.clients.openai().models.list(
                extra_headers=deadline_header(self.settings.request_deadline)
            )
            return [m.id for m in listing]
        except openai.NotFoundError as err:
            raise RemoteEngineError(
                f"{self.base_url.rstrip('/')}/models answered HTTP 404: no OpenAI-compatible API there. "
                "base_url must be the API root, usually ending in /v1 (e.g. http://HOST:8000/v1)."
            ) from err
        except openai.OpenAIError as err:
            raise self.errors.translate(err) from err
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise RemoteEngineError(
                f"The server at {self.base_url} sent a malformed model list ({type(err).__name__}: {err})."
            ) from err

    # ----------------------------------------------------------------------------- generation
    def _one(self, request: GenerationRequest) -> Generation:
        import openai

        model = self.model_name(request.adapter)
        fields = self._fields(request)
        sent = request_input(request, self.settings.api)
        try:
            if self.settings.api == "chat":
                message = self.clients.llm().invoke(sent, model=model, **fields)
                text = message.text  # the text parts of a content list, not its repr
                usage = message.usage_metadata or {}
                prompt_tokens = usage.get("input_tokens", 0)
                completion_tokens = usage.get("output_tokens", 0)
                finish = message.response_metadata.get("finish_reason") or "stop"
            else:
                result = self.clients.llm().generate([sent], model=model, **fields)
                gen = result.generations[0][0]
                text = gen.text
                usage = (result.llm_output or {}).get("token_usage", {})
                prompt_tokens = usage.get("prompt_tokens", 0)
                completion_tokens = usage.get("completion_tokens", 0)
                finish = (gen.generation_info or {}).get("finish_reason") or "stop"
        except openai.OpenAIError as err:
            raise refused_constraint(
                self.errors.translate(err, model, request.stage), request, fields
            ) from err
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
            # langchain-openai lets these through for a 200 reply that is not a completion (a proxy's
            # HTML page, truncated JSON, no choices, no usage)
            raise self.errors.malformed(self.errors.where(model, request.stage), err) from err
        text, hit = cut_at_stop(text.lstrip(), request.config.stop)
        return Generation(
            text=text,
            prompt_tokens=int(prompt_tokens),
            completion_tokens=int(completion_tokens),
            finish_reason="stop" if hit else str(finish),
        )

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Send every request (up to ``max_concurrency`` at once; the server batches them), in order.

        Raises:
            ServerUnreachableError: If the server cannot be reached or times out after every retry.
            AdapterError: If the server does not serve a requested model name.
            PromptTooLongError: If the server refuses a prompt as too long for the model's context.
            RemoteEngineError: For any other HTTP error.
        """
        if len(requests) <= 1:
            return [self._one(r) for r in requests]
        workers = min(self.settings.max_concurrency, len(requests))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fslm-remote") as pool:
            return list(pool.map(self._one, requests))

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        """Yield the completion of one request as the server streams it (stops are cut client-side too).

        Text that could be the start of a stop sequence is held back until it is known not to be, so the
        pieces join to what :meth:`generate` returns. A stream that ends without a ``finish_reason`` (the
        connection closed early) raises instead of passing off a truncated text as complete.
        """
        import openai

        from langchain_fslm.engine.remote_transport import body_errors

        model = self.model_name(request.adapter)
        fields = self._fields(request)  # the deadline runs from the first read of the stream
        sent = request_input(request, self.settings.api)

        def pieces() -> Iterator[str]:
            if self.settings.api == "chat":
                chunks = self.clients.llm().stream(sent, model=model, **fields)
            else:  # GenerationChunks carry the finish_reason; OpenAI.stream() yields bare strings
                chunks = self.clients.llm()._stream(sent, model=model, **fields)
            finished, received = False, 0
            for chunk in chunks:
                info: Mapping[str, Any]
                if isinstance(chunk, str):
                    piece, info = chunk, {}
                elif hasattr(chunk, "generation_info"):  # completions: GenerationChunk
                    piece, info = chunk.text, chunk.generation_info or {}
                else:
                    piece, info = chunk.text, chunk.response_metadata or {}
                finished = finished or bool(info.get("finish_reason"))
                received += len(piece)
                yield piece
            if not finished:
                raise RemoteEngineError(
                    f"The stream from {self.errors.where(model, request.stage)} ended without a "
                    f"finish_reason after {received} characters: the connection was cut, so the text "
                    "is incomplete."
                )

        try:
            yield from stream_until_stop(pieces(), request.config.stop)
        except openai.OpenAIError as err:
            raise refused_constraint(
                self.errors.translate(err, model, request.stage), request, fields
            ) from err
        except body_errors() as err:  # the connection broke while the stream was read
            raise self.errors.broken(self.errors.where(model, request.stage), err) from err
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
            raise self.errors.malformed(self.errors.where(model, request.stage), err) from err


def check_sendable(constraint: OutputConstraint, server: str | None, stage: str | None = None) -> None:
    """Refuse a constraint kind ``server`` does not take (an unknown server gets none: nothing to refuse).

    Raises:
        ConstraintError: Naming the stage, the constraint and what the server takes.
    """
    if server not in CONSTRAINT_KINDS:
        return  # the stage's validator checks the text
    try:
        constraint_fields(constraint, server)
    except ValueError as err:
        where = f"stage {stage!r}: " if stage else ""
        raise ConstraintError(f"{where}{constraint.describe()} cannot be sent: {err}") from None


def refused_constraint(err: FSLMError, request: GenerationRequest, fields: dict[str, Any]) -> FSLMError:
    """A 400 for a request that sent a constraint is the server refusing it: say so, naming the stage."""
    sent = any(k in fields.get("extra_body", {}) for k in ("structured_outputs", "json_schema"))
    if request.constraint is None or not sent or "HTTP 400" not in str(err):
        return err
    where = f"stage {request.stage!r}: " if request.stage else ""
    return ConstraintError(f"{where}the server refused {request.constraint.describe()}: {err}")


def remote_engine_from(remote: RemoteEngine | RemoteSettings | Mapping[str, Any] | str | None) -> Engine:
    """An engine from what a caller passed as ``remote=``.

    See :func:`langchain_fslm.engine.registry.remote_engine_from`, which this calls.
    """
    from langchain_fslm.engine import registry  # the registry imports this module

    return registry.remote_engine_from(remote)


remote_engine = remote_engine_from
"""The former name of :func:`remote_engine_from`."""
