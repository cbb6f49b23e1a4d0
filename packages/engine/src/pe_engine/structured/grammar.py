"""Constraints -> llguidance grammars, compiled once per distinct spec and cached.

A compile validates the grammar against the model's tokenizer and computes its first token
mask (which builds the lexer), inside llguidance's size and fuel limits, so a hostile schema,
regex or grammar fails here - on whatever thread compiles it, never the engine thread when the
server compiled it first - with the compiler's message. Sequences then take cheap copies of the
compiled matcher (:meth:`CompiledGrammar.new_matcher`).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pe_engine.sampling_params import StructuredOutputsParams

_CACHE_SIZE = 256


class GrammarError(ValueError):
    """A constraint that cannot be compiled; the message is the compiler's."""


class GrammarMatcher:
    """One sequence's position in its grammar: which tokens may come next, and the tokens
    taken so far (advanced with :meth:`accept`)."""

    def __init__(self, matcher: Any) -> None:
        self.matcher = matcher
        self.error_logged = False

    def accept(self, token_id: int) -> None:
        """Advance past a sampled token. A token the grammar refused (only possible when
        something outside the mask chose it) leaves the matcher in its error state, in which
        it allows only end-of-sequence."""
        self.matcher.consume_token(token_id)

    @property
    def is_stopped(self) -> bool:
        """The grammar is complete and can take nothing more than end-of-sequence."""
        return bool(self.matcher.is_stopped() or self.matcher.is_error())


class CompiledGrammar:
    """A validated grammar; every sequence that uses it gets its own copy of the matcher."""

    def __init__(self, matcher: Any) -> None:
        self._matcher = matcher

    def new_matcher(self) -> GrammarMatcher:
        return GrammarMatcher(self._matcher.deep_copy())


class GrammarCompiler:
    """Compiles constraints for one model's tokenizer and vocabulary (the logits' width,
    padding included, so padded ids are never allowed). Thread-safe."""

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int,
        eos_token_ids: Iterable[int],
        *,
        cache_size: int = _CACHE_SIZE,
    ) -> None:
        self._hf_tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._eos_token_ids = sorted(eos_token_ids)
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[Any, ...], CompiledGrammar] = OrderedDict()
        self._cache_size = cache_size

    def cached(self, params: StructuredOutputsParams) -> CompiledGrammar | None:
        """The compiled grammar of ``params`` if it is at hand (no compile; microseconds)."""
        if isinstance(params.compiled, CompiledGrammar):
            return params.compiled
        with self._lock:
            found = self._cache.get(params.key)
            if found is not None:
                self._cache.move_to_end(params.key)
            return found

    def compile(self, params: StructuredOutputsParams) -> CompiledGrammar:
        """The compiled grammar of ``params``: the one the server attached, a cached one, or a
        new compile. Raises :class:`GrammarError` with the compiler's message."""
        found = self.cached(params)
        if found is not None:
            return found
        compiled = self._compile(params)
        with self._lock:
            self._cache[params.key] = compiled
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return compiled

    def llg_tokenizer(self) -> Any:
        """llguidance's view of the tokenizer, built once (about half a second)."""
        with self._lock:
            if self._tokenizer is None:
                import llguidance.hf

                self._tokenizer = llguidance.hf.from_tokenizer(
                    self._hf_tokenizer, n_vocab=self.vocab_size, eos_token=self._eos_token_ids
                )
            return self._tokenizer

    def _compile(self, params: StructuredOutputsParams) -> CompiledGrammar:
        import llguidance
        import llguidance.numpy

        grammar = grammar_text(params)
        matcher = llguidance.LLMatcher(self.llg_tokenizer(), grammar, log_level=0)
        if not matcher.is_error():
            # the first mask builds the lexer: a grammar too large for the limits fails now
            bitmask = llguidance.numpy.allocate_token_bitmask(1, self.vocab_size)
            llguidance.numpy.fill_next_token_bitmask(matcher, bitmask, 0)
            if not matcher.is_error() and not np.any(bitmask):
                raise GrammarError("the grammar allows no token at all.")
        if matcher.is_error():
            raise GrammarError(_clean(matcher.get_error()))
        return CompiledGrammar(matcher)


def grammar_text(params: StructuredOutputsParams) -> str:
    """The llguidance grammar of a constraint (vLLM's guidance backend's mapping)."""
    from llguidance import LLMatcher, grammar_from

    kind = params.kind
    try:
        if kind in ("json", "json_object"):
            schema = params.spec_text if kind == "json" else '{"type": "object"}'
            if params.disable_additional_properties:
                schema = json.dumps(_no_additional_properties(json.loads(schema)))
            defaults: dict[str, Any] = {"whitespace_flexible": not params.disable_any_whitespace}
            if params.whitespace_pattern is not None:
                defaults["whitespace_pattern"] = params.whitespace_pattern
            return str(LLMatcher.grammar_from_json_schema(schema, defaults=defaults))
        if kind == "choice":
            return str(grammar_from("choice", json.dumps(params.choice)))
        if kind == "regex":
            return str(grammar_from("regex", params.spec_text))
        return str(grammar_from("grammar", params.spec_text))
    except (ValueError, TypeError, RuntimeError) as exc:
        raise GrammarError(_clean(str(exc))) from None


def _no_additional_properties(schema: Any) -> Any:
    """``additionalProperties: false`` on every schema that lists ``properties`` and does not
    set it (an object schema without properties, or one whose ``anyOf`` branches list them,
    stays as it is: closing it would allow only ``{}``)."""
    if isinstance(schema, dict):
        out = {key: _no_additional_properties(value) for key, value in schema.items()}
        if "properties" in out:
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [_no_additional_properties(item) for item in schema]
    return schema


def _clean(message: str) -> str:
    """The compiler's message, bounded (it may quote the request's grammar)."""
    message = message.strip()
    return message if len(message) <= 1000 else message[:1000] + "..."
