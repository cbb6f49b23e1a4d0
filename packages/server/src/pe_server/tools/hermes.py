"""Hermes-style calls (Hermes 2 Pro, Qwen2.5/Qwen3): ``<tool_call>{"name": ..., "arguments":
...}</tool_call>``, any number of them.

As in vLLM: content is the text before the first ``<tool_call>``; a call body is everything up
to the next ``</tool_call>``, or to the end of the output for a last call whose closing tag
never came (vLLM's ``<tool_call>(.*?)</tool_call>|<tool_call>(.*)``), and must be one JSON
object with a string ``name`` and an ``arguments`` key. A call streams whole when its closing
tag arrives (or at the end of the output for an unclosed last call): its JSON is not certain
before, and a call once sent cannot be taken back.
"""

from __future__ import annotations

from typing import ClassVar

from pe_server.tools.base import MarkerSearch, ToolParser, call_tool_name, load_json

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"


class HermesToolParser(ToolParser):
    name: ClassVar[str] = "hermes"
    adjust_skip_special_tokens: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self._open = MarkerSearch(OPEN_TAG)
        self._close_tag = MarkerSearch(CLOSE_TAG)
        self._body: list[str] | None = None  # None: outside a call
        self._is_tag_seen = False

    def _consume(self, text: str) -> None:
        rest: str | None = text
        while rest is not None:
            rest = (
                self._consume_body(rest) if self._body is not None else self._consume_outside(rest)
            )

    def _consume_outside(self, text: str) -> str | None:
        before, after = self._open.feed(text)
        if not self._is_tag_seen:
            self._emit_content(before)  # text between calls is dropped, as in vLLM
        if after is None:
            return None
        if not self._is_tag_seen:
            self._is_tag_seen = True
            self._hold_from(OPEN_TAG + after)
        self._body = []
        return after

    def _consume_body(self, text: str) -> str | None:
        assert self._body is not None
        before, after = self._close_tag.feed(text)
        self._body.append(before)
        if after is None:
            return None
        self._end_call()
        return after

    def _close(self) -> None:
        if self._body is not None:
            self._body.append(self._close_tag.flush())
            self._end_call()
        elif not self._is_tag_seen:
            self._emit_content(self._open.flush())

    def _end_call(self) -> None:
        assert self._body is not None
        call = load_json("".join(self._body))
        self._body = None
        name = call_tool_name(call)
        if name is not None and "arguments" in call:
            self._commit(name, call["arguments"])
