"""Tool-call parsers: canned outputs per parser, and the streaming property the server relies
on: however the text is cut into deltas, the streamed content and calls reassemble to exactly
what ``extract`` returns for the whole text."""

from __future__ import annotations

import json
import random
import re

import pytest

from pe_server.tools import (
    TOOL_PARSERS,
    HermesToolParser,
    Llama3JsonToolParser,
    MistralToolParser,
    ParsedToolCall,
    StreamDelta,
    ToolParser,
    get_tool_parser,
)

Call = tuple[str, dict]


def call(name: str, arguments: object) -> ParsedToolCall:
    return ParsedToolCall(name, json.dumps(arguments, ensure_ascii=False))


WEATHER = {"city": "Paris", "unit": "celsius"}
NESTED = {"filter": {"tags": ["a", "b"], "range": {"lo": 1, "hi": [2, {"x": None}]}}, "q": "}{]["}
UNICODE = {"text": "naïve café — 東京 🚀", "escaped": 'line\nbreak "quoted" \\ back'}

# (parser, model output, expected content, expected calls)
CASES: list[tuple[type[ToolParser], str, str | None, list[ParsedToolCall]]] = [
    # hermes
    (HermesToolParser, "Just text, no call.", "Just text, no call.", []),
    (HermesToolParser, "", "", []),
    (
        HermesToolParser,
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>',
        None,
        [call("get_weather", WEATHER)],
    ),
    (
        HermesToolParser,
        'Let me check.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}</tool_call>',
        "Let me check.\n",
        [call("get_weather", WEATHER)],
    ),
    (
        HermesToolParser,
        '<tool_call>{"name": "a", "arguments": {}}</tool_call>\n between \n'
        '<tool_call>{"name": "b", "arguments": {"n": 2}}</tool_call> after',
        None,
        [call("a", {}), call("b", {"n": 2})],
    ),
    (
        HermesToolParser,
        "<tool_call>"
        + json.dumps({"name": "say", "arguments": UNICODE}, ensure_ascii=False)
        + "</tool_call>",
        None,
        [call("say", UNICODE)],
    ),
    (
        HermesToolParser,
        "<tool_call>" + json.dumps({"name": "search", "arguments": NESTED}) + "</tool_call>",
        None,
        [call("search", NESTED)],
    ),
    (
        HermesToolParser,
        'x <tool_call>{"name": "f", "arguments": {"a": 1}</tool_call>',
        'x <tool_call>{"name": "f", "arguments": {"a": 1}</tool_call>',
        [],
    ),
    (HermesToolParser, "<tool_call>not json</tool_call>", "<tool_call>not json</tool_call>", []),
    (
        HermesToolParser,
        '<tool_call>{"arguments": {}}</tool_call>',
        '<tool_call>{"arguments": {}}</tool_call>',
        [],
    ),
    (
        HermesToolParser,
        'ok <tool_call>{"name": "f", "arguments": {"x": [1, 2]}}',
        "ok ",
        [call("f", {"x": [1, 2]})],
    ),
    (
        HermesToolParser,
        '<tool_call>{"name": "f", "arguments": {"x": [1, 2',
        '<tool_call>{"name": "f", "arguments": {"x": [1, 2',
        [],
    ),
    (HermesToolParser, "Hello <tool_ca", "Hello <tool_ca", []),
    (HermesToolParser, "a < b and <tool> x", "a < b and <tool> x", []),
    (
        HermesToolParser,
        '<tool_call>{"name": "f", "arguments": {}}</tool_call><tool_call>{oops}</tool_call>',
        None,
        [call("f", {})],
    ),
    (
        HermesToolParser,
        'pre<tool_call>{oops}</tool_call><tool_call>{"name": "g", "arguments": 3}</tool_call>',
        "pre",
        [call("g", 3)],
    ),
    # llama3_json
    (Llama3JsonToolParser, "The weather is nice.", "The weather is nice.", []),
    (Llama3JsonToolParser, "  \n ", "  \n ", []),
    (
        Llama3JsonToolParser,
        '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}',
        None,
        [call("get_weather", WEATHER)],
    ),
    (
        Llama3JsonToolParser,
        '<|python_tag|>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
        None,
        [call("get_weather", WEATHER)],
    ),
    (
        Llama3JsonToolParser,
        ' \n{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"n": 2}}\n{"name": "c", "parameters": []}',
        None,
        [call("a", {}), call("b", {"n": 2}), call("c", [])],
    ),
    (
        Llama3JsonToolParser,
        json.dumps({"name": "say", "parameters": UNICODE}, ensure_ascii=False),
        None,
        [call("say", UNICODE)],
    ),
    (
        Llama3JsonToolParser,
        json.dumps({"name": "search", "parameters": NESTED}),
        None,
        [call("search", NESTED)],
    ),
    (
        Llama3JsonToolParser,
        'Sure! {"name": "f", "parameters": {}}',
        'Sure! {"name": "f", "parameters": {}}',
        [],
    ),
    (
        Llama3JsonToolParser,
        '{"name": "f", "parameters": {"a": 1}',
        '{"name": "f", "parameters": {"a": 1}',
        [],
    ),
    (Llama3JsonToolParser, '{"answer": 42} is the JSON', '{"answer": 42} is the JSON', []),
    (Llama3JsonToolParser, "{not json} ok", "{not json} ok", []),
    (
        Llama3JsonToolParser,
        '{"name": "f", "parameters": {}} and then some prose',
        None,
        [call("f", {})],
    ),
    (Llama3JsonToolParser, "<|python", "<|python", []),
    (Llama3JsonToolParser, "<|python_tag|>print(1)", "<|python_tag|>print(1)", []),
    # mistral, before v11: one array
    (MistralToolParser, "No tools needed.", "No tools needed.", []),
    (
        MistralToolParser,
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}]',
        None,
        [call("get_weather", WEATHER)],
    ),
    (
        MistralToolParser,
        'Checking.[TOOL_CALLS][{"name": "a", "arguments": {}}, {"name": "b"}, '
        + json.dumps({"name": "say", "arguments": UNICODE}, ensure_ascii=False)
        + "] trailing",
        "Checking.",
        [call("a", {}), call("b", {}), call("say", UNICODE)],
    ),
    (
        MistralToolParser,
        '[TOOL_CALLS][{"name": "f", "arguments": {]',
        '[TOOL_CALLS][{"name": "f", "arguments": {]',
        [],
    ),
    (
        MistralToolParser,
        '[TOOL_CALLS][{"name": "f", "arguments": {}} {"name": "g"}]',
        None,
        [call("f", {})],
    ),
    # mistral, v11 and later: one marker per call
    (
        MistralToolParser,
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "celsius"}',
        None,
        [call("get_weather", WEATHER)],
    ),
    (
        MistralToolParser,
        "Let me look.[TOOL_CALLS]search[ARGS]"
        + json.dumps(NESTED)
        + "[TOOL_CALLS]say"
        + json.dumps(UNICODE, ensure_ascii=False),
        "Let me look.",
        [call("search", NESTED), call("say", UNICODE)],
    ),
    (
        MistralToolParser,
        '[TOOL_CALLS]broken[TOOL_CALLS]g[CALL_ID]abc123XYZ[ARGS]{"k": "v"}',
        None,
        [call("g", {"k": "v"})],
    ),
    (
        MistralToolParser,
        '[TOOL_CALLS]f[ARGS]{"a": [1, 2',
        '[TOOL_CALLS]f[ARGS]{"a": [1, 2',
        [],
    ),
    (MistralToolParser, "Brackets [TOOL_CA", "Brackets [TOOL_CA", []),
]

