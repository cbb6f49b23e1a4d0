"""A chat request's tools: what the template sees, the constraint ``tool_choice`` forces, and
how the output becomes ``tool_calls``, whole or streamed.

As vLLM: ``tool_choice`` defaults to "auto" with tools and "none" without; "auto" parses the
model's own call syntax with ``--tool-call-parser`` (and needs ``--enable-auto-tool-choice``);
"required" and a named tool constrain the output to a JSON schema built from the tools (any
model, any backend that constrains). ``finish_reason`` is "tool_calls" when "auto" or
"required" called a tool and the engine stopped, "stop" for a named tool (as OpenAI answers).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pe_common.protocol import (
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    FunctionCall,
    ToolCall,
)
from pe_server.errors import APIError
from pe_server.structured import Constraint, make_params
from pe_server.tools import (
    NamedToolStreamer,
    ParsedToolCall,
    RequiredToolStreamer,
    StreamDelta,
    ToolParser,
    ToolRequestError,
    check_tools,
    get_tool_parser,
    named_tool_schema,
    parse_required_output,
    required_tools_schema,
)

if TYPE_CHECKING:
    from pe_common.protocol import ChatCompletionRequest
    from pe_server.config import ServerConfig

# The tool definitions one request may send (they are rendered into the prompt).
MAX_TOOLS = 128
MAX_TOOLS_BYTES = 256 * 1024
AUTO_NEEDS_FLAGS = (
    '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
)

Mode = Literal["none", "auto", "required", "named"]


class Streamer(Protocol):
    def stream(self, delta_text: str) -> StreamDelta: ...

    def finish(self) -> StreamDelta: ...


def bad_tools(message: str, param: str) -> APIError:
    return APIError.bad_request(message, code="invalid_parameter", param=param)


@dataclass(frozen=True)
class ToolPlan:
    """How one chat request uses its tools."""

    mode: Mode
    tools: list[dict[str, Any]] | None = None  # what the chat template gets
    name: str | None = None  # the named tool
    parser: type[ToolParser] | None = None  # "auto"
    parallel: bool = True

    @classmethod
    def of(cls, req: ChatCompletionRequest, config: ServerConfig) -> ToolPlan:
        """The plan of ``req``; a 400 naming the field for unusable tools or choices."""
        try:
            check_tools(req.tools, req.tool_choice)
        except ToolRequestError as exc:
            raise bad_tools(str(exc), exc.param) from None
        tools = req.tools
        if tools is not None and (
            len(tools) > MAX_TOOLS or len(json.dumps(tools)) > MAX_TOOLS_BYTES
        ):
            raise APIError.bad_request(
                f"`tools` may hold at most {MAX_TOOLS} tools and {MAX_TOOLS_BYTES} bytes of JSON.",
                code="too_many_inputs",
                param="tools",
            )
        choice = req.tool_choice if req.tool_choice is not None else ("auto" if tools else "none")
        parallel = req.parallel_tool_calls is not False
        if choice == "none" or not tools:
            shown = None if config.exclude_tools_when_tool_choice_none else tools
            return cls("none", shown)
        if choice == "auto":
            if not config.enable_auto_tool_choice or config.tool_call_parser is None:
                raise bad_tools(AUTO_NEEDS_FLAGS, "tool_choice")
            return cls(
                "auto", tools, parser=get_tool_parser(config.tool_call_parser), parallel=parallel
            )
        if choice == "required":
            return cls("required", tools, parallel=parallel)
        assert isinstance(choice, dict)
        return cls("named", tools, name=choice["function"]["name"], parallel=parallel)

    @property
    def skips_special_tokens(self) -> bool:
        """False where the parser's call markers are special tokens (hermes, mistral)."""
        return not (self.parser is not None and self.parser.adjust_skip_special_tokens)

    def constraint(self, config: ServerConfig) -> Constraint | None:
        """The schema "required" and named tools force on the output (None otherwise)."""
        assert self.tools is not None or self.mode in ("none", "auto")
        try:
            if self.mode == "required":
                schema = required_tools_schema(self.tools or [], self.parallel)
            elif self.mode == "named":
                schema = named_tool_schema(self.tools or [], self.name or "")
            else:
                return None
        except ToolRequestError as exc:
            raise bad_tools(str(exc), exc.param) from None
        # Only the declared keys (vLLM's xgrammar compiles these schemas in strict mode).
        fields = {"json": schema, "disable_additional_properties": True}
        return make_params(fields, "tools", config.structured_outputs_config)

    def make_call_id(self) -> str:
        return (self.parser or ToolParser).make_call_id()

    def extract(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """A whole output as (content, tool_calls)."""
        if self.mode == "none":
            return text, []
        calls: list[ParsedToolCall]
        content: str | None
        if self.mode == "auto":
            assert self.parser is not None
            found = self.parser.extract(text)
            content, calls = found.content, found.calls
        elif self.mode == "named":
            content, calls = "", [ParsedToolCall(self.name or "", text)]
        else:
            try:
                content, calls = "", parse_required_output(text)
            except ValueError:  # cut short (length): what came is content
                content, calls = text, []
        if not self.parallel:
            calls = calls[:1]
        return content, [
            ToolCall(
                id=self.make_call_id(), function=FunctionCall(name=c.name, arguments=c.arguments)
            )
            for c in calls
        ]

    def streamer(self) -> Streamer | None:
        """One choice's stream of content and call pieces (None: plain content)."""
        if self.mode == "auto":
            assert self.parser is not None
            return self.parser()
        if self.mode == "required":
            return RequiredToolStreamer(self.make_call_id)
        if self.mode == "named":
            return NamedToolStreamer(self.name or "", self.make_call_id())
        return None

    def finish_reason(self, engine_reason: str | None, called: bool) -> str | None:
        if engine_reason == "stop" and called and self.mode in ("auto", "required"):
            return "tool_calls"
        return engine_reason


def wire_delta(delta: StreamDelta, *, parallel: bool) -> DeltaMessage:
    """A streamer's piece as the chunk's delta (OpenAI's shape); with ``parallel_tool_calls``
    false only call 0 is sent."""
    calls = [
        DeltaToolCall(
            index=c.index,
            id=c.id,
            type="function" if c.id is not None else None,
            function=DeltaFunctionCall(
                name=c.name,
                arguments=c.arguments if c.arguments is not None else ("" if c.name else None),
            ),
        )
        for c in delta.tool_calls
        if parallel or c.index == 0
    ]
    return DeltaMessage(content=delta.content or None, tool_calls=calls or None)


def merge(first: StreamDelta, second: StreamDelta) -> StreamDelta:
    content = (first.content or "") + (second.content or "")
    return StreamDelta(content or None, [*first.tool_calls, *second.tool_calls])
