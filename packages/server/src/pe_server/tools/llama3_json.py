"""Llama 3.x JSON calls: an optional ``<|python_tag|>``, then one or more JSON objects
``{"name": ..., "parameters": {...}}`` (``"arguments"`` is accepted too) separated by ``;`` or
whitespace.

The output counts as calls only when it starts (after whitespace) with ``<|python_tag|>`` or
``{``, as in vLLM; then there is no content. Objects are read in order; each streams whole once
its closing brace arrives and it parses as a call. The first thing that is not a call ends the
calls: if none came before it, the whole output is content (sent from then on as it comes),
otherwise the rest is dropped.
"""

from __future__ import annotations

from typing import ClassVar

from pe_server.tools.base import PartialJson, ToolParser, call_tool_name

PYTHON_TAG = "<|python_tag|>"
_SEPARATORS = frozenset(" \t\r\n;")


class Llama3JsonToolParser(ToolParser):
    name: ClassVar[str] = "llama3_json"

    def __init__(self) -> None:
        super().__init__()
        self._head: list[str] = []  # raw text while it is unknown whether calls follow
        self._lead = ""  # the head without leading whitespace (a few characters at most)
        self._is_decided = False
        self._object: PartialJson | None = None

    def _consume(self, text: str) -> None:
        if not self._is_decided:
            self._decide(text)
        elif text:
            self._consume_calls(text)

    def _decide(self, text: str) -> None:
        self._head.append(text)
        self._lead = (self._lead + text) if self._lead else text.lstrip()
        if not self._lead or (
            len(self._lead) < len(PYTHON_TAG) and PYTHON_TAG.startswith(self._lead)
        ):
            return
        self._is_decided = True
        if self._lead.startswith(PYTHON_TAG):
            rest = self._lead[len(PYTHON_TAG) :]
        elif self._lead.startswith("{"):
            rest = self._lead
        else:
            self._emit_content("".join(self._head))
            self._is_passthrough = True
            return
        self._hold_from("".join(self._head))
        if rest:
            self._consume_calls(rest)

    def _consume_calls(self, text: str) -> None:
        pos = 0
        while pos < len(text) and not (self._is_done or self._is_passthrough):
            if self._object is None:
                while pos < len(text) and text[pos] in _SEPARATORS:
                    pos += 1
                if pos == len(text):
                    return
                if text[pos] != "{":
                    self._give_up()
                    return
                self._object = PartialJson()
            end = self._object.feed(text[pos:])
            if end is None:
                return
            pos += end
            self._end_call()

    def _end_call(self) -> None:
        assert self._object is not None
        call = self._object.load()
        self._object = None
        name = call_tool_name(call)
        key = "arguments" if isinstance(call, dict) and "arguments" in call else "parameters"
        if name is None or key not in call:
            self._give_up()
            return
        self._commit(name, call[key])

    def _close(self) -> None:
        if not self._is_decided:
            self._emit_content("".join(self._head))
        elif self._object is not None:
            self._give_up()  # an object cut off by the end of the output is not a call
