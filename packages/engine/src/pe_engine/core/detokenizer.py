"""Incremental detokenization and stop-string search (vLLM's prefix/read-offset scheme)."""

from __future__ import annotations

from typing import Any

# Prompt tokens kept as left context so the first output token decodes with the right spacing.
INITIAL_OFFSET = 5


class IncrementalDetokenizer:
    """Turns sampled token ids into text one token at a time and finds stop strings.

    Text is emitted only once it no longer ends in a half UTF-8 character ("\\ufffd"), and
    stop strings are searched in the new text plus the overlap a match could straddle.
    """

    def __init__(
        self,
        tokenizer: Any | None,
        context_ids: list[int],
        *,
        skip_special_tokens: bool = True,
        stop: list[str] | None = None,
        include_stop_str_in_output: bool = False,
        min_tokens: int = 0,
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.stop = [s for s in (stop or []) if s]
        self.include_stop_str_in_output = include_stop_str_in_output
        self.min_tokens = min_tokens
        self.tokens = self._to_tokens(context_ids[-(INITIAL_OFFSET + 2) :])
        self.read_offset = len(self.tokens)
        self.prefix_offset = max(self.read_offset - INITIAL_OFFSET, 0)
        self.num_output_tokens = 0
        max_stop_len = max((len(s) for s in self.stop), default=0)
        # Held back while streaming so a partial stop string is never shown.
        self.stop_buffer_length = 0
        if self.stop and not include_stop_str_in_output:
            self.stop_buffer_length = max_stop_len - 1
        # Text decoded but not taken yet (the new text, plus at most the stop buffer), and the
        # last taken characters a stop string may begin in: both bounded, so a step costs the
        # same however long the output already is.
        self._pending = ""
        self._context = ""
        self._context_length = max(max_stop_len - 1, 0)

    def update(self, token_id: int, is_stop_token: bool = False) -> str | None:
        """Add one sampled token; return the stop string it completed, if any.

        ``is_stop_token``: the token ended the sequence (EOS or a stop token id); its text is
        left out unless ``include_stop_str_in_output``.
        """
        self.num_output_tokens += 1
        if is_stop_token and not self.include_stop_str_in_output:
            return None
        new_text = self._decode_next(token_id)
        self._pending += new_text
        if not new_text or not self.stop or self.num_output_tokens <= self.min_tokens:
            return None
        return self._check_stop_strings(len(new_text))

    def take_text(self, finished: bool) -> str:
        """The text not taken yet: all of it once finished, else minus the stop-string buffer."""
        keep = 0 if finished else self.stop_buffer_length
        cut = max(len(self._pending) - keep, 0)
        text, self._pending = self._pending[:cut], self._pending[cut:]
        if text and self._context_length:
            self._context = (self._context + text)[-self._context_length :]
        return text

    def _to_tokens(self, token_ids: list[int]) -> list[str]:
        if self.tokenizer is None:  # token-only use (tests, tokenizer-less engines)
            return []
        tokens = self.tokenizer.convert_ids_to_tokens(
            token_ids, skip_special_tokens=self.skip_special_tokens
        )
        if isinstance(tokens, str):
            tokens = [tokens]
        return [t for t in tokens if t is not None]

    def _decode_next(self, token_id: int) -> str:
        self.tokens.extend(self._to_tokens([token_id]))
        if self.tokenizer is None:
            return ""
        convert = self.tokenizer.convert_tokens_to_string
        prefix_text = convert(self.tokens[self.prefix_offset : self.read_offset])
        new_text: str = convert(self.tokens[self.prefix_offset :])
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return ""  # wait for the rest of a multi-byte character
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.tokens)
        return new_text[len(prefix_text) :]

    def _check_stop_strings(self, num_new_chars: int) -> str | None:
        text = self._context + self._pending
        for stop_str in self.stop:
            # Search only where a match could end inside the new characters.
            start = max(len(text) - num_new_chars - len(stop_str) + 1, 0)
            index = text.find(stop_str, start)
            if index == -1:
                continue
            if self.include_stop_str_in_output:
                index += len(stop_str)
            # Taken text never holds a stop string's start: the buffer kept it back.
            assert index >= len(self._context)
            self._pending = text[len(self._context) : index]
            return stop_str
        return None


def decode_token(tokenizer: Any, token_id: int) -> str:
    """Text of one token, as reported next to a logprob."""
    return str(tokenizer.decode([token_id]))