CASE_IDS = [f"{parser.name}-{index}" for index, (parser, *_rest) in enumerate(CASES)]


def reassemble(deltas: list[StreamDelta]) -> tuple[str, list[ParsedToolCall]]:
    """Rebuild what a client sees, checking the delta shape on the way."""
    content = "".join(delta.content or "" for delta in deltas)
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    for delta in deltas:
        for piece in delta.tool_calls:
            if piece.name is not None:
                assert piece.index == len(names), "calls open in order"
                assert piece.id, "the first delta of a call carries its id"
                names[piece.index] = piece.name
                arguments[piece.index] = ""
            if piece.arguments is not None:
                assert piece.index in names, "the name comes before the arguments"
                arguments[piece.index] += piece.arguments
    return content, [ParsedToolCall(names[i], arguments[i]) for i in sorted(names)]


def stream_chunks(
    parser_cls: type[ToolParser], chunks: list[str]
) -> tuple[str, list[ParsedToolCall]]:
    parser = parser_cls()
    deltas = [parser.stream(chunk) for chunk in chunks]
    deltas.append(parser.finish())
    return reassemble(deltas)


def extracted(parser_cls: type[ToolParser], text: str) -> tuple[str, list[ParsedToolCall]]:
    result = parser_cls.extract(text)
    return result.content or "", result.calls


