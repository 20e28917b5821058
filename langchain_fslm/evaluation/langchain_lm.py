"""lm-eval model type ``langchain``: any LangChain chat model, LLM or runnable, for generation tasks.

So one harness scores an API LLM, a local ChatHuggingFace model and an FSLM stack the same way::

    simple_evaluate(model="langchain", model_args="model=openai:gpt-4o-mini", tasks=["gsm8k"])
    simple_evaluate(model="langchain", model_args="model=base", tasks=[...])        # ChatHuggingFace
    simple_evaluate(model="langchain", model_args="model=runs/fslm-stack", tasks=[...])

``model`` takes a spec of :func:`~langchain_fslm.evaluation.specs.resolve_spec`. Only ``generate_until``
is supported: chat APIs expose no log-likelihoods (use model type ``fslm`` for those).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from langchain_fslm.engine.base import cut_at_stop

if TYPE_CHECKING:
    from langchain_core.runnables import Runnable
    from lm_eval.api.instance import Instance


def output_text(value: Any) -> str:
    """The text of whatever a LangChain model returned (a message, a str, a stack output)."""
    if isinstance(value, str):
        return value
    for attr in ("text", "output", "content"):
        got = getattr(value, attr, None)
        if isinstance(got, str):
            return got
    return str(value)


@register_model("langchain")
class LangChainLM(LM):  # type: ignore[misc]
    """Any LangChain model as an lm-eval language model (generation tasks only).

    Args:
        model: A model spec string, or a LangChain runnable taking a str.
        batch_size: Prompts per ``Runnable.batch`` call.
        max_gen_toks: Answer budget for the local models built from a spec.
    """

    def __init__(
        self,
        model: str | Runnable[Any, Any] = "base",
        batch_size: int | str = 4,
        max_gen_toks: int = 256,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        from langchain_fslm.evaluation.specs import resolve_spec

        self.model: Runnable[Any, Any] = (
            resolve_spec(model, max_new_tokens=int(max_gen_toks)).model if isinstance(model, str) else model
        )
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 4

    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """Not available: LangChain chat models expose no log-likelihoods."""
        raise NotImplementedError(
            "The 'langchain' model type only generates; use model type 'fslm' (or lm-eval's 'hf') for "
            "log-likelihood tasks, or pick generation tasks (e.g. gsm8k)."
        )

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """Not available (see :meth:`loglikelihood`)."""
        return self.loglikelihood(requests)  # type: ignore[return-value]

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Generate for each context and cut the text at the request's ``until`` strings."""
        outputs: list[str] = []
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="langchain generate", unit="request")
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            answers = self.model.batch([str(r.args[0]) for r in chunk])
            for request, answer in zip(chunk, answers, strict=True):
                until = (request.args[1] or {}).get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                outputs.append(cut_at_stop(output_text(answer), until)[0])
            bar.update(len(chunk))
        bar.close()
        return outputs


__all__ = ["LangChainLM", "output_text"]
