"""Tool calling, text side: parsers that find calls in a model's output (``tool_choice``
"auto"), and the JSON schemas and streamers of the model-agnostic path for "required" and named
tools (vLLM's ``get_json_schema_from_tools`` route).

Parsers are named as vLLM's ``--tool-call-parser`` names them.
"""

from __future__ import annotations

from pe_server.tools.base import (
    ExtractedTools,
    ParsedToolCall,
    StreamDelta,
    ToolCallDelta,
    ToolParser,
)
from pe_server.tools.forced import NamedToolStreamer, RequiredToolStreamer
from pe_server.tools.hermes import HermesToolParser
from pe_server.tools.llama3_json import Llama3JsonToolParser
from pe_server.tools.mistral import MistralToolParser
from pe_server.tools.schema import (
    ToolRequestError,
    check_tools,
    named_tool_schema,
    parse_required_output,
    required_tools_schema,
)

TOOL_PARSERS: dict[str, type[ToolParser]] = {
    parser.name: parser for parser in (HermesToolParser, Llama3JsonToolParser, MistralToolParser)
}


def get_tool_parser(name: str) -> type[ToolParser]:
    """The parser class vLLM knows by ``name`` (``--tool-call-parser``)."""
    try:
        return TOOL_PARSERS[name]
    except KeyError:
        known = ", ".join(sorted(TOOL_PARSERS))
        raise ValueError(f"Unknown tool call parser {name!r}; known parsers: {known}") from None


__all__ = [
    "TOOL_PARSERS",
    "ExtractedTools",
    "HermesToolParser",
    "Llama3JsonToolParser",
    "MistralToolParser",
    "NamedToolStreamer",
    "ParsedToolCall",
    "RequiredToolStreamer",
    "StreamDelta",
    "ToolCallDelta",
    "ToolParser",
    "ToolRequestError",
    "check_tools",
    "get_tool_parser",
    "named_tool_schema",
    "parse_required_output",
    "required_tools_schema",
]
