"""Structured outputs through the real server and the official ``openai`` client (issue 20):
response_format, structured_outputs and the guided_* aliases on both endpoints, with embeds
parts; bad constraints are 400s naming the field, within a time budget, never stalling others.

The tiny models have random weights, so only the constraint is asserted, never the content; the
server runs with ``{"disable_any_whitespace": true}`` so that JSON cannot fill ``max_tokens``
with whitespace.
"""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any, Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, Field
from server_harness import API_KEY, MODEL, ServerProcess, assert_error

from conftest import MAIN_FLAGS, Embedder, module_server, serve
from pe_common.codec import encode_prompt_embeds

COMPACT = '{"disable_any_whitespace": true}'
compact = module_server(
    "structured",
    [*MAIN_FLAGS, "--structured-outputs-config", COMPACT, "--structured-outputs-timeout", "5"],
)
PLATE = r"[a-z]{3}-[0-9]{2}"


class Answer(BaseModel):
    city: Literal["Paris", "Rome", "Oslo"]
    confident: bool
    # ASCII by pattern: pydantic 2.0 (the lowest bound) counted max_length in UTF-8 bytes
    note: str = Field(pattern=r"^[a-z ]{0,10}$")


def part(rows: Any) -> dict[str, Any]:
    return {"type": "prompt_embeds", "data": str(encode_prompt_embeds(rows, "safetensors"))}


@pytest.fixture(scope="module")
def client(compact: ServerProcess) -> Any:
    with openai.OpenAI(base_url=compact.base_url, api_key=API_KEY, max_retries=0) as c:
        yield c


def sdk_parse(client: Any) -> Any:
    """``chat.completions.parse``: under ``beta`` in older openai releases (the lowest bound)."""
    parse = getattr(client.chat.completions, "parse", None)
    return parse if parse is not None else client.beta.chat.completions.parse


def complete(server: ServerProcess, **fields: Any) -> httpx.Response:
    body = {"model": MODEL, "prompt": "Write", "max_tokens": 40, "temperature": 0, **fields}
    return server.post("/v1/completions", json=body)


def chat(server: ServerProcess, **fields: Any) -> httpx.Response:
    body = {
        "model": MODEL, "messages": [{"role": "user", "content": "Write"}], "max_tokens": 40,
        "temperature": 0, **fields,
    }  # fmt: skip
    return server.post("/v1/chat/completions", json=body)


def texts(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [c.get("text", c.get("message", {}).get("content")) for c in response.json()["choices"]]


def test_parse_with_a_pydantic_model_and_embeds_parts(client: Any, embedder: Embedder) -> None:
    """The SDK's ``chat.completions.parse(response_format=Model)``: a json_schema with
    strict true; the answer validates (the SDK parses it into the model)."""
    messages = [
        {"role": "system", "content": [part(embedder("You answer in JSON"))]},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Where?"}, part(embedder("a tower"))],
        },
    ]
    for temperature in (0.0, 1.0):
        completion = sdk_parse(client)(
            model=MODEL, messages=messages, response_format=Answer, max_tokens=60,
            temperature=temperature, seed=5, n=2,
        )  # fmt: skip
        for choice in completion.choices:
            assert choice.finish_reason == "stop"
            assert isinstance(choice.message.parsed, Answer)


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_json_object_and_json_schema_on_both_endpoints(
    compact: ServerProcess, endpoint: str
) -> None:
    send = complete if endpoint == "completions" else chat
    schema = Answer.model_json_schema()
    closed = {**schema, "additionalProperties": False}
    for fields, check in [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}}},
         lambda v: Answer.model_validate(v)),
        ({"structured_outputs": {"json": closed}}, lambda v: Answer.model_validate(v)),
        ({"guided_json": closed}, lambda v: Answer.model_validate(v)),
        ({"structured_outputs": {"json": schema, "disable_additional_properties": True}},
         lambda v: Answer.model_validate(v)),
        ({"response_format": {"type": "json_object"}}, lambda v: isinstance(v, dict)),
    ]:  # fmt: skip
        response = send(compact, **{"max_tokens": 150, **fields})
        (text,) = texts(response)
        if response.json()["choices"][0]["finish_reason"] == "stop":
            assert check(json.loads(text)), text
        else:  # any JSON object may be longer than max_tokens: a prefix of one
            assert "json_object" in str(fields) and text.startswith("{")