def random_chunks(text: str, rng: random.Random) -> list[str]:
    chunks, pos = [], 0
    while pos < len(text):
        size = rng.randint(1, 5)
        chunks.append(text[pos : pos + size])
        pos += size
    return chunks


@pytest.mark.parametrize(("parser_cls", "text", "content", "calls"), CASES, ids=CASE_IDS)
def test_extract(parser_cls, text, content, calls):
    result = parser_cls.extract(text)
    assert result.calls == calls
    assert result.content == content


@pytest.mark.parametrize(("parser_cls", "text", "content", "calls"), CASES, ids=CASE_IDS)
def test_stream_cut_at_every_boundary_matches_extract(parser_cls, text, content, calls):
    expected = extracted(parser_cls, text)
    for cut in range(len(text) + 1):
        assert stream_chunks(parser_cls, [text[:cut], text[cut:]]) == expected, cut
    assert stream_chunks(parser_cls, list(text)) == expected


@pytest.mark.parametrize(("parser_cls", "text", "content", "calls"), CASES, ids=CASE_IDS)
def test_stream_token_like_chunks_match_extract(parser_cls, text, content, calls):
    expected = extracted(parser_cls, text)
    rng = random.Random(len(text))
    for _ in range(30):
        assert stream_chunks(parser_cls, random_chunks(text, rng)) == expected


def test_content_streams_before_a_call_holding_back_only_a_possible_tag():
    parser = HermesToolParser()
    assert parser.stream("Hello").content == "Hello"
    assert parser.stream(" wor<tool").content == " wor"
    assert parser.stream("_c").content is None
    assert parser.stream("all>").content is None
    delta = parser.stream('{"name": "f", "arguments": {}}</tool_call>')
    assert [(d.index, d.name, d.arguments) for d in delta.tool_calls] == [
        (0, "f", None),
        (0, None, "{}"),
    ]
    assert parser.finish() == StreamDelta(None, [])


def test_partial_tag_that_never_completes_is_content_at_finish():
    parser = HermesToolParser()
    assert parser.stream("a <tool_c").content == "a "
    assert parser.finish().content == "<tool_c"


def test_llama_plain_text_streams_as_it_comes():
    parser = Llama3JsonToolParser()
    assert parser.stream("  ").content is None  # could still become a call
    assert parser.stream("The").content == "  The"
    assert parser.stream(" answer").content == " answer"


def test_llama_output_that_stops_being_a_call_is_sent_as_content_at_once():
    parser = Llama3JsonToolParser()
    assert parser.stream('{"answer": 4').content is None
    assert parser.stream("2} more").content == '{"answer": 42} more'
    assert parser.stream(" text").content == " text"


def test_call_ids():
    hermes = HermesToolParser().stream('<tool_call>{"name": "f", "arguments": {}}</tool_call>')
    assert re.fullmatch(r"chatcmpl-tool-[0-9a-f]{32}", hermes.tool_calls[0].id)
    mistral = MistralToolParser().stream('[TOOL_CALLS]f{}[TOOL_CALLS]g{"a": 1}')
    ids = [piece.id for piece in mistral.tool_calls if piece.id]
    assert len(ids) == 2 and ids[0] != ids[1]
    assert all(re.fullmatch(r"[A-Za-z0-9]{9}", call_id) for call_id in ids)


def test_registry():
    assert set(TOOL_PARSERS) == {"hermes", "llama3_json", "mistral"}
    assert get_tool_parser("hermes") is HermesToolParser
    with pytest.raises(ValueError, match="hermes, llama3_json, mistral"):
        get_tool_parser("nope")


def test_skip_special_tokens_flags():
    assert HermesToolParser.adjust_skip_special_tokens
    assert MistralToolParser.adjust_skip_special_tokens
    assert not Llama3JsonToolParser.adjust_skip_special_tokens


@pytest.mark.parametrize("parser_cls", list(TOOL_PARSERS.values()))
def test_garbage_never_raises(parser_cls):
    rng = random.Random(7)
    alphabet = '{}[]",:; \\abn<>/_|TOOL_CALS[ARGS]tool_call<|python_tag|>'
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        expected = extracted(parser_cls, text)
        assert stream_chunks(parser_cls, random_chunks(text, rng)) == expected
