"""Talking to an OpenAI-compatible server: its settings, the request fields, and its errors in our words.

Everything here is about HTTP and the server, nothing about stages or adapters, so the
:class:`~langchain_fslm.engine.remote.RemoteEngine` reads as the engine contract alone.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from langchain_fslm.engine.base import GenerationConfig, GenerationRequest
from langchain_fslm.engine.constraint import OutputConstraint
from langchain_fslm.errors import AdapterError, FSLMError, PromptTooLongError

ENV_BASE_URL = "FSLM_REMOTE_BASE_URL"
ENV_API_KEY = "FSLM_REMOTE_API_KEY"
ENV_MODEL = "FSLM_REMOTE_MODEL"


class RemoteEngineError(FSLMError):
    """The server answered with an error (the message names the URL, model and status)."""


class ServerUnreachableError(RemoteEngineError, ConnectionError):
    """No answer from the server (refused, DNS, or timed out after every retry); names the URL."""


class ServerTimeoutError(ServerUnreachableError, TimeoutError):
    """A request did not finish within its deadline (:attr:`RemoteSettings.request_deadline`).

    The message says whether the server sent nothing or was still sending (a slow or stalled server).
    """


class ServerRateLimitedError(RemoteEngineError):
    """The server refused with HTTP 429 (or 503) and asked to retry later than the deadline allows.

    Attributes:
        retry_after: Seconds the server asked to wait (None when it named none).
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


CONTEXT_LENGTH_ERRORS = (
    "maximum context length",
    "context_length_exceeded",
    "context size",
    "maximum model length",
)
"""How servers word an HTTP 400 for a prompt too long for the model (vLLM, OpenAI and llama-cpp-python say
"maximum context length", llama.cpp's llama-server "exceeds the available context size", vLLM's V1 engine
"longer than the maximum model length")."""


class RemoteSettings(BaseModel):
    """Where and how to reach an OpenAI-compatible server.

    Attributes:
        base_url: The API root, e.g. ``http://127.0.0.1:8000/v1``.
        api_key: Sent as a bearer token (vLLM ``--api-key``); local servers accept any value.
        model: The base model's served name, used by adapter-less stages. None: the first model the
            server lists under ``/models`` (vLLM lists the base first, then the LoRA modules).
        api: ``chat`` (the server applies the model's chat template) or ``completions`` (plain text, no
            template: the system message, a blank line, the prompt; what the local engine feeds a model
            without a chat template, so only for such models).
        server: ``vllm`` or ``llamacpp``: which server it is, so the repetition penalty goes only under
            the name that server reads. None: under both (the other server ignores, or logs, the field).
        timeout: Seconds each network step may take: connecting, and each read of the reply (httpx's
            timeouts). A server that keeps sending, however slowly, never trips it: ``deadline`` does.
        max_retries: Retries on connection errors, timeouts, 408/409/429 and 5xx (with backoff, or the
            server's ``Retry-After``).
        deadline: Seconds one request may take in all: every attempt, the pauses between them and, for
            a stream, the whole stream. None: ``timeout * (max_retries + 1)``. Past it the request
            ends with :class:`ServerTimeoutError`; a ``Retry-After`` longer than the time left ends it at
            once with :class:`ServerRateLimitedError`. Raise it for long generations.
        max_concurrency: Requests in flight at once when a stage runs a batch.
        adapter_models: Adapter name -> served model name, where they differ (default: the same).
    """

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(min_length=1)
    api_key: str = "EMPTY"
    model: str | None = None
    api: Literal["chat", "completions"] = "chat"
    server: Literal["vllm", "llamacpp"] | None = None
    timeout: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    deadline: float | None = Field(default=None, gt=0)
    max_concurrency: int = Field(default=8, ge=1, le=256)
    adapter_models: dict[str, str] = Field(default_factory=dict)

    @property
    def request_deadline(self) -> float:
        """Seconds one request may take in all: ``deadline``, else ``timeout * (max_retries + 1)``."""
        return self.deadline if self.deadline is not None else self.timeout * (self.max_retries + 1)

    @classmethod
    def from_env(cls, **overrides: Any) -> RemoteSettings:
        """Settings from ``FSLM_REMOTE_BASE_URL`` / ``FSLM_REMOTE_API_KEY`` / ``FSLM_REMOTE_MODEL``.

        Raises:
            RemoteEngineError: If no base URL is given either way.
        """
        values: dict[str, Any] = {
            "base_url": os.environ.get(ENV_BASE_URL),
            "api_key": os.environ.get(ENV_API_KEY),
            "model": os.environ.get(ENV_MODEL),
        }
        values = {k: v for k, v in values.items() if v} | dict(overrides)
        if not values.get("base_url"):
            raise RemoteEngineError(
                f"A remote backend needs a server: pass remote={{'base_url': 'http://HOST:PORT/v1'}} "
                f"or set {ENV_BASE_URL}."
            )
        return cls.model_validate(values)


