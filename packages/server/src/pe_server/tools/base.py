"""The text side of tool calling: result types and the parser base class.

A parser is a small state machine fed the generated text piece by piece. It *commits* a call
only once the call is certain (its JSON is complete and valid), so what ``stream`` has emitted
is always a prefix of what ``extract`` returns for the whole text; ``extract`` itself is the
same machine fed the whole text at once. Each piece of text is looked at a bounded number of
times (a held-back marker prefix, one ``json.loads`` per call), so streaming costs work
proportional to the delta, never to the output so far.

Arguments are always ``json.dumps(parsed_arguments, ensure_ascii=False)``, as vLLM returns them
from its non-streaming path; streaming sends that same string as one fragment when the call
commits, so the fragments of a call concatenate to exactly the non-streamed ``arguments``.

When the text holds no valid call, everything is content, as in vLLM. Unlike vLLM's
all-or-nothing non-streaming parse, a malformed call next to valid ones is dropped rather than
turning the whole output into content: a call already streamed cannot be taken back, and the
non-streamed answer must equal the streamed one.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class ParsedToolCall:
    """One complete call: the function name and its arguments as a JSON string."""

    name: str
    arguments: str


@dataclass
class ExtractedTools:
    """A whole output split into content and calls; no calls means the text is all content."""

    content: str | None
    calls: list[ParsedToolCall] = field(default_factory=list)


@dataclass
class ToolCallDelta:
    """One piece of a streamed call: the first carries ``id`` and ``name``, later ones
    ``arguments`` fragments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str | None = None


@dataclass
class StreamDelta:
    """What one piece of generated text adds to the message."""

    content: str | None = None
    tool_calls: list[ToolCallDelta] = field(default_factory=list)


def dump_arguments(value: Any) -> str:
    """Arguments as the wire carries them (vLLM keeps non-ASCII characters as they are)."""
    return json.dumps(value, ensure_ascii=False)


def load_json(text: str) -> Any:
    """``json.loads`` that answers None for text that is not JSON (model output may be junk)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def call_tool_name(value: Any) -> str | None:
    """The ``name`` of a call object, or None when the object cannot be a call."""
    if not isinstance(value, dict):
        return None
    name = value.get("name")
    return name if isinstance(name, str) and name else None


class MarkerSearch:
    """Finds a marker (a tag such as ``<tool_call>``) in text that arrives piece by piece.

    ``feed`` answers the text that is certainly not part of the marker and, once the marker
    is seen, the text after it; a suffix that could still become the marker is held back.
    """

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self._held = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        window = self._held + text
        index = window.find(self.marker)
        if index >= 0:
            self._held = ""
            return window[:index], window[index + len(self.marker) :]
        keep = _marker_prefix_overlap(window, self.marker)
        self._held = window[len(window) - keep :]
        return window[: len(window) - keep], None

    def flush(self) -> str:
        """The held-back text, once the output has ended without completing the marker."""
        held, self._held = self._held, ""
        return held


def _marker_prefix_overlap(text: str, marker: str) -> int:
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0


_JSON_SPECIAL = re.compile(r'["\\{}\[\]]')


class JsonEnd:
    """Finds where a JSON object or array ends, fed piece by piece from its opening bracket.

    It matches brackets outside strings only; whether the text between is valid JSON is left
    to one ``json.loads`` of the finished text.
    """

    def __init__(self) -> None:
        self._depth = 0
        self._in_string = False
        self._escaped = False

    def feed(self, text: str) -> int | None:
        """The index just past the closing bracket within ``text``, or None if still open."""
        pos = 0
        if self._escaped and text:
            self._escaped, pos = False, 1
        while match := _JSON_SPECIAL.search(text, pos):
            char, pos = match.group(), match.end()
            if self._in_string:
                if char == "\\":
                    if pos >= len(text):
                        self._escaped = True
                        return None
                    pos += 1
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                if self._depth <= 0:
                    return pos
        return None


class PartialJson:
    """One JSON object or array received piece by piece from its opening bracket, until its
    closing bracket arrives."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._end = JsonEnd()

    def feed(self, text: str) -> int | None:
        """Takes ``text`` up to the closing bracket: the index just past it, or None if the
        value is still open (all of ``text`` was taken)."""
        end = self._end.feed(text)
        self._parts.append(text if end is None else text[:end])
        return end

    def load(self) -> Any:
        """The finished value; None for text that is not JSON."""
        return load_json("".join(self._parts))


