"""Checks of a request's ``tools`` / ``tool_choice``, and the JSON schemas that force calls.

For ``tool_choice`` "required" or a named tool, pe takes vLLM's model-agnostic path: the output
is constrained by a JSON schema rather than written in the model's own call syntax. A named
tool's output is its arguments object; "required" produces a JSON array of
``{"name": ..., "parameters": {...}}`` items (vLLM's ``get_json_schema_from_tools``). Messages
follow vLLM's ``ChatCompletionRequest.check_tool_usage`` where it has one.
"""

from __future__ import annotations

import json
from typing import Any

from pe_server.tools.base import ParsedToolCall, dump_arguments

EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
TOOL_CHOICE_MODES = ("none", "auto", "required")
_NAMED_USAGE = 'Correct usage: `{"type": "function", "function": {"name": "my_function"}}`'


class ToolRequestError(ValueError):
    """A request's tools or tool_choice are unusable; ``param`` names the field for the 400."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def check_tools(tools: Any, tool_choice: Any) -> None:
    """Validate ``tools`` and ``tool_choice`` as decoded from the request body (None: absent)."""
    if tools is not None:
        _check_tool_list(tools)
    if tool_choice is None or tool_choice == "none":
        return
    if tools is None:
        raise ToolRequestError("When using `tool_choice`, `tools` must be set.", "tool_choice")
    if isinstance(tool_choice, dict):
        _check_named_choice(tools, tool_choice)
    elif tool_choice not in TOOL_CHOICE_MODES:
        raise ToolRequestError(
            f"Invalid value for `tool_choice`: {tool_choice}! "
            'Only named tools, "none", "auto" or "required" are supported.',
            "tool_choice",
        )


def _check_tool_list(tools: Any) -> None:
    if not isinstance(tools, list) or not tools:
        raise ToolRequestError("`tools` must be a non-empty list of function tools.", "tools")
    names: set[str] = set()
    for index, tool in enumerate(tools):
        name = _check_tool(tool, f"tools[{index}]")
        if name in names:
            raise ToolRequestError(
                f"Tool names must be unique; `{name}` is given more than once.",
                f"tools[{index}].function.name",
            )
        names.add(name)


def _check_tool(tool: Any, param: str) -> str:
    if not isinstance(tool, dict):
        raise ToolRequestError(f"`{param}` must be an object.", param)
    if tool.get("type", "function") != "function":
        raise ToolRequestError(f'`{param}.type` must be "function".', f"{param}.type")
    function = tool.get("function")
    if not isinstance(function, dict):
        raise ToolRequestError(f"`{param}.function` must be an object.", f"{param}.function")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise ToolRequestError(
            f"`{param}.function.name` must be a non-empty string.", f"{param}.function.name"
        )
    for field, kind, label in (
        ("parameters", dict, "an object"),
        ("description", str, "a string"),
        ("strict", bool, "a boolean"),
    ):
        if function.get(field) is not None and not isinstance(function[field], kind):
            raise ToolRequestError(
                f"`{param}.function.{field}` must be {label}.", f"{param}.function.{field}"
            )
    return name


def _check_named_choice(tools: list[dict[str, Any]], tool_choice: dict[str, Any]) -> None:
    kind = tool_choice.get("type", "function")
    if kind != "function":
        raise ToolRequestError(
            f"Invalid value for `type`: `{kind}` in `tool_choice`! {_NAMED_USAGE}",
            "tool_choice.type",
        )
    function = tool_choice.get("function")
    if not isinstance(function, dict):
        raise ToolRequestError(
            f"Invalid value for `function`: `{function}` in `tool_choice`! {_NAMED_USAGE}",
            "tool_choice.function",
        )
    if "name" not in function:
        raise ToolRequestError(
            f"Expected field `name` in `function` in `tool_choice`! {_NAMED_USAGE}",
            "tool_choice.function.name",
        )
    name = function["name"]
    if not isinstance(name, str) or not name:
        raise ToolRequestError(
            f"Invalid `name` in `function`: `{name}` in `tool_choice`! {_NAMED_USAGE}",
            "tool_choice.function.name",
        )
    if not any(tool["function"]["name"] == name for tool in tools):
        raise ToolRequestError(
            "The tool specified in `tool_choice` does not match any of the specified `tools`",
            "tool_choice.function.name",
        )


def named_tool_schema(tools: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The schema a named tool's output must follow: that tool's parameters (the request's own
    dict, not a copy), or an empty object schema when it declares none."""
    for tool in tools:
        if tool["function"]["name"] == name:
            return tool["function"].get("parameters") or EMPTY_PARAMETERS
    raise ToolRequestError(
        "The tool specified in `tool_choice` does not match any of the specified `tools`",
        "tool_choice.function.name",
    )


def required_tools_schema(
    tools: list[dict[str, Any]], parallel_tool_calls: bool = True
) -> dict[str, Any]:
    """The schema for ``tool_choice="required"``: a non-empty array of calls to the given tools.

    Each tool's ``$defs`` move to the top, where its ``#/$defs/...`` references now point;
    two tools defining one name differently is an error. With ``parallel_tool_calls`` False
    the array holds one call (vLLM limits the grammar the same way).
    """
    variants = []
    all_defs: dict[str, Any] = {}
    for tool in tools:
        function = tool["function"]
        parameters = dict(function.get("parameters") or EMPTY_PARAMETERS)
        _merge_defs(all_defs, parameters.pop("$defs", None) or {})
        variants.append(
            {
                "properties": {
                    "name": {"type": "string", "enum": [function["name"]]},
                    "parameters": parameters,
                },
                "required": ["name", "parameters"],
            }
        )
    schema: dict[str, Any] = {
        "type": "array",
        "minItems": 1,
        "items": {"type": "object", "anyOf": variants},
    }
    if not parallel_tool_calls:
        schema["maxItems"] = 1
    if all_defs:
        schema["$defs"] = all_defs
    return schema


def _merge_defs(all_defs: dict[str, Any], defs: dict[str, Any]) -> None:
    for def_name, def_schema in defs.items():
        if def_name in all_defs and all_defs[def_name] != def_schema:
            raise ToolRequestError(
                f"Tool definition '{def_name}' has multiple schemas, which is not supported.",
                "tools",
            )
        all_defs[def_name] = def_schema


def parse_required_output(text: str) -> list[ParsedToolCall]:
    """The calls in an output constrained by ``required_tools_schema``; ValueError if it is not
    such an array (a generation cut short by ``max_tokens``, say)."""
    try:
        items = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"Tool call output is not valid JSON: {exc}") from None
    if not isinstance(items, list) or not items:
        raise ValueError("Tool call output must be a non-empty JSON array.")
    return [_required_call(item) for item in items]


def _required_call(item: Any) -> ParsedToolCall:
    call = required_call_or_none(item)
    if call is None:
        raise ValueError('Each tool call must be an object with a "name" and "parameters".')
    return call


def required_call_or_none(item: Any) -> ParsedToolCall | None:
    """One ``{"name": ..., "parameters": {...}}`` item as a call, or None if it is not one."""
    if not isinstance(item, dict):
        return None
    name, parameters = item.get("name"), item.get("parameters")
    if not isinstance(name, str) or not name or not isinstance(parameters, dict):
        return None
    return ParsedToolCall(name, dump_arguments(parameters))
