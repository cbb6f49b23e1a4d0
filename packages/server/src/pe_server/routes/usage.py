"""Token usage of finished engine requests (embeds rows count as prompt tokens)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pe_common.protocol import PromptTokensDetails, Usage

if TYPE_CHECKING:
    from pe_engine.outputs import RequestOutput


def make_usage(finals: Sequence[RequestOutput]) -> Usage:
    prompt_tokens = sum(f.num_prompt_tokens for f in finals)
    completion_tokens = sum(len(c.token_ids) for f in finals for c in f.outputs)
    cached = sum(f.num_cached_tokens or 0 for f in finals)
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )
