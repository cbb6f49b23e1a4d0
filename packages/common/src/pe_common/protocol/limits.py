"""Bounds on request shapes that need no model: counts, lengths and numeric ranges."""

from __future__ import annotations

from dataclasses import dataclass

MAX_TOKEN_ID = 2**31 - 1
MIN_SEED = -(2**63)
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class RequestLimits:
    """Caps applied while a request body is decoded; a server may pass its own."""

    max_n: int = 128
    max_tokens: int = 2**20
    max_logprobs: int = 20
    # vLLM's VLLM_MAX_COMPLETION_PROMPTS
    max_prompts: int = 1024
    # prompts x n: the number of sequences one completions request may create
    max_choices: int = 4096
    max_stop_strings: int = 16
    max_stop_chars: int = 512
    max_stop_token_ids: int = 1024
    max_logit_bias: int = 1024
    max_messages: int = 4096
    max_content_parts: int = 1024
    max_detokenize_tokens: int = 2**20

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"RequestLimits.{name} must be a positive integer")


DEFAULT_LIMITS = RequestLimits()
