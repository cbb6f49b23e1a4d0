"""SamplingParams: vLLM's sampling options, names and defaults, validated when built."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

_SAMPLING_EPS = 1e-5
# The largest constraint a request may carry (schema, regex, grammar or choices, as text).
MAX_CONSTRAINT_CHARS = 64 * 1024
MAX_CHOICES = 1024
_KINDS = ("json", "regex", "choice", "grammar", "json_object")


@dataclass
class StructuredOutputsParams:
    """One constraint on the generated text (vLLM's ``StructuredOutputsParams``, its names).

    Exactly one of ``json`` (a JSON schema, as a dict or its text), ``regex``, ``choice`` (the
    output is one of these strings), ``grammar`` (Lark, or GBNF as llama.cpp writes it) or
    ``json_object`` (any JSON object). ``disable_any_whitespace``: JSON with no whitespace
    between tokens; ``whitespace_pattern``: a regex for the whitespace JSON may use.
    """

    json: dict[str, Any] | str | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None
    # The grammar the server compiled for this request (off the engine thread); not compared.
    compiled: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        given = [kind for kind in _KINDS if getattr(self, kind) not in (None, False)]
        if len(given) != 1:
            raise ValueError(
                "You can only use one kind of structured outputs constraint "
                f"but {'multiple are' if given else 'none is'} specified: {given}."
            )
        if self.choice is not None:
            if not self.choice or not all(isinstance(c, str) for c in self.choice):
                raise ValueError("choice must be a non-empty list of strings.")
            if len(self.choice) > MAX_CHOICES:
                raise ValueError(f"choice may hold at most {MAX_CHOICES} strings.")
        if len(self.spec_text) > MAX_CONSTRAINT_CHARS:
            raise ValueError(
                f"the {self.kind} constraint is over {MAX_CONSTRAINT_CHARS} characters."
            )

    @property
    def kind(self) -> str:
        return next(kind for kind in _KINDS if getattr(self, kind) not in (None, False))

    @functools.cached_property
    def spec_text(self) -> str:
        """The constraint as canonical text: a schema re-serialised without spaces, its keys
        in the order given (the order of ``properties`` is the order the output follows)."""
        value = getattr(self, self.kind)
        if self.kind == "json" and isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                return value  # the compiler names the error
        if isinstance(value, str):
            return value
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

    @property
    def key(self) -> tuple[Any, ...]:
        """What the grammar cache is keyed by: kind, canonical spec and the JSON options."""
        return (
            self.kind,
            self.spec_text,
            self.disable_any_whitespace,
            self.disable_additional_properties,
            self.whitespace_pattern,
        )


@dataclass
class SamplingParams:
    """How to sample one request. Invalid values raise ``ValueError`` naming the field."""

    n: int = 1
    best_of: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    structured_outputs: StructuredOutputsParams | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.top_k == -1:
            self.top_k = 0
        self._check_counts()
        self._check_probabilities()
        self._check_lists()

    def _check_counts(self) -> None:
        _require_int(self.n, "n", minimum=1)
        if self.best_of is not None:
            _require_int(self.best_of, "best_of", minimum=1)
            if self.best_of < self.n:
                raise ValueError(f"best_of must be >= n, got best_of={self.best_of}, n={self.n}.")
        _require_int(self.top_k, "top_k", minimum=0)
        if self.max_tokens is not None:
            _require_int(self.max_tokens, "max_tokens", minimum=1)
        _require_int(self.min_tokens, "min_tokens", minimum=0)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens must be <= max_tokens={self.max_tokens}, got {self.min_tokens}."
            )
        for name in ("logprobs", "prompt_logprobs"):
            if getattr(self, name) is not None:
                _require_int(getattr(self, name), name, minimum=0)
        if self.seed is not None:
            _require_int(self.seed, "seed", minimum=-(2**63))

    def _check_probabilities(self) -> None:
        _require_range(self.temperature, "temperature", 0.0, float("inf"))
        _require_range(self.top_p, "top_p", 0.0, 1.0, low_open=True)
        _require_range(self.min_p, "min_p", 0.0, 1.0)
        _require_range(self.presence_penalty, "presence_penalty", -2.0, 2.0)
        _require_range(self.frequency_penalty, "frequency_penalty", -2.0, 2.0)
        _require_range(self.repetition_penalty, "repetition_penalty", 0.0, float("inf"), True)

    def _check_lists(self) -> None:
        if not all(isinstance(s, str) for s in self.stop):
            raise ValueError("stop must be a string or a list of strings.")
        if any(s == "" for s in self.stop):
            raise ValueError("stop must not contain empty strings.")
        for token_id in self.stop_token_ids:
            _require_int(token_id, "stop_token_ids", minimum=0)

    @property
    def num_candidates(self) -> int:
        """Sequences generated per request: ``best_of`` when given, else ``n``."""
        return self.best_of or self.n

    @property
    def is_greedy(self) -> bool:
        return self.temperature < _SAMPLING_EPS

    @property
    def has_penalties(self) -> bool:
        return (
            self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
            or self.repetition_penalty != 1.0
        )


def _require_int(value: object, name: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")


def _require_range(
    value: object, name: str, low: float, high: float, low_open: bool = False
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    too_low = value <= low if low_open else value < low
    if too_low or value > high or value != value:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value}.")