class ToolParser:
    """Splits a model's output into content and tool calls, whole or streamed.

    Subclasses implement ``_consume`` (take the next piece of text) and ``_close`` (the output
    has ended) and report through ``_emit_content``, ``_commit`` and ``_give_up``. One
    instance serves one choice of one request; ``extract`` needs none.
    """

    name: ClassVar[str]
    #: True when the server must decode with ``skip_special_tokens=False`` while tools are on,
    #: because the call markers are special tokens in some tokenizers (vLLM's adjust_request).
    adjust_skip_special_tokens: ClassVar[bool] = False

    def __init__(self) -> None:
        self._content: list[str] = []
        self._calls: list[ParsedToolCall] = []
        self._num_calls = 0
        self._num_sent = 0
        # Raw text from the first call marker on, kept while no call has committed: it becomes
        # content if none ever does.
        self._fallback: list[str] | None = None
        self._is_passthrough = False
        self._is_done = False

    @classmethod
    def extract(cls, text: str) -> ExtractedTools:
        """Parse a whole output; never raises on malformed model output."""
        parser = cls()
        parser._take(text)
        parser._end()
        content = "".join(parser._content)
        if parser._calls:
            return ExtractedTools(content or None, parser._calls)
        return ExtractedTools(content, [])

    @staticmethod
    def make_call_id() -> str:
        return f"chatcmpl-tool-{uuid.uuid4().hex}"

    def stream(self, delta_text: str) -> StreamDelta:
        """Take the next piece of generated text; answer what can be sent for it now."""
        self._take(delta_text)
        return self._drain()

    def finish(self) -> StreamDelta:
        """The output has ended: send what was held back (a partial marker, an unclosed call)."""
        self._end()
        return self._drain()

    def _take(self, text: str) -> None:
        if self._is_passthrough:
            self._emit_content(text)
        elif not self._is_done:
            if self._fallback is not None:
                self._fallback.append(text)
            self._consume(text)

    def _end(self) -> None:
        if not (self._is_passthrough or self._is_done):
            self._close()
        if self._fallback is not None and not self._num_calls:
            self._emit_content("".join(self._fallback))
        self._fallback = None
        self._is_done = True

    def _consume(self, text: str) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _hold_from(self, raw: str) -> None:
        """The first call marker was seen: keep the raw text from it on as possible content."""
        if self._fallback is None and not self._num_calls:
            self._fallback = [raw]

    def _emit_content(self, text: str) -> None:
        if text:
            self._content.append(text)

    def _commit(self, name: str, arguments: Any) -> None:
        self._calls.append(ParsedToolCall(name, dump_arguments(arguments)))
        self._num_calls += 1
        self._fallback = None

    def _give_up(self) -> None:
        """No further call can follow: the rest is content if nothing was called, else dropped."""
        if self._num_calls:
            self._is_done = True
            return
        if self._fallback is not None:
            self._emit_content("".join(self._fallback))
            self._fallback = None
        self._is_passthrough = True

    def _drain(self) -> StreamDelta:
        delta = StreamDelta("".join(self._content) or None, [])
        self._content.clear()
        for call in self._calls[self._num_sent :]:
            index = self._num_sent
            delta.tool_calls.append(ToolCallDelta(index, id=self.make_call_id(), name=call.name))
            delta.tool_calls.append(ToolCallDelta(index, arguments=call.arguments))
            self._num_sent += 1
        return delta
