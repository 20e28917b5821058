"""Generation on an OpenAI-compatible server (vLLM, llama.cpp server) through langchain-openai.

A stage's adapter is chosen by *model name*, the way vLLM serves several LoRA adapters from one base
(``vllm serve BASE --enable-lora --lora-modules intent=PATH ...``): a stage with an adapter asks for the
model named after the adapter, an adapter-less stage asks for the base model's name.

langchain-openai (the ``remote`` extra) is imported only when a request is sent.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from langchain_fslm.engine.base import (
    Generation,
    GenerationConfig,
    GenerationRequest,
    cut_at_stop,
    stream_until_stop,
)
from langchain_fslm.errors import AdapterError, FSLMError, PromptTooLongError

ENV_BASE_URL = "FSLM_REMOTE_BASE_URL"
ENV_API_KEY = "FSLM_REMOTE_API_KEY"
ENV_MODEL = "FSLM_REMOTE_MODEL"


class RemoteEngineError(FSLMError):
    """The server answered with an error (the message names the URL, model and status)."""


class ServerUnreachableError(RemoteEngineError, ConnectionError):
    """No answer from the server (refused, DNS, or timed out after every retry); names the URL."""


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
        timeout: Seconds to wait for one HTTP request.
        max_retries: Retries on connection errors, timeouts, 408/409/429 and 5xx (with backoff).
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
    max_concurrency: int = Field(default=8, ge=1, le=256)
    adapter_models: dict[str, str] = Field(default_factory=dict)

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


def _payload(config: GenerationConfig, server: str | None = None) -> dict[str, Any]:
    """Request fields for a generation config.

    ``max_tokens`` also goes in the body as is (langchain-openai renames it ``max_completion_tokens``,
    which older servers ignore). The penalty goes under the server's name for it (both names when the
    server is not known), even at 1.0: servers have other defaults (llama-cpp-python's is 1.1, and vLLM
    takes the model's ``generation_config.json``), and the local engine always applies the stage's.
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
    if config.stop:
        fields["stop"] = list(config.stop)
    if config.seed is not None:
        fields["seed"] = config.seed
    return fields


class RemoteEngine:
    """An :class:`~langchain_fslm.engine.base.Engine` whose text comes from an OpenAI-compatible server.

    Args:
        settings: Server settings, or a ``base_url`` string.
        **kwargs: Other :class:`RemoteSettings` fields when ``settings`` is a string.

    Example:
        .. code-block:: python

            engine = RemoteEngine("http://127.0.0.1:8000/v1", model="HuggingFaceTB/SmolLM2-135M-Instruct")
            engine.generate([GenerationRequest(prompt="Hi", adapter="intent")])
    """

    def __init__(self, settings: RemoteSettings | str, **kwargs: Any) -> None:
        if isinstance(settings, str):
            settings = RemoteSettings(base_url=settings, **kwargs)
        elif kwargs:
            settings = settings.model_copy(update=kwargs)
        self.settings = settings
        self.adapter_paths: dict[str, str] = {}
        self._client: Any = None
        self._openai_client: Any = None
        self._base_model: str | None = settings.model
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"RemoteEngine(base_url={self.settings.base_url!r}, api={self.settings.api!r})"

    @property
    def base_url(self) -> str:
        """The server's API root."""
        return self.settings.base_url

    # ----------------------------------------------------------------------------- adapters
    def load_adapter(self, name: str, path: str | Path) -> None:
        """Register the local copy of an adapter the server serves as model ``name``.

        The server loads its own copy (``--lora-modules name=PATH``); the local one is kept so the stack
        can be saved again.

        Raises:
            AdapterError: If the adapter files are missing.
        """
        path = Path(path)
        for required in ("adapter_config.json", "adapter_model.safetensors"):
            if not (path / required).is_file():
                raise AdapterError(f"Adapter {name!r}: {path / required} is missing.")
        known = self.adapter_paths.get(name)
        if known is not None and not _same_adapter(Path(known), path):
            # the server serves one model per name: two stacks cannot both call theirs 'intent'
            raise AdapterError(
                f"Adapter {name!r}: {self!r} already serves model {name!r} from {known}, and {path} holds "
                "a different adapter. Use one RemoteEngine (and one server) per stack, or map the names "
                "apart with adapter_models."
            )
        self.adapter_paths[name] = str(path)

    def has_adapter(self, name: str) -> bool:
        """Whether an adapter of that name was registered (the server is not asked)."""
        return name in self.adapter_paths

    def save_adapter(self, name: str, folder: str | Path) -> None:
        """Copy a registered adapter's files to ``folder``."""
        if name not in self.adapter_paths:
            raise AdapterError(f"No adapter named {name!r} is registered with {self!r}.")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for file in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copyfile(Path(self.adapter_paths[name]) / file, folder / file)

    def model_name(self, adapter: str | None) -> str:
        """The served model name a request with this adapter asks for."""
        if adapter is not None:
            return self.settings.adapter_models.get(adapter, adapter)
        if self._base_model is None:
            served = self.served_models()
            if not served:
                raise RemoteEngineError(f"The server at {self.base_url} lists no models.")
            self._base_model = served[0]
        return self._base_model

    # ----------------------------------------------------------------------------- server
    def _openai(self) -> Any:
        """The ``openai.OpenAI`` client, built once: model listing and every request share its connections."""
        with self._lock:
            if self._openai_client is None:
                import openai

                self._openai_client = openai.OpenAI(
                    base_url=self.base_url,
                    api_key=self.settings.api_key,
                    timeout=self.settings.timeout,
                    max_retries=self.settings.max_retries,
                )
            return self._openai_client

    def _llm(self) -> Any:
        """The langchain-openai model object (``ChatOpenAI`` or ``OpenAI``) on :meth:`_openai`, built once."""
        with self._lock:
            if self._client is None:
                try:
                    from langchain_openai import ChatOpenAI, OpenAI
                except ImportError as err:  # pragma: no cover - depends on the install
                    raise RemoteEngineError(
                        "The remote backend needs langchain-openai: pip install 'langchain-fslm[remote]'"
                    ) from err
                root = self._openai()
                settings: dict[str, Any] = {
                    "base_url": self.base_url,
                    "api_key": self.settings.api_key,
                    "model": self.settings.model or "default",
                    "timeout": self.settings.timeout,
                    "max_retries": self.settings.max_retries,
                }
                if self.settings.api == "chat":
                    self._client = ChatOpenAI(**settings, root_client=root, client=root.chat.completions)
                else:
                    self._client = OpenAI(**settings, client=root.completions)
            return self._client

    def served_models(self) -> list[str]:
        """Model names the server lists under ``/models`` (base model and LoRA modules)."""
        import openai

        try:
            return [m.id for m in self._openai().models.list()]
        except openai.NotFoundError as err:
            raise RemoteEngineError(
                f"{self.base_url.rstrip('/')}/models answered HTTP 404: no OpenAI-compatible API there. "
                "base_url must be the API root, usually ending in /v1 (e.g. http://HOST:8000/v1)."
            ) from err
        except openai.OpenAIError as err:
            raise self._translate(err) from err
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise RemoteEngineError(
                f"The server at {self.base_url} sent a malformed model list ({type(err).__name__}: {err})."
            ) from err

    def _where(self, model: str | None = None, stage: str | None = None) -> str:
        """The URL, with the stage and model a request was for, for error messages."""
        about = ", ".join(f"{k} {v!r}" for k, v in (("stage", stage), ("model", model)) if v is not None)
        return f"{self.base_url} ({about})" if about else self.base_url

    def _not_served(self, err: Exception, model: str, stage: str | None) -> FSLMError:
        """A 404 for a request: the model is not served, or base_url is not the API root."""
        try:
            served = self.served_models()
        except RemoteEngineError as listing:
            return listing
        if model in served:  # the model exists: the 404 is about something else
            return RemoteEngineError(f"The server at {self._where(model, stage)} answered HTTP 404: {err}")
        return AdapterError(
            f"The server at {self._where(stage=stage)} does not serve model {model!r} (it serves {served}). "
            "Serve each stage's adapter under the stage's name (see `fslm export vllm STACK`)."
        )

    def _translate(self, err: Exception, model: str | None = None, stage: str | None = None) -> FSLMError:
        import openai

        where = self._where(model, stage)
        if isinstance(err, openai.APITimeoutError):
            return ServerUnreachableError(
                f"The server at {where} did not answer within {self.settings.timeout:g}s "
                f"({self.settings.max_retries} retries)."
            )
        if isinstance(err, openai.APIConnectionError):
            return ServerUnreachableError(
                f"Cannot reach the server at {where} after {self.settings.max_retries} retries: "
                f"{err.__cause__ or err}. Is it running?"
            )
        if isinstance(err, openai.NotFoundError) and model is not None:
            return self._not_served(err, model, stage)
        if isinstance(err, openai.BadRequestError) and any(
            s in err.message.lower() for s in CONTEXT_LENGTH_ERRORS
        ):
            # no stage here: the stage adds "Stage 'x': " to this error, as to the local engine's
            where = self._where(model)
            return PromptTooLongError(f"The server at {where} refused the prompt as too long: {err.message}")
        if isinstance(err, openai.APIStatusError):
            return RemoteEngineError(f"The server at {where} answered HTTP {err.status_code}: {err.message}")
        return RemoteEngineError(f"Request to the server at {where} failed: {err}")

    # ----------------------------------------------------------------------------- generation
    def _messages(self, request: GenerationRequest) -> Any:
        """Chat messages, or for ``completions`` the text ``LocalEngine.render`` gives without a template."""
        if self.settings.api == "completions":
            return f"{request.system}\n\n{request.prompt}" if request.system else request.prompt
        messages = [("system", request.system)] if request.system else []
        return [*messages, ("human", request.prompt)]

    def _one(self, request: GenerationRequest) -> Generation:
        import openai

        model = self.model_name(request.adapter)
        fields = _payload(request.config, self.settings.server)
        try:
            if self.settings.api == "chat":
                message = self._llm().invoke(self._messages(request), model=model, **fields)
                text = str(message.content)
                usage = message.usage_metadata or {}
                prompt_tokens = usage.get("input_tokens", 0)
                completion_tokens = usage.get("output_tokens", 0)
                finish = message.response_metadata.get("finish_reason") or "stop"
            else:
                result = self._llm().generate([self._messages(request)], model=model, **fields)
                gen = result.generations[0][0]
                text = gen.text
                usage = (result.llm_output or {}).get("token_usage", {})
                prompt_tokens = usage.get("prompt_tokens", 0)
                completion_tokens = usage.get("completion_tokens", 0)
                finish = (gen.generation_info or {}).get("finish_reason") or "stop"
        except openai.OpenAIError as err:
            raise self._translate(err, model, request.stage) from err
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
            # langchain-openai lets these through for a 200 reply that is not a completion (a proxy's
            # HTML page, truncated JSON, no choices, no usage)
            raise _malformed(self._where(model, request.stage), err) from err
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

        model = self.model_name(request.adapter)
        fields = _payload(request.config, self.settings.server)

        def pieces() -> Iterator[str]:
            if self.settings.api == "chat":
                chunks = self._llm().stream(self._messages(request), model=model, **fields)
            else:  # GenerationChunks carry the finish_reason; OpenAI.stream() yields bare strings
                chunks = self._llm()._stream(self._messages(request), model=model, **fields)
            finished, received = False, 0
            for chunk in chunks:
                info: Mapping[str, Any]
                if isinstance(chunk, str):
                    piece, info = chunk, {}
                elif hasattr(chunk, "generation_info"):  # completions: GenerationChunk
                    piece, info = chunk.text, chunk.generation_info or {}
                else:
                    piece, info = str(chunk.content), chunk.response_metadata or {}
                finished = finished or bool(info.get("finish_reason"))
                received += len(piece)
                yield piece
            if not finished:
                raise RemoteEngineError(
                    f"The stream from {self._where(model, request.stage)} ended without a finish_reason "
                    f"after {received} characters: the connection was cut, so the text is incomplete."
                )

        try:
            yield from stream_until_stop(pieces(), request.config.stop)
        except openai.OpenAIError as err:
            raise self._translate(err, model, request.stage) from err
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
            raise _malformed(self._where(model, request.stage), err) from err


def _malformed(where: str, err: Exception) -> RemoteEngineError:
    return RemoteEngineError(
        f"The server at {where} sent a reply that is not an OpenAI-compatible "
        f"completion ({type(err).__name__}: {str(err)[:200]})."
    )


def _same_adapter(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    files = ("adapter_config.json", "adapter_model.safetensors")
    return all(filecmp.cmp(a / f, b / f, shallow=False) for f in files)


def remote_engine(remote: RemoteEngine | RemoteSettings | Mapping[str, Any] | str | None) -> RemoteEngine:
    """An engine from what a caller passed as ``remote=`` (None: read the environment).

    Args:
        remote: An engine (returned as is), settings, a settings mapping, or a base URL.
    """
    if isinstance(remote, RemoteEngine):
        return remote
    if isinstance(remote, RemoteSettings):
        return RemoteEngine(remote)
    if isinstance(remote, str):
        return RemoteEngine(RemoteSettings.from_env(base_url=remote))
    return RemoteEngine(RemoteSettings.from_env(**dict(remote or {})))