@pytest.mark.parametrize(
    ("fields", "check"),
    [
        ({"structured_outputs": {"regex": PLATE}}, lambda t: re.fullmatch(PLATE, t)),
        ({"guided_regex": PLATE}, lambda t: re.fullmatch(PLATE, t)),
        ({"structured_outputs": {"choice": ["alpha", "beta"]}}, lambda t: t in ("alpha", "beta")),
        ({"guided_choice": ["alpha", "beta"]}, lambda t: t in ("alpha", "beta")),
        ({"structured_outputs": {"grammar": 'start: "<" /[0-9]{1,3}/ ">"'}},
         lambda t: re.fullmatch(r"<[0-9]{1,3}>", t)),
        ({"guided_grammar": 'root ::= "(" [a-c] [a-c]? ")"'}, lambda t: re.fullmatch(r"\([a-c]{1,2}\)", t)),
    ],
)  # fmt: skip
def test_regex_choice_and_grammar_hold_with_n_seeds_and_penalties(
    server: ServerProcess, fields: dict[str, Any], check: Any
) -> None:
    sampled = {
        "n": 3,
        "temperature": 1.0,
        "seed": 9,
        "repetition_penalty": 1.3,
        "presence_penalty": 1.5,
    }
    for send in (complete, chat):
        for extra in ({}, sampled):
            for text in texts(send(server, **fields, **extra)):
                assert check(text), (fields, text)


def test_streamed_constrained_output_equals_the_whole_one(server: ServerProcess) -> None:
    fields = {"structured_outputs": {"regex": PLATE}, "stream": False}
    (whole,) = texts(chat(server, **fields))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write"}], "max_tokens": 40,
            "temperature": 0, "structured_outputs": {"regex": PLATE}, "stream": True}  # fmt: skip
    with httpx.stream("POST", f"{server.base_url}/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as r:  # fmt: skip
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    pieces = [json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]
              if json.loads(e)["choices"]]  # fmt: skip
    assert "".join(pieces) == whole


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        ({"structured_outputs": {"regex": "(a"}}, "structured_outputs.regex", "unclosed group"),
        ({"guided_regex": "(a"}, "guided_regex", "unclosed group"),
        ({"structured_outputs": {"grammar": "start: nope"}}, "structured_outputs.grammar", "unknown name"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wat"}}}},
         "response_format.json_schema.schema", "Invalid type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "must be"),
        ({"response_format": {"type": "xml"}}, "response_format.type", "one of"),
        ({"response_format": {"type": "structural_tag"}}, "response_format.type", "not supported"),
        ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs.regex", "one kind"),
        ({"structured_outputs": {"regex": "a"}, "guided_choice": ["a"]}, "guided_choice", "one kind"),
        ({"structured_outputs": {"jsn": {}}}, "structured_outputs.jsn", "Unknown"),
        ({"structured_outputs": {"structural_tag": "{}"}}, "structured_outputs.structural_tag", "not supported"),
        ({"structured_outputs": {}}, "structured_outputs", "needs one of"),
        ({"structured_outputs": {"choice": []}}, "structured_outputs.choice", "non-empty"),
        ({"structured_outputs": {"regex": "a\x00"}}, "structured_outputs.regex", "NUL"),
        ({"structured_outputs": {"regex": "a" * 70_000}}, "structured_outputs.regex", "over"),
        ({"guided_whitespace_pattern": " "}, "guided_whitespace_pattern", "guided_json"),
    ],
)  # fmt: skip
def test_bad_constraints_are_400s_naming_the_field(
    server: ServerProcess, fields: dict[str, Any], param: str, message: str
) -> None:
    code = "invalid_parameter"
    if message in ("unclosed group", "unknown name", "Invalid type"):
        code = "invalid_structured_output"  # the compiler's message
    elif message == "not supported":
        code = "unsupported_parameter"
    for send in (complete, chat):
        error = assert_error(send(server, **fields), 400, code)
        assert error["param"] == param and message in error["message"], error


