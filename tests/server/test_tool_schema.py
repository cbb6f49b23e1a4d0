"""Request checks for tools / tool_choice, the schemas that force calls ("required", named),
and the streamers of forced calls (jsonschema is not installed: the schemas are checked by
their structure)."""

from __future__ import annotations

import json

import pytest

from pe_server.tools import (
    NamedToolStreamer,
    ParsedToolCall,
    RequiredToolStreamer,
    ToolRequestError,
    check_tools,
    named_tool_schema,
    parse_required_output,
    required_tools_schema,
)

WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"$ref": "#/$defs/Unit"}},
    "required": ["city"],
    "$defs": {"Unit": {"enum": ["c", "f"]}},
}


def tool(name: str, parameters: dict | None = None, **extra) -> dict:
    function = {"name": name, **extra}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


TOOLS = [tool("get_weather", WEATHER_PARAMS), tool("ping")]


# check_tools


@pytest.mark.parametrize(
    "tool_choice",
    [None, "none", "auto", "required", {"type": "function", "function": {"name": "ping"}}],
)
def test_valid_requests_pass(tool_choice):
    check_tools(TOOLS, tool_choice)


@pytest.mark.parametrize("tool_choice", [None, "none"])
def test_no_tools_without_a_choice_is_fine(tool_choice):
    check_tools(None, tool_choice)


@pytest.mark.parametrize(
    ("tools", "tool_choice", "param", "message"),
    [
        (None, "auto", "tool_choice", "When using `tool_choice`, `tools` must be set."),
        (None, "required", "tool_choice", "When using `tool_choice`, `tools` must be set."),
        (TOOLS, "sometimes", "tool_choice", "Invalid value for `tool_choice`: sometimes!"),
        (TOOLS, 3, "tool_choice", "Invalid value for `tool_choice`: 3!"),
        ([], "auto", "tools", "non-empty list"),
        ({"type": "function"}, None, "tools", "non-empty list"),
        (["ping"], None, "tools[0]", "must be an object"),
        ([{"type": "retrieval", "function": {"name": "x"}}], None, "tools[0].type", '"function"'),
        ([{"type": "function"}], None, "tools[0].function", "must be an object"),
        ([tool("")], None, "tools[0].function.name", "non-empty string"),
        ([tool("f", parameters=[1])], None, "tools[0].function.parameters", "an object"),
        ([tool("f", description=5)], None, "tools[0].function.description", "a string"),
        ([tool("f", strict="yes")], None, "tools[0].function.strict", "a boolean"),
        ([tool("f"), tool("f")], None, "tools[1].function.name", "unique"),
        (
            TOOLS,
            {"type": "function", "function": {"name": "nope"}},
            "tool_choice.function.name",
            "does not match any of the specified `tools`",
        ),
        (
            TOOLS,
            {"type": "function", "function": "ping"},
            "tool_choice.function",
            "Invalid value for `function`",
        ),
        (
            TOOLS,
            {"type": "function", "function": {}},
            "tool_choice.function.name",
            "Expected field `name`",
        ),
        (
            TOOLS,
            {"type": "function", "function": {"name": 4}},
            "tool_choice.function.name",
            "Invalid `name`",
        ),
        (
            TOOLS,
            {"type": "other", "function": {"name": "ping"}},
            "tool_choice.type",
            "Invalid value for `type`",
        ),
    ],
)
def test_bad_requests_name_the_param(tools, tool_choice, param, message):
    with pytest.raises(ToolRequestError) as info:
        check_tools(tools, tool_choice)
    assert info.value.param == param
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_tool_choice_none_still_checks_the_tools():
    with pytest.raises(ToolRequestError):
        check_tools([tool("")], "none")


# schemas


def test_named_tool_schema_is_the_tools_parameters():
    assert named_tool_schema(TOOLS, "get_weather") is WEATHER_PARAMS
    assert named_tool_schema(TOOLS, "ping") == {"type": "object", "properties": {}}
    with pytest.raises(ToolRequestError):
        named_tool_schema(TOOLS, "missing")


def test_required_schema_shape_and_defs_moved_to_the_top():
    schema = required_tools_schema(TOOLS)
    assert schema["type"] == "array" and schema["minItems"] == 1 and "maxItems" not in schema
    assert schema["items"]["type"] == "object"
    weather, ping = schema["items"]["anyOf"]
    assert weather == {
        "properties": {
            "name": {"type": "string", "enum": ["get_weather"]},
            "parameters": {k: v for k, v in WEATHER_PARAMS.items() if k != "$defs"},
        },
        "required": ["name", "parameters"],
    }
    assert ping["properties"]["parameters"] == {"type": "object", "properties": {}}
    assert schema["$defs"] == {"Unit": {"enum": ["c", "f"]}}
    assert "$defs" in WEATHER_PARAMS, "the request's own schema is left as it was"
    json.dumps(schema)


def test_required_schema_single_call_when_parallel_calls_are_off():
    assert required_tools_schema(TOOLS, parallel_tool_calls=False)["maxItems"] == 1