PENALTY_FIELDS = {"vllm": ("repetition_penalty",), "llamacpp": ("repeat_penalty",)}
"""The repetition penalty's request field per server (neither is in the OpenAI API)."""


def payload(
    config: GenerationConfig, server: str | None = None, constraint: OutputConstraint | None = None
) -> dict[str, Any]:
    """Request fields for a generation config.

    ``max_tokens`` also goes in the body as is (langchain-openai renames it ``max_completion_tokens``,
    which older servers ignore). The penalty goes under the server's name for it (both names when the
    server is not known), even at 1.0: servers have other defaults (llama-cpp-python's is 1.1, and vLLM
    takes the model's ``generation_config.json``), and the local engine always applies the stage's. A
    constraint goes in the server's own field (:func:`constraint_fields`).
    """
    names = PENALTY_FIELDS.get(server or "", ("repetition_penalty", "repeat_penalty"))
    extra: dict[str, Any] = {"max_tokens": config.max_new_tokens}
    extra |= dict.fromkeys(names, config.repetition_penalty)
    fields: dict[str, Any] = {
        "max_tokens": config.max_new_tokens,
        "temperature": config.temperature,
        "top_p": config.top_p if config.temperature > 0 else 1.0,
        "extra_body": extra,
    }
    if constraint is not None:
        extra |= constraint_fields(constraint, server)
    if config.stop:
        fields["stop"] = list(config.stop)
    if config.seed is not None:
        fields["seed"] = config.seed
    return fields


CONSTRAINT_KINDS = {"vllm": ("json_schema", "regex", "lark"), "llamacpp": ("json_schema",)}
"""The constraint kinds each server takes: vLLM's ``structured_outputs`` (json / regex / grammar; the old
``guided_*`` fields were removed in vLLM 0.12) and llama.cpp server's ``json_schema`` (its ``grammar`` is
GBNF, which regexes and lark grammars are not)."""


def constraint_fields(constraint: OutputConstraint, server: str | None) -> dict[str, Any]:
    """The request body fields that send ``constraint`` to ``server`` (``vllm`` or ``llamacpp``).

    Raises:
        ValueError: For a kind the server does not take (see :data:`CONSTRAINT_KINDS`).
    """
    kinds = CONSTRAINT_KINDS.get(server or "", ())
    if constraint.kind not in kinds:
        takes = ", ".join(kinds) or "no constraints"
        raise ValueError(
            f"the {server or 'unknown'} server takes {takes}, not a {constraint.kind} constraint"
        )
    if server == "llamacpp":
        return {"json_schema": constraint.json_schema()}
    key = {"json_schema": "json", "regex": "regex", "lark": "grammar"}[constraint.kind]
    value: Any = constraint.json_schema() if constraint.kind == "json_schema" else constraint.value
    return {"structured_outputs": {key: value}}


def request_input(request: GenerationRequest, api: str) -> Any:
    """Chat messages, or for ``completions`` the text ``LocalEngine.render`` gives without a template.

    Control-token-shaped strings stay text (the server's tokenizer would read them as control tokens).
    """
    from langchain_fslm.engine.prompt_fit import as_plain_text_anywhere

    system = as_plain_text_anywhere(request.system) if request.system else None
    prompt = as_plain_text_anywhere(request.prompt)
    request = request.model_copy(update={"system": system, "prompt": prompt})
    if api == "completions":
        return f"{request.system}\n\n{request.prompt}" if request.system else request.prompt
    messages = [("system", request.system)] if request.system else []
    return [*messages, ("human", request.prompt)]