def test_a_slow_compile_is_a_400_and_never_stalls_other_requests(
    tiny_llama_dir: Any, tmp_path_factory: Any
) -> None:
    """A ~60 KB schema takes tens of ms to compile: past a 1 ms budget it is a 400, while a
    plain request sent at the same time is answered as usual (compiles run on their own
    threads, never the event loop or the engine thread)."""
    props = {f"p{i}": {"type": "string", "pattern": "[a-z]{3,9}[0-9]+"} for i in range(900)}
    big = {"type": "object", "properties": props, "required": list(props)}
    gen = serve(tiny_llama_dir, tmp_path_factory, "slow-compile",
                [*MAIN_FLAGS, "--structured-outputs-timeout", "0.001"])  # fmt: skip
    server = next(gen)
    try:
        results: dict[str, Any] = {}

        def hostile() -> None:
            results["hostile"] = complete(server, structured_outputs={"json": big})

        threads = [threading.Thread(target=hostile) for _ in range(4)]
        for thread in threads:
            thread.start()
        start = time.monotonic()
        plain = complete(server, max_tokens=4)
        plain_s = time.monotonic() - start
        for thread in threads:
            thread.join(30)
        assert plain.status_code == 200 and plain_s < 2.0, plain_s
        error = assert_error(results["hostile"], 400, "structured_output_timeout")
        assert error["param"] == "structured_outputs.json"
        # the compile went on in the background and was cached: the same schema is now at hand
        deadline = time.monotonic() + 20
        while (retry := complete(server, structured_outputs={"json": big})).status_code != 200:
            assert time.monotonic() < deadline, retry.text
            time.sleep(0.2)
    finally:
        next(gen, None)


tight = module_server(
    "structured-tight",
    ["--max-model-len", "96", "--num-kv-blocks", "12", "--block-size", "8", "--max-num-seqs", "8",
     "--structured-outputs-config", COMPACT],
)  # fmt: skip


def test_constrained_requests_preempted_by_a_small_kv_pool_keep_their_grammar(
    tight: ServerProcess,
) -> None:
    """Eight concurrent constrained requests need ~5x the 96 KV slots, so the engine preempts
    and recomputes: every answer still validates and equals the one it gives alone."""
    from concurrent.futures import ThreadPoolExecutor

    closed = {**Answer.model_json_schema(), "additionalProperties": False}
    prompts = [f"Request number {i} asks about the city " * 2 for i in range(8)]

    def one(prompt: str) -> str:
        (text,) = texts(
            complete(tight, prompt=prompt, max_tokens=60, structured_outputs={"json": closed})
        )
        return text

    alone = [one(p) for p in prompts]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(one, prompts))
    assert together == alone
    for text in together:
        Answer.model_validate_json(text)


HOSTILE_CONSTRAINTS = [
    # nested repetition: compiles in seconds, then fails llguidance's per-step limit
    ({"regex": "((a{1000}){1000}){1000}"}, {200, 400}),
    ({"regex": "(a|aa)*(a|aa)*(a|aa)*b"}, {200}),  # catastrophic backtracking elsewhere
    ({"regex": "(a|b)*a(a|b){24}"}, {200}),  # a DFA of 2^24 states, built lazily
    ({"grammar": "start: " + " | ".join(f'"w{i}"' for i in range(5000))}, {200, 400}),
    ({"grammar": 'start: e\ne: e "+" e | e "*" e | "a"'}, {200}),  # ambiguous, left-recursive
]


def nested_schema(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


def test_catalogue_row54_hostile_constraints_are_bounded_and_never_stall_others(
    server: ServerProcess,
) -> None:
    """Catalogue row 54: schemas, regexes and grammars built to blow up a compiler or a step
    are answered (a 400 with the compiler's message, or an output that ends) within the compile
    budget, while plain requests sent meanwhile are served as usual."""
    hostile = [*HOSTILE_CONSTRAINTS, ({"json": nested_schema(300)}, {400})]
    results: dict[int, tuple[int, float]] = {}

    def send(index: int, spec: dict[str, Any]) -> None:
        start = time.monotonic()
        response = complete(server, structured_outputs=spec, max_tokens=8)
        results[index] = (response.status_code, time.monotonic() - start)
        if response.status_code == 400:
            assert_error(response, 400, "invalid_structured_output")

    threads = [threading.Thread(target=send, args=(i, spec)) for i, (spec, _) in enumerate(hostile)]
    for thread in threads:
        thread.start()
    plain_s = []
    for _ in range(5):
        start = time.monotonic()
        assert complete(server, max_tokens=4).status_code == 200
        plain_s.append(time.monotonic() - start)
    for thread in threads:
        thread.join(60)
    assert len(results) == len(hostile)
    assert max(seconds for _, seconds in results.values()) < 10 + 5  # compile budget + a step
    assert sorted(plain_s)[2] < 1.0, plain_s  # the median plain request is not held up
    for i, (spec, allowed) in enumerate(hostile):
        assert results[i][0] in allowed, (spec, results[i])
