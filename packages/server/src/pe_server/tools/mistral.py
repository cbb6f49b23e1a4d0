"""Mistral calls after ``[TOOL_CALLS]``, in either of Mistral's two formats:

- before tokenizer v11, one JSON array: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``
  (``arguments`` may be missing and is then ``{}``); text after the array is ignored, as vLLM's
  ``raw_decode`` does. Items stream one by one as each closes; the first item that is not a
  call ends the calls.
- from v11 on, one marker per call: ``[TOOL_CALLS]name[ARGS]{...}``. The name is the text up
  to the first ``[`` or ``{`` (which also drops a ``[CALL_ID]...`` part), the arguments the JSON
  object that follows; a piece that is not a call is skipped.

vLLM picks the format from the tokenizer version; pe reads it from the first character after
the marker (``[`` means the array). Content is the text before the first marker. Ids are
Mistral's: 9 letters and digits (vLLM's MistralToolCall.generate_random_id).
"""

from __future__ import annotations

import random
import string
from typing import ClassVar

from pe_server.tools.base import MarkerSearch, PartialJson, ToolParser, call_tool_name

TOOL_CALLS = "[TOOL_CALLS]"
_ID_ALPHABET = string.ascii_letters + string.digits
_WHITESPACE = " \t\r\n"


class MistralToolParser(ToolParser):
    name: ClassVar[str] = "mistral"
    adjust_skip_special_tokens: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self._marker = MarkerSearch(TOOL_CALLS)
        self._mode = "content"  # content -> pick -> array | pieces
        self._is_item_next = True  # array: an item (or "]") may come next, not a separator
        self._name: list[str] = []
        self._object: PartialJson | None = None
        self._is_piece_over = False  # pieces: the current piece's call is complete or spoiled

    @staticmethod
    def make_call_id() -> str:
        return "".join(random.choices(_ID_ALPHABET, k=9))

    def _consume(self, text: str) -> None:
        if self._mode == "content":
            before, after = self._marker.feed(text)
            self._emit_content(before)
            if after is None:
                return
            self._hold_from(TOOL_CALLS + after)
            self._mode, text = "pick", after
        if self._mode == "pick":
            text = text.lstrip(_WHITESPACE)
            if not text:
                return
            self._mode = "array" if text[0] == "[" else "pieces"
            text = text[1:] if self._mode == "array" else text
        if self._mode == "array":
            self._consume_array(text)
        else:
            self._consume_pieces(text)

    def _consume_array(self, text: str) -> None:
        pos = 0
        while pos < len(text) and not self._is_done and not self._is_passthrough:
            if self._object is not None:
                pos = self._feed_object(text, pos)
                continue
            char = text[pos]
            pos += 1
            if char in _WHITESPACE:
                continue
            if char == "{" and self._is_item_next:
                self._object = PartialJson()
                pos = self._feed_object(text, pos - 1)
            elif char == "," and not self._is_item_next:
                self._is_item_next = True
            else:
                self._give_up()  # "]" or anything else: no more calls

    def _feed_object(self, text: str, pos: int) -> int:
        assert self._object is not None
        end = self._object.feed(text[pos:])
        if end is None:
            return len(text)
        call = self._object.load()
        self._object = None
        if self._mode == "array":
            self._end_item(call)
        else:
            self._end_piece_call(call)
        return pos + end

    def _end_item(self, call: object) -> None:
        name = call_tool_name(call)
        if name is None:
            self._give_up()
            return
        assert isinstance(call, dict)
        self._commit(name, call.get("arguments", {}))
        self._is_item_next = False

    def _consume_pieces(self, text: str) -> None:
        before, after = self._marker.feed(text)
        self._feed_piece(before)
        while after is not None:
            self._start_piece()
            before, after = self._marker.feed(after)
            self._feed_piece(before)

    def _start_piece(self) -> None:
        self._name, self._object, self._is_piece_over = [], None, False

    def _feed_piece(self, text: str) -> None:
        if self._is_piece_over or not text:
            return
        if self._object is None:
            brace = text.find("{")
            if brace < 0:
                self._name.append(text)
                return
            self._name.append(text[:brace])
            self._object = PartialJson()
            text = text[brace:]
        self._feed_object(text, 0)

    def _end_piece_call(self, call: object) -> None:
        self._is_piece_over = True
        name = "".join(self._name).split("[", 1)[0].strip()
        if name and isinstance(call, dict):
            self._commit(name, call)

    def _close(self) -> None:
        if self._mode == "content":
            self._emit_content(self._marker.flush())
        elif self._mode == "pieces":
            self._feed_piece(self._marker.flush())
