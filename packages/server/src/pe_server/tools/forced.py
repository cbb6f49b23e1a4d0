"""Streaming of calls that ``tool_choice`` forces ("required" or a named tool), whose output
is constrained by the schemas in ``pe_server.tools.schema``.

A named tool's output is its arguments, so every piece of text is an arguments fragment and
the non-streamed ``arguments`` is the raw output text (as vLLM returns it). A "required" output
is a JSON array of ``{"name", "parameters"}`` items; each item streams whole once its closing
brace arrives, with ``arguments`` = ``json.dumps(parameters, ensure_ascii=False)``, exactly
what ``parse_required_output`` gives for the finished text.
"""

from __future__ import annotations

from collections.abc import Callable

from pe_server.tools.base import PartialJson, StreamDelta, ToolCallDelta, ToolParser
from pe_server.tools.schema import required_call_or_none

_WHITESPACE = " \t\r\n"


class NamedToolStreamer:
    """Streams a named tool's constrained output as call 0's arguments."""

    def __init__(self, name: str, call_id: str | None = None) -> None:
        self.name = name
        self.call_id = call_id or ToolParser.make_call_id()
        self._is_name_sent = False

    def stream(self, delta_text: str) -> StreamDelta:
        delta = StreamDelta(None, self._name_delta())
        if delta_text:
            delta.tool_calls.append(ToolCallDelta(0, arguments=delta_text))
        return delta

    def finish(self) -> StreamDelta:
        """Sends the name if no text ever came (the arguments are then the empty output)."""
        return StreamDelta(None, self._name_delta())

    def _name_delta(self) -> list[ToolCallDelta]:
        if self._is_name_sent:
            return []
        self._is_name_sent = True
        return [ToolCallDelta(0, id=self.call_id, name=self.name)]


class RequiredToolStreamer:
    """Streams the calls of a ``tool_choice="required"`` output as its array items close.

    Anything that is not such an array (only possible when the generation is cut short or
    unconstrained) ends the calls; there is never content.
    """

    def __init__(self, make_call_id: Callable[[], str] = ToolParser.make_call_id) -> None:
        self._make_call_id = make_call_id
        self._state = "start"  # start -> item (an item may come) | separator -> done
        self._item: PartialJson | None = None
        self._num_calls = 0

    def stream(self, delta_text: str) -> StreamDelta:
        delta = StreamDelta(None, [])
        pos = 0
        while pos < len(delta_text) and self._state != "done":
            if self._item is not None:
                pos = self._feed_item(delta_text, pos, delta)
                continue
            char = delta_text[pos]
            pos += 1
            if char in _WHITESPACE:
                continue
            if self._state == "start" and char == "[":
                self._state = "item"
            elif self._state == "item" and char == "{":
                self._item = PartialJson()
                pos -= 1
            elif self._state == "separator" and char == ",":
                self._state = "item"
            else:
                self._state = "done"
        return delta

    def finish(self) -> StreamDelta:
        """Nothing is held back but an unfinished item, which is not a call."""
        self._state = "done"
        return StreamDelta(None, [])

    def _feed_item(self, text: str, pos: int, delta: StreamDelta) -> int:
        assert self._item is not None
        end = self._item.feed(text[pos:])
        if end is None:
            return len(text)
        call = required_call_or_none(self._item.load())
        self._item = None
        if call is None:
            self._state = "done"
        else:
            index, self._num_calls = self._num_calls, self._num_calls + 1
            delta.tool_calls.append(ToolCallDelta(index, id=self._make_call_id(), name=call.name))
            delta.tool_calls.append(ToolCallDelta(index, arguments=call.arguments))
            self._state = "separator"
        return pos + end
