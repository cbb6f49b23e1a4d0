"""Bounds on request shapes that need no model: counts, lengths and numeric ranges."""

from __future__ import annotations

from dataclasses import dataclass

MAX_TOKEN_ID = 2**31 - 1
MIN_SEED = -(2**63)
MAX_SEED = 2**63 - 1
# Characters per token a text prompt may average and still fit the context: real text averages
# 3-6 (SmolLM2: 4.2 on English), the longest single tokens (runs of spaces) reach 64-81.
MAX_CHARS_PER_TOKEN = 32


@dataclass(frozen=True)
class RequestLimits:
    """Caps applied while a request body is decoded; a server may pass its own."""

    max_n: int = 128
    max_tokens: int = 2**20
    max_logprobs: int = 20
    # vLLM's VLLM_MAX_COMPLETION_PROMPTS
    max_prompts: int = 1024
    # prompts x max(n, best_of): the sequences one request may create (chat: one prompt)
    max_seqs_per_request: int = 4096
    # characters of one text prompt, checked before tokenizing: a completions or tokenize
    # `prompt`, or all the text of a chat's `messages`; a server sets MAX_CHARS_PER_TOKEN x its
    # context length (this default: a 128k-token context)
    max_prompt_chars: int = MAX_CHARS_PER_TOKEN * 2**17
    # characters of all the text prompts of one completions request: room for a batch of long
    # prompts; SmolLM2's tokenizer took ~6 s per 4 Mi characters on a loaded 2-core machine
    max_total_prompt_chars: int = 2**24
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
