"""What the vLLM backends refuse before a request reaches vLLM (known vLLM limits)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pe_server.errors import APIError

if TYPE_CHECKING:
    from pe_engine.prompt import Prompt
    from pe_engine.sampling_params import SamplingParams

PENALTY_MESSAGE = (
    "presence, frequency and repetition penalties are not supported with prompt_embeds on the "
    "vLLM backends (vLLM issue #57719 kills the engine); use --backend native for them."
)


def check_vllm_request(prompt: Prompt, params: SamplingParams) -> None:
    """Raises a 400 APIError for what vLLM cannot do safely with this prompt."""
    if prompt.prompt_embeds is not None and params.has_penalties:
        raise APIError.bad_request(PENALTY_MESSAGE, code="unsupported", param="sampling_params")
