"""Request fields -> the engine's SamplingParams.

Ranges and counts were checked when the body was decoded (pe_common.protocol, with this
server's RequestLimits); what remains here is what the engine does not offer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pe_server.errors import APIError

if TYPE_CHECKING:
    from pe_common.protocol import ChatCompletionRequest, CompletionRequest
    from pe_engine.sampling_params import SamplingParams


def unsupported(message: str, param: str) -> APIError:
    return APIError.bad_request(message, code="unsupported_parameter", param=param)


def build_sampling_params(
    req: CompletionRequest | ChatCompletionRequest,
    *,
    max_tokens: int | None,
    logprobs: int | None,
    prompt_logprobs: int | None = None,
) -> SamplingParams:
    """The SamplingParams of a completions or chat request (vLLM's names and defaults)."""
    from pe_engine.sampling_params import SamplingParams

    if req.logit_bias:
        raise unsupported("logit_bias is not supported.", "logit_bias")
    if req.truncate_prompt_tokens is not None:
        raise unsupported("truncate_prompt_tokens is not supported.", "truncate_prompt_tokens")
    kwargs: dict[str, Any] = {
        "n": req.n,
        "best_of": getattr(req, "best_of", None),
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "top_k": 0 if req.top_k in (None, -1) else req.top_k,
        "min_p": req.min_p or 0.0,
        "seed": req.seed,
        "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty,
        "repetition_penalty": 1.0 if req.repetition_penalty is None else req.repetition_penalty,
        "max_tokens": max_tokens,
        "min_tokens": req.min_tokens,
        "stop": list(req.stop or []),
        "stop_token_ids": list(req.stop_token_ids or []),
        "ignore_eos": req.ignore_eos,
        "logprobs": logprobs,
        "prompt_logprobs": prompt_logprobs,
        "skip_special_tokens": req.skip_special_tokens,
        "include_stop_str_in_output": req.include_stop_str_in_output,
    }
    try:
        return SamplingParams(**kwargs)
    except ValueError as exc:
        # SamplingParams' own messages name the field; they hold no user bytes beyond numbers.
        raise APIError.bad_request(
            str(exc)[:300], code="invalid_parameter", param="sampling_params"
        ) from None
