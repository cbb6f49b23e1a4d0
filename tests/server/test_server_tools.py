"""Tool calling through the real server and the official ``openai`` client (issue 20), with
prompt_embeds parts anywhere in the conversation.

"required" and named tools are enforced by the JSON schema built from the tools, so the calls
hold whatever the (random) weights; "auto" parses what the model writes with the hermes parser,
which the tests make the model write with a regex constraint. A small Hermes-style template
renders the tools, earlier calls (their arguments as dicts) and tool results.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from server_harness import API_KEY, MODEL, ServerProcess, assert_error

from conftest import MAIN_FLAGS, Embedder, module_server
from pe_common.codec import encode_prompt_embeds

TEMPLATE = """\
{%- if tools %}<|im_start|>system
Tools:{% for t in tools %} {{ t.function.name }}{{ t.function.parameters | tojson }}{% endfor %}<|im_end|>
{% endif %}
{%- for m in messages %}
{%- if m.role == 'assistant' and m.tool_calls %}<|im_start|>assistant
{% for c in m.tool_calls %}<tool_call>{{ c.function.name }}[city={{ c.function.arguments.city }}]</tool_call>{% endfor %}<|im_end|>
{% elif m.role == 'tool' %}<|im_start|>user
<tool_response>{{ m.content }}</tool_response><|im_end|>
{% else %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endif %}{% endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"enum": ["Paris", "Rome"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"enum": ["UTC", "CET"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, TIME]
HERMES_CALL = r'<tool_call>\{"name": "get_weather", "arguments": \{"city": "(Paris|Rome)", "days": [1-7]\}\}</tool_call>'

tools_server = module_server(
    "tools",
    [*MAIN_FLAGS, "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
     "--structured-outputs-config", '{"disable_any_whitespace": true}', "--max-model-len", "512"],
    chat_template=TEMPLATE,
)  # fmt: skip


@pytest.fixture(scope="module")
def client(tools_server: ServerProcess) -> Any:
    with openai.OpenAI(base_url=tools_server.base_url, api_key=API_KEY, max_retries=0) as c:
        yield c


def part(rows: Any) -> dict[str, Any]:
    return {"type": "prompt_embeds", "data": str(encode_prompt_embeds(rows, "safetensors"))}


def question(embedder: Embedder, *, as_embeds: bool = True) -> list[dict[str, Any]]:
    doc = "Rome is sunny this week"
    content = part(embedder(doc)) if as_embeds else {"type": "text", "text": doc}
    return [{"role": "user", "content": [{"type": "text", "text": "Read:"}, content]}]


# What every request asks unless its test overrides it: greedy, at most 80 tokens, both tools.
ASK_DEFAULTS = {"max_tokens": 80, "temperature": 0, "tools": TOOLS}


def ask(client: Any, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
    options = {**ASK_DEFAULTS, **kwargs}
    return client.chat.completions.create(model=MODEL, messages=messages, **options)


def check_call(call: Any) -> None:
    assert call.type == "function" and call.id.startswith("chatcmpl-tool-")
    args = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        assert (
            args["city"] in ("Paris", "Rome")
            and 1 <= args["days"] <= 7
            and set(args) == {"city", "days"}
        )
    else:
        assert (
            call.function.name == "get_time"
            and args == {"zone": args["zone"]}
            and args["zone"] in ("UTC", "CET")
        )


def streamed(
    client: Any, messages: list[dict[str, Any]], **kwargs: Any
) -> tuple[str, list[tuple[str, str]], str]:
    """(content, [(name, arguments)], finish_reason) reassembled from the stream as the SDK's
    users do: by ``index``, id and name once, arguments concatenated."""
    content, calls, finish = "", {}, None
    for chunk in ask(client, messages, stream=True, **kwargs):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for piece in choice.delta.tool_calls or []:
                entry = calls.setdefault(piece.index, {"id": None, "name": "", "arguments": ""})
                if piece.id:
                    assert entry["id"] is None and piece.type == "function"
                    entry["id"] = piece.id
                if piece.function and piece.function.name:
                    entry["name"] += piece.function.name
                if piece.function and piece.function.arguments:
                    entry["arguments"] += piece.function.arguments
            finish = choice.finish_reason or finish
    assert all(entry["id"] for entry in calls.values())
    return content, [(c["name"], c["arguments"]) for _, c in sorted(calls.items())], finish


def as_pairs(message: Any) -> list[tuple[str, str]]:
    return [(c.function.name, c.function.arguments) for c in message.tool_calls or []]


def test_required_calls_follow_the_tool_schemas_with_embeds_parts(
    client: Any, embedder: Embedder
) -> None:
    for kwargs in ({}, {"n": 2, "temperature": 1.0, "seed": 4}, {"presence_penalty": 1.5}):
        completion = ask(client, question(embedder), tool_choice="required", **kwargs)
        for choice in completion.choices:
            assert choice.finish_reason == "tool_calls"
            assert choice.message.tool_calls
            for call in choice.message.tool_calls:
                check_call(call)


def test_a_named_tool_is_called_with_arguments_that_follow_its_schema(
    client: Any, embedder: Embedder
) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    completion = ask(client, question(embedder), tool_choice=named, n=2, temperature=1.0, seed=1)
    for choice in completion.choices:
        assert choice.finish_reason == "stop"  # OpenAI's and vLLM's answer for a named tool
        (call,) = choice.message.tool_calls
        check_call(call)
        assert call.function.name == "get_time"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tool_choice": "required"},
        {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        {
            "tool_choice": "auto",
            "extra_body": {
                "structured_outputs": {"regex": "I check\\. " + HERMES_CALL + HERMES_CALL}
            },
        },
    ],
    ids=["required", "named", "auto"],
)
def test_streamed_tool_calls_reassemble_to_the_non_streamed_ones(
    client: Any, embedder: Embedder, kwargs: dict[str, Any]
) -> None:
    whole = ask(client, question(embedder), **kwargs).choices[0]
    content, calls, finish = streamed(client, question(embedder), **kwargs)
    assert calls == as_pairs(whole.message) and calls
    assert finish == whole.finish_reason
    assert content == (whole.message.content or "")


def test_auto_parses_the_calls_the_model_writes(client: Any, embedder: Embedder) -> None:
    forced = {"structured_outputs": {"regex": "I check\\. " + HERMES_CALL + HERMES_CALL}}
    choice = ask(client, question(embedder), tool_choice="auto", extra_body=forced).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "I check. "
    assert len(choice.message.tool_calls) == 2
    for call in choice.message.tool_calls:
        check_call(call)
    # parallel_tool_calls=false keeps the first call only (vLLM's rule)
    single = ask(
        client, question(embedder), tool_choice="auto", parallel_tool_calls=False, extra_body=forced
    )
    assert as_pairs(single.choices[0].message) == as_pairs(choice.message)[:1]


def test_auto_without_a_call_answers_plain_content(client: Any, embedder: Embedder) -> None:
    choice = ask(
        client,
        question(embedder),
        extra_body={"structured_outputs": {"choice": ["Sunny", "Rainy"]}},
    ).choices[0]
    assert choice.message.content in ("Sunny", "Rainy")
    assert not choice.message.tool_calls and choice.finish_reason == "stop"


def test_parallel_tool_calls_false_allows_one_required_call(
    client: Any, embedder: Embedder
) -> None:
    completion = ask(
        client,
        question(embedder),
        tool_choice="required",
        parallel_tool_calls=False,
        n=3,
        temperature=1.0,
        seed=2,
    )
    for choice in completion.choices:
        assert len(choice.message.tool_calls) == 1
        check_call(choice.message.tool_calls[0])


def test_text_and_embeds_prompts_give_the_same_tool_calls(client: Any, embedder: Embedder) -> None:
    """The acceptance test of the research notes: under greedy decoding the same conversation
    as text and as embeds makes the same calls."""
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        by_text = ask(client, question(embedder, as_embeds=False), tool_choice=choice).choices[0]
        by_embeds = ask(client, question(embedder), tool_choice=choice).choices[0]
        assert as_pairs(by_embeds.message) == as_pairs(by_text.message)


def test_history_with_calls_results_and_embeds_parts_is_rendered(
    client: Any, embedder: Embedder
) -> None:
    """An assistant turn with tool_calls (arguments a JSON string on the wire, a dict for the
    template), a tool result as an embeds part, then a new question."""
    messages = [
        *question(embedder),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Rome", "days": 2}'}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": [part(embedder("Sunny, 24 degrees"))]},
        {"role": "user", "content": "And tomorrow?"},
    ]  # fmt: skip
    completion = ask(
        client, messages, tool_choice="none", max_tokens=4, extra_body={"return_token_ids": True}
    )
    ids = [t for t in completion.prompt_token_ids if t != 0]
    rendered = embedder.tokenizer.decode(ids)
    assert "<tool_call>get_weather[city=Rome]</tool_call>" in rendered
    assert "<tool_response>" in rendered and "Tools: get_weather" in rendered
    plain = ask(client, messages[:1], tool_choice="none")
    assert completion.usage.prompt_tokens > plain.usage.prompt_tokens


def test_tools_are_left_out_of_the_prompt_only_when_asked(client: Any, embedder: Embedder) -> None:
    with_tools = ask(client, question(embedder), tool_choice="none", max_tokens=1)
    without = client.chat.completions.create(model=MODEL, messages=question(embedder), max_tokens=1)
    assert with_tools.usage.prompt_tokens > without.usage.prompt_tokens


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        ({"tools": []}, "tools", "non-empty"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name", ""),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name", "unique"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name", ""),
        ({"tool_choice": "required"}, "tool_choice", ""),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", ""),
        ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice", "not both"),
        ({"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(200)]}, "tools", "at most"),
    ],
)  # fmt: skip
def test_bad_tool_requests_are_400s_naming_the_field(
    tools_server: ServerProcess, fields: dict[str, Any], param: str, message: str
) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        **fields,
    }
    response = tools_server.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and message in error["message"], error


def test_auto_needs_the_servers_tool_flags(server: ServerProcess) -> None:
    """As vLLM: tools with tool_choice "auto" (the default with tools) need
    --enable-auto-tool-choice and --tool-call-parser."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": TOOLS}
    error = assert_error(server.post("/v1/chat/completions", json=body), 400, "invalid_parameter")
    assert error["param"] == "tool_choice"
    assert (
        error["message"]
        == '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
    )
    # "none" and "required" need no flag
    for choice in ("none", "required"):
        ok = server.post(
            "/v1/chat/completions", json={**body, "tool_choice": choice, "max_tokens": 60}
        )
        assert ok.status_code == 200, ok.text