def test_required_schema_without_defs_has_none():
    assert "$defs" not in required_tools_schema([tool("ping")])


def test_same_def_in_two_tools_is_merged_a_different_one_is_an_error():
    same = {"type": "object", "properties": {}, "$defs": {"Unit": {"enum": ["c", "f"]}}}
    schema = required_tools_schema([tool("get_weather", WEATHER_PARAMS), tool("other", same)])
    assert schema["$defs"] == {"Unit": {"enum": ["c", "f"]}}
    clash = {"type": "object", "$defs": {"Unit": {"enum": ["k"]}}}
    with pytest.raises(ValueError, match="Tool definition 'Unit' has multiple schemas"):
        required_tools_schema([tool("get_weather", WEATHER_PARAMS), tool("other", clash)])


# parse_required_output


def test_parse_required_output():
    text = '[{"name": "get_weather", "parameters": {"city": "Zürich"}}, {"name": "ping", "parameters": {}}]'
    assert parse_required_output(text) == [
        ParsedToolCall("get_weather", '{"city": "Zürich"}'),
        ParsedToolCall("ping", "{}"),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "",
        '[{"name": "ping", "parameters": {}}',
        "[]",
        '{"name": "ping", "parameters": {}}',
        '[{"name": "ping"}]',
        '[{"parameters": {}}]',
        '[{"name": "ping", "parameters": 3}]',
        "[1]",
    ],
)
def test_parse_required_output_rejects_bad_text(text):
    with pytest.raises(ValueError):
        parse_required_output(text)


# streamers


def reassemble(deltas) -> list[ParsedToolCall]:
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    for delta in deltas:
        assert delta.content is None
        for piece in delta.tool_calls:
            if piece.name is not None:
                assert piece.id and piece.index == len(names)
                names[piece.index], arguments[piece.index] = piece.name, ""
            if piece.arguments is not None:
                arguments[piece.index] += piece.arguments
    return [ParsedToolCall(names[i], arguments[i]) for i in sorted(names)]


def stream_all(streamer, chunks: list[str]) -> list[ParsedToolCall]:
    deltas = [streamer.stream(chunk) for chunk in chunks]
    deltas.append(streamer.finish())
    return reassemble(deltas)


NAMED_OUTPUT = '{"city": "東京", "unit": "c"}'


def test_named_streamer_sends_the_name_then_the_text_as_arguments():
    streamer = NamedToolStreamer("get_weather")
    first = streamer.stream('{"ci')
    assert first.tool_calls[0].name == "get_weather" and first.tool_calls[0].id.startswith(
        "chatcmpl-tool-"
    )
    assert first.tool_calls[1].arguments == '{"ci'
    assert streamer.stream("").tool_calls == []


@pytest.mark.parametrize("cut", range(len(NAMED_OUTPUT) + 1))
def test_named_streamer_arguments_are_the_raw_output(cut):
    chunks = [NAMED_OUTPUT[:cut], NAMED_OUTPUT[cut:]]
    assert stream_all(NamedToolStreamer("get_weather", "id1"), chunks) == [
        ParsedToolCall("get_weather", NAMED_OUTPUT)
    ]


def test_named_streamer_with_no_output_still_names_the_call():
    assert stream_all(NamedToolStreamer("ping"), []) == [ParsedToolCall("ping", "")]


REQUIRED_OUTPUT = (
    ' [ {"name": "get_weather", "parameters": {"city": "Zürich", "tags": ["a", "}"]}} ,\n'
    '{"parameters": {"nested": {"x": [1, {"y": "\\"q\\""}]}}, "name": "search"}]'
)


def test_required_streamer_matches_parse_at_every_boundary():
    expected = parse_required_output(REQUIRED_OUTPUT)
    assert [c.name for c in expected] == ["get_weather", "search"]
    for cut in range(len(REQUIRED_OUTPUT) + 1):
        chunks = [REQUIRED_OUTPUT[:cut], REQUIRED_OUTPUT[cut:]]
        assert stream_all(RequiredToolStreamer(), chunks) == expected, cut
    assert stream_all(RequiredToolStreamer(), list(REQUIRED_OUTPUT)) == expected


def test_required_streamer_sends_each_call_as_its_item_closes():
    streamer = RequiredToolStreamer(make_call_id=lambda: "id")
    assert streamer.stream('[{"name": "ping", "parameters": {}').tool_calls == []
    delta = streamer.stream('}, {"name"')
    assert [(d.index, d.id, d.name, d.arguments) for d in delta.tool_calls] == [
        (0, "id", "ping", None),
        (0, None, None, "{}"),
    ]


def test_required_streamer_stops_at_a_cut_off_or_bad_item():
    assert stream_all(
        RequiredToolStreamer(), ['[{"name": "ping", "parameters": {}}, {"name": "x", "par']
    ) == [ParsedToolCall("ping", "{}")]
    assert (
        stream_all(RequiredToolStreamer(), ['[{"name": "ping"}, {"name": "x", "parameters": {}}]'])
        == []
    )
    assert stream_all(RequiredToolStreamer(), ["not json"]) == []