class ServerClients:
    """The clients of one server, built on first use and shared by every request (and their connections).

    Args:
        settings: The server settings.
    """

    def __init__(self, settings: RemoteSettings) -> None:
        self.settings = settings
        self._openai: Any = None
        self._llm: Any = None
        self._lock = threading.RLock()  # llm() builds openai() under it

    def openai(self) -> Any:
        """The ``openai.OpenAI`` client, built once: model listing and every request share its connections."""
        with self._lock:
            if self._openai is None:
                import openai

                from langchain_fslm.engine.remote_transport import http_client

                self._openai = openai.OpenAI(
                    base_url=self.settings.base_url,
                    api_key=self.settings.api_key,
                    timeout=self.settings.timeout,
                    max_retries=self.settings.max_retries,
                    http_client=http_client(self.settings.timeout, self.settings.request_deadline),
                )
            return self._openai

    def llm(self) -> Any:
        """The langchain-openai model object (``ChatOpenAI`` or ``OpenAI``) on :meth:`openai`, built once."""
        with self._lock:
            if self._llm is None:
                try:
                    from langchain_openai import ChatOpenAI, OpenAI
                except ImportError as err:  # pragma: no cover - depends on the install
                    raise RemoteEngineError(
                        "The remote backend needs langchain-openai: pip install 'langchain-fslm[remote]'"
                    ) from err
                root = self.openai()
                settings: dict[str, Any] = {
                    "base_url": self.settings.base_url,
                    "api_key": self.settings.api_key,
                    "model": self.settings.model or "default",
                    "timeout": self.settings.timeout,
                    "max_retries": self.settings.max_retries,
                }
                if self.settings.api == "chat":
                    self._llm = ChatOpenAI(**settings, root_client=root, client=root.chat.completions)
                else:
                    self._llm = OpenAI(**settings, client=root.completions)
            return self._llm


