"""Typed handoffs under grammar-constrained decoding, on the embedded SmolLM2-135M default, in one run.

    HF_HUB_OFFLINE=1 nice -n 10 python benchmarks/typed_handoffs.py [--heldout 200] [--skip-heldout]

1. Parse validity: the held-out Alpaca requests (the seeded 200 of ``fslm heldout``) through the default
   stack's upstream stages (intent, key_points), constrained and unconstrained (``constrained=False``):
   how many outputs are of their type, and how many kept their role by a simple documented check (intent:
   one sentence that does not open with the answer's words "Yes"/"No"/a number and repeats at least one
   content word of the request; key_points: 2-4 bullets, none a copy of the intent).
2. Structured output: 20 extraction sentences of our own (name / age / city) through
   ``ChatFSLM(stack=FSLMChain.default()).with_structured_output(Person)``, constrained and unconstrained,
   and the bare base model asked for the same JSON: valid objects and exactly right values.
3. Tool calls: 10 requests that need one of 3 tools, ``bind_tools(..., tool_choice="any")``: valid calls to
   the right tool, and with the right main argument.
4. Cost: decode tokens/s under a grammar vs free on the same prompts and token counts, and grammar compile
   time (cold and cached). ``--only cost`` reruns one part and keeps the others from the last result;
   ``--only heldout --heldout-modes constrained`` reruns one held-out mode and keeps the other (dated).

Writes ``benchmarks/results/typed_handoffs.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR, machine, report  # noqa: E402

PEOPLE = [
    ("Maria Lopez", 34, "Madrid"),
    ("John Smith", 52, "Boston"),
    ("Aiko Tanaka", 27, "Osaka"),
    ("Peter Novak", 45, "Prague"),
    ("Fatima Khan", 19, "Lahore"),
    ("Lars Berg", 63, "Oslo"),
    ("Chen Wei", 38, "Shanghai"),
    ("Anna Rossi", 29, "Rome"),
    ("David Cohen", 71, "Haifa"),
    ("Sofia Ivanova", 41, "Sofia"),
    ("Tom Baker", 23, "Leeds"),
    ("Nadia Haddad", 56, "Beirut"),
    ("Carlos Silva", 31, "Lisbon"),
    ("Emma Wilson", 48, "Sydney"),
    ("Omar Farouk", 36, "Cairo"),
    ("Julia Weber", 25, "Vienna"),
    ("Ravi Patel", 60, "Mumbai"),
    ("Grace Kim", 33, "Seoul"),
    ("Mehmet Yilmaz", 44, "Ankara"),
    ("Ingrid Olsen", 58, "Bergen"),
]
TEMPLATES = [
    "{name} is {age} years old and lives in {city}.",
    "Meet {name}, a {age}-year-old from {city}.",
    "Living in {city}, {name} turned {age} this year.",
    "{name} ({age}) moved to {city} last spring.",
]
TOOL_REQUESTS = [
    ("What's the weather in Paris right now?", "get_weather", "Paris"),
    ("Is it raining in Tokyo?", "get_weather", "Tokyo"),
    ("How warm is it in Cairo today?", "get_weather", "Cairo"),
    ("What is 17 times 23?", "calculate", "17"),
    ("Compute 144 divided by 12.", "calculate", "144"),
    ("Add 45 and 78 for me.", "calculate", "45"),
    ("Convert 10 euros to dollars.", "convert_currency", "10"),
    ("How many yen is 50 dollars?", "convert_currency", "50"),
    ("What is the temperature in Berlin?", "get_weather", "Berlin"),
    ("Change 200 pounds into euros.", "convert_currency", "200"),
]
_WORD = re.compile(r"[a-z]{4,}")
_STOP = {"what", "which", "with", "that", "this", "from", "have", "your", "about", "give", "write", "please"}


def content_words(text: str) -> set[str]:
    """Lower-case words of four or more letters, without common function words."""
    return set(_WORD.findall(text.lower())) - _STOP


def intent_keeps_role(intent: str, request: str) -> bool:
    """One sentence about the request: shares a content word with it and does not open like an answer."""
    opens_like_answer = bool(re.match(r"(yes|no|sure|\d)", intent.strip().lower()))
    return bool(content_words(intent) & content_words(request)) and not opens_like_answer


def points_keep_role(points: list[str], intent: str) -> bool:
    """Two to four points, none of them the intent again."""
    return 2 <= len(points) <= 4 and all(p.strip(" .").lower() != intent.strip(" .").lower() for p in points)


def heldout(n: int, modes: list[str], kept: dict[str, Any] | None = None) -> dict[str, Any]:
    """Parse validity and role keeping of the upstream stages, constrained and free (``modes``).

    The modes not run are kept from ``kept`` (the last result's held-out part), with its date.
    """
    from langchain_fslm import FSLMChain
    from langchain_fslm.models import shared_dir
    from langchain_fslm.roles import four_stage_specs
    from langchain_fslm.training.data import load_alpaca, request_text, split_heldout

    rows = load_alpaca(shared_dir() / "data" / "alpaca" / "alpaca_5000.json")
    requests = [request_text(r) for r in split_heldout(rows, n_heldout=n)[1]]
    out: dict[str, Any] = {"n": len(requests)}
    out["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for label, constrained in (("constrained", True), ("free", False)):
        if label not in modes:
            if kept and label in kept:
                out[label] = {**kept[label], "kept_from": kept[label].get("kept_from", kept.get("date"))}
            continue
        specs = [s.model_copy(update={"constrained": constrained}) for s in four_stage_specs()[:2]]
        specs[1] = specs[1].model_copy(update={"prompt": specs[1].prompt})
        stack = FSLMChain.from_specs(specs).with_handoffs()
        start = time.perf_counter()
        results = stack.batch(requests)
        wall = time.perf_counter() - start
        counts = {"intent_valid": 0, "key_points_valid": 0, "intent_role": 0, "key_points_role": 0}
        for request, result in zip(requests, results, strict=True):
            intent, points = result.results[0], result.results[1]
            counts["intent_valid"] += intent.value is not None
            counts["key_points_valid"] += points.value is not None
            counts["intent_role"] += intent.value is not None and intent_keeps_role(intent.text, request)
            counts["key_points_role"] += points.value is not None and points_keep_role(
                getattr(points.value, "points", []), intent.text
            )
        engine = type(stack.stages[0].engine).__name__
        out[label] = {
            **counts,
            "wall_s": round(wall, 1),
            "engine": engine,
            "example": results[0].results[1].raw,
        }
    return out


def structured() -> dict[str, Any]:
    """20 extractions: constrained stack, free stack, bare base model with the same JSON instruction."""
    from pydantic import BaseModel, ConfigDict, Field

    from langchain_fslm import ChatFSLM, FSLMChain, SmallLM
    from langchain_fslm.schemas import parse_json

    class Person(BaseModel):  # noqa: D101 - the benchmark's schema
        model_config = ConfigDict(extra="forbid")
        name: str = Field(max_length=40, description="full name")
        age: int = Field(ge=0, le=130)
        city: str = Field(max_length=40)

    texts = [
        TEMPLATES[i % len(TEMPLATES)].format(name=n, age=a, city=c) for i, (n, a, c) in enumerate(PEOPLE)
    ]
    prompts = [f"Extract the person's name, age and city from this sentence: {t}" for t in texts]
    truth = [{"name": n, "age": a, "city": c} for n, a, c in PEOPLE]
    out: dict[str, Any] = {"n": len(texts)}
    stack = FSLMChain.default()
    free_stack = stack.with_stage("answer", constrained=False)
    for label, chat_stack in (("constrained_stack", stack), ("free_stack", free_stack)):
        chat = ChatFSLM(stack=chat_stack, max_tokens=48).with_structured_output(Person, include_raw=True)
        start = time.perf_counter()
        replies = chat.batch(prompts)
        out[label] = _score([r["parsed"].model_dump() if r["parsed"] else None for r in replies], truth)
        out[label]["wall_s"] = round(time.perf_counter() - start, 1)
    base = SmallLM(engine=stack.stages[0].engine).bind(max_tokens=48)
    instruction = 'Reply with JSON only, in this form: {"name": <string>, "age": <integer>, "city": <string>}'
    start = time.perf_counter()
    raw = [m.text for m in base.batch([f"{p}\n{instruction}" for p in prompts])]
    parsed: list[dict[str, Any] | None] = []
    for text in raw:
        try:
            parsed.append(Person.model_validate(parse_json(text)).model_dump())
        except ValueError:
            parsed.append(None)
    out["base_model"] = {**_score(parsed, truth), "wall_s": round(time.perf_counter() - start, 1)}
    return out


def _score(parsed: list[dict[str, Any] | None], truth: list[dict[str, Any]]) -> dict[str, Any]:
    valid = sum(p is not None for p in parsed)
    right = sum(p == t for p, t in zip(parsed, truth, strict=True))
    fields = sum(p is not None and p.get(k) == t[k] for p, t in zip(parsed, truth, strict=True) for k in t)
    return {"valid": valid, "all_right": right, "fields_right": fields, "fields": 3 * len(truth)}


def tools() -> dict[str, Any]:
    """10 requests, 3 tools, tool_choice='any': valid calls, right tool, right main argument."""
    from langchain_core.tools import tool

    from langchain_fslm import ChatFSLM, FSLMChain

    @tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        return "sunny"

    @tool
    def calculate(expression: str) -> str:
        """Evaluate an arithmetic expression, e.g. '17 * 23'."""
        return "0"

    @tool
    def convert_currency(amount: float, source: str, target: str) -> str:
        """Convert an amount of money from one currency (e.g. EUR) to another."""
        return "0"

    chat = ChatFSLM(stack=FSLMChain.default(), max_tokens=48).bind_tools(
        [get_weather, calculate, convert_currency], tool_choice="any"
    )
    start = time.perf_counter()
    replies = chat.batch([q for q, _, _ in TOOL_REQUESTS])
    valid = right_tool = right_arg = 0
    calls = []
    for (_, name, arg), reply in zip(TOOL_REQUESTS, replies, strict=True):
        call = reply.tool_calls[0] if reply.tool_calls else None
        calls.append(call and {"name": call["name"], "args": call["args"]})
        valid += call is not None
        right_tool += call is not None and call["name"] == name
        right_arg += call is not None and call["name"] == name and arg in json.dumps(call["args"])
    wall = round(time.perf_counter() - start, 1)
    return {
        "n": len(TOOL_REQUESTS),
        "valid": valid,
        "right_tool": right_tool,
        "right_arg": right_arg,
        "calls": calls,
        "wall_s": wall,
    }


def cost(rounds: int = 3) -> dict[str, Any]:
    """Decode speed under a grammar vs free (same prompts, same token counts, interleaved), compile time.

    The grammar is one that admits any text (``[^\\x00]{1,2000}``), so both sides generate the same 48
    tokens and the ratio is the mask's own cost; a JSON-schema generation ends early and its tokens/s would
    mostly measure the prompt's prefill.
    """
    from langchain_fslm import GenerationConfig, OutputConstraint
    from langchain_fslm.engine.base import GenerationRequest
    from langchain_fslm.engine.local import get_engine
    from langchain_fslm.models import BaseModelRef

    engine = get_engine(BaseModelRef())
    schema = {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 200},
            "points": {"type": "array", "items": {"type": "string", "maxLength": 200}, "maxItems": 8},
        },
        "required": ["title", "points"],
        "additionalProperties": False,
    }
    start = time.perf_counter()
    engine.check_constraint(OutputConstraint.from_json_schema({**schema, "title": "cold"}))
    cold_ms = (time.perf_counter() - start) * 1000
    constraint = OutputConstraint.from_json_schema(schema)
    engine.check_constraint(constraint)
    start = time.perf_counter()
    engine.check_constraint(constraint)
    cached_ms = (time.perf_counter() - start) * 1000
    any_text = OutputConstraint.from_regex(r"[^\x00]{1,2000}", name="any text")
    engine.check_constraint(any_text)
    prompts = ["Summarise why exercise is healthy.", "Describe a good breakfast.", "Explain what rain is."]
    config = GenerationConfig(max_new_tokens=48)
    best: dict[str, float] = {"free": 0.0, "constrained": 0.0}
    for _ in range(rounds):
        for label, c in (("free", None), ("constrained", any_text)):
            requests = [GenerationRequest(prompt=p, config=config, constraint=c) for p in prompts]
            start = time.perf_counter()
            gens = engine.generate(requests)
            rate = sum(g.completion_tokens for g in gens) / (time.perf_counter() - start)
            best[label] = max(best[label], rate)
    return {
        "tokens_per_s_free": round(best["free"], 1),
        "tokens_per_s_constrained": round(best["constrained"], 1),
        "ratio": round(best["constrained"] / best["free"], 3),
        "compile_ms_cold_incl_tokenizer": round(cold_ms, 1),
        "compile_ms_cached": round(cached_ms, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--heldout", type=int, default=200)
    parser.add_argument("--skip-heldout", action="store_true")
    parser.add_argument(
        "--heldout-modes",
        nargs="+",
        choices=["constrained", "free"],
        default=["constrained", "free"],
        help="run only these held-out modes; the other is kept from the last result",
    )
    parser.add_argument(
        "--only",
        choices=["cost", "structured", "tools", "heldout"],
        action="append",
        help="rerun only these parts; the others are kept from the last result (with their own machine line)",
    )
    args = parser.parse_args()
    data: dict[str, Any] = {"machine": machine()}
    previous = RESULTS_DIR / "typed_handoffs.json"
    kept: dict[str, Any] = json.loads(previous.read_text()) if previous.is_file() else {}
    if args.only and kept:
        data |= {k: v for k, v in kept.items() if k not in args.only and k != "machine"}
        data["machine_of_kept_parts"] = kept.get("machine_of_kept_parts", kept.get("machine"))
    parts = [("cost", cost), ("structured", structured), ("tools", tools)]
    if not args.skip_heldout:
        parts.append(("heldout", lambda: heldout(args.heldout, args.heldout_modes, kept.get("heldout"))))
    parts = [(n, f) for n, f in parts if not args.only or n in args.only]
    partial = RESULTS_DIR / "typed_handoffs.partial.json"
    for name, run in parts:  # each part is kept as it ends, so a long run stopped early keeps the others
        start = time.perf_counter()
        data[name] = run()
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
        partial.parent.mkdir(exist_ok=True)
        partial.write_text(json.dumps(data, indent=2, default=str))
    partial.unlink(missing_ok=True)
    c, s, t = data["cost"], data["structured"], data["tools"]
    rows = [
        ("decode tokens/s, under a grammar / free", f"{c['ratio']:.2f}x", ">= 0.9x"),
        (
            "grammar compile, cold / cached (ms)",
            f"{c['compile_ms_cold_incl_tokenizer']:.0f} / {c['compile_ms_cached']:.2f}",
            "cached",
        ),
    ]
    for label in ("constrained_stack", "free_stack", "base_model"):
        r = s[label]
        rows.append(
            (
                f"structured {label}: valid / all right",
                f"{r['valid']}/{s['n']} / {r['all_right']}/{s['n']}",
                "20/20 valid",
            )
        )
    rows.append(
        (
            "tool calls: valid / right tool / right arg",
            f"{t['valid']} / {t['right_tool']} / {t['right_arg']} of {t['n']}",
            "valid 10/10",
        )
    )
    if "heldout" in data:
        h = data["heldout"]
        for label in ("constrained", "free"):
            r = h[label]
            rows.append(
                (
                    f"held-out {label}: intent valid / role",
                    f"{r['intent_valid']} / {r['intent_role']} of {h['n']}",
                    "100% valid",
                )
            )
            rows.append(
                (
                    f"held-out {label}: key_points valid / role",
                    f"{r['key_points_valid']} / {r['key_points_role']} of {h['n']}",
                    "100% valid",
                )
            )
    report("typed_handoffs", rows, data)


if __name__ == "__main__":
    main()
