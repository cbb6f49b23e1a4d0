"""SamplingParams: vLLM's sampling options, names and defaults, validated when built."""

from __future__ import annotations

from dataclasses import dataclass, field

_SAMPLING_EPS = 1e-5


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