class ServerErrors:
    """Turns the openai client's exceptions into FSLM errors that name the URL, stage and model.

    Args:
        settings: The server settings (URL, timeout and retries, for the messages).
        served_models: Lists the server's models; asked only to explain an HTTP 404.
    """

    def __init__(self, settings: RemoteSettings, served_models: Callable[[], list[str]]) -> None:
        self.settings = settings
        self.served_models = served_models

    @property
    def base_url(self) -> str:
        """The server's API root."""
        return self.settings.base_url

    def where(self, model: str | None = None, stage: str | None = None) -> str:
        """The URL, with the stage and model a request was for, for error messages."""
        about = ", ".join(f"{k} {v!r}" for k, v in (("stage", stage), ("model", model)) if v is not None)
        return f"{self.base_url} ({about})" if about else self.base_url

    def not_served(self, err: Exception, model: str, stage: str | None) -> FSLMError:
        """A 404 for a request: the model is not served, or base_url is not the API root."""
        try:
            served = self.served_models()
        except RemoteEngineError as listing:
            return listing
        if model in served:  # the model exists: the 404 is about something else
            return RemoteEngineError(f"The server at {self.where(model, stage)} answered HTTP 404: {err}")
        return AdapterError(
            f"The server at {self.where(stage=stage)} does not serve model {model!r} (it serves {served}). "
            "Serve each stage's adapter under the stage's name (see `fslm export vllm STACK`)."
        )

    def translate(self, err: Exception, model: str | None = None, stage: str | None = None) -> FSLMError:
        """The FSLM error for an ``openai.OpenAIError`` raised by a request for ``model``."""
        import openai

        where = self.where(model, stage)
        timed = self._timing(err, where)
        if timed is not None:
            return timed
        if isinstance(err, openai.APIConnectionError):
            return self._connection(err, where)
        if isinstance(err, openai.NotFoundError) and model is not None:
            return self.not_served(err, model, stage)
        if isinstance(err, openai.BadRequestError) and any(
            s in err.message.lower() for s in CONTEXT_LENGTH_ERRORS
        ):
            # no stage here: the stage adds "Stage 'x': " to this error, as to the local engine's
            where = self.where(model)
            return PromptTooLongError(f"The server at {where} refused the prompt as too long: {err.message}")
        if isinstance(err, openai.APIStatusError) and err.status_code == 429:
            from langchain_fslm.engine.remote_transport import retry_after

            wait = retry_after(err.response.headers)
            asked = f", asking to retry after {wait:g}s" if wait is not None else ""
            return ServerRateLimitedError(
                f"The server at {where} is rate limiting this client (HTTP 429{asked}) after "
                f"{self.settings.max_retries} retries: {err.message}",
                wait,
            )
        if isinstance(err, openai.APIStatusError):
            return RemoteEngineError(f"The server at {where} answered HTTP {err.status_code}: {err.message}")
        return RemoteEngineError(f"Request to the server at {where} failed: {err}")

    def _timing(self, err: Exception, where: str) -> FSLMError | None:
        """The error for a request that ran out of time, or None when ``err`` is not about time."""
        import openai

        from langchain_fslm.engine.remote_transport import DeadlineExceeded, RetryAfterTooLong

        s = self.settings
        if isinstance(err, DeadlineExceeded):
            if err.received:
                return ServerTimeoutError(
                    f"The server at {where} was still sending its reply when the request's deadline of "
                    f"{err.deadline_s:g}s passed ({err.received} bytes received, attempt {err.attempts}): "
                    "a slow or stalled server (a stream of keep-alives alone counts as one). Raise "
                    "RemoteSettings.deadline for long generations."
                )
            return ServerTimeoutError(
                f"The server at {where} did not answer within {err.deadline_s:g}s (the request's "
                f"deadline; {err.attempts} attempt(s), timeout {s.timeout:g}s each)."
            )
        if isinstance(err, RetryAfterTooLong):
            what = "is rate limiting this client" if err.status == 429 else "is overloaded"
            return ServerRateLimitedError(
                f"The server at {where} {what} (HTTP {err.status}) and asks to retry after "
                f"{err.retry_after:g}s, beyond the {err.left:.1f}s left of the request's deadline of "
                f"{s.request_deadline:g}s: retry later, or raise RemoteSettings.deadline.",
                err.retry_after,
            )
        if isinstance(err, openai.APITimeoutError):
            causes = [err.__cause__, getattr(err.__cause__, "__cause__", None)]
            if "ConnectTimeout" in {type(c).__name__ for c in causes}:
                return ServerTimeoutError(
                    f"Could not connect to the server at {where} within {s.timeout:g}s "
                    f"({s.max_retries} retries). Is it running, and is the address right?"
                )
            return ServerTimeoutError(
                f"The server at {where} accepted the connection but did not answer within "
                f"{s.timeout:g}s ({s.max_retries} retries)."
            )
        return None

    def _connection(self, err: Exception, where: str) -> FSLMError:
        """The error for a connection that failed: refused, redirected in a loop, or closed mid-reply."""
        cause = err.__cause__
        while cause is not None and type(cause).__module__.startswith(("openai", "langchain_openai")):
            cause = cause.__cause__  # langchain-openai re-raises openai's error, whose cause is httpx's
        kind = type(cause).__name__
        retries = self.settings.max_retries
        if kind == "TooManyRedirects":
            return RemoteEngineError(
                f"The server at {where} redirected the request too many times (a redirect loop): {cause}. "
                "Check base_url (the API root, e.g. http://HOST:8000/v1) and any proxy in front."
            )
        if kind in ("RemoteProtocolError", "ReadError"):
            return self.broken(where, cause or err, retries)
        if kind in ("ConnectError", "ConnectionRefusedError", "OSError", "NoneType"):
            return ServerUnreachableError(
                f"Cannot reach the server at {where} after {retries} retries: {cause or err}. Is it running?"
            )
        return ServerUnreachableError(
            f"Request to the server at {where} failed after {retries} retries: {cause}"
        )

    def broken(self, where: str, err: BaseException, retries: int = 0) -> RemoteEngineError:
        """A connection the server closed in the middle of its reply."""
        after = f" (after {retries} retries)" if retries else ""
        return RemoteEngineError(
            f"The server at {where} closed the connection in the middle of its reply{after}: {err}. "
            "It may have crashed or been restarted, or a proxy cut the request."
        )

    def malformed(self, where: str, err: Exception) -> RemoteEngineError:
        """A 200 reply that is not an OpenAI-compatible completion (a proxy's HTML page, cut JSON)."""
        return RemoteEngineError(
            f"The server at {where} sent a reply that is not an OpenAI-compatible "
            f"completion ({type(err).__name__}: {str(err)[:200]})."
        )
