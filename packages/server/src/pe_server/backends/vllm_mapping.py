"""What the two vLLM backends share: pe's sampling params in vLLM's names, and the merging of
vLLM's per-branch reports into pe's delta outputs."""

from __future__ import annotations

from typing import Any

from pe_engine.outputs import CompletionOutput, RequestOutput, RequestOutputKind
from pe_engine.prompt import Prompt
from pe_engine.sampling_params import SamplingParams

# SamplingParams fields vLLM takes as they are (same names, same meaning).
SAMPLING_FIELDS = (
    "n",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "max_tokens",
    "min_tokens",
    "ignore_eos",
    "logprobs",
    "skip_special_tokens",
    "include_stop_str_in_output",
)


def sampling_fields(params: SamplingParams) -> dict[str, Any]:
    """pe's SamplingParams as vLLM's fields (None where pe leaves a field unset)."""
    fields = {name: getattr(params, name) for name in SAMPLING_FIELDS}
    fields["stop"] = list(params.stop)
    fields["stop_token_ids"] = list(params.stop_token_ids)
    return fields


def structured_fields(params: SamplingParams) -> dict[str, Any] | None:
    """pe's constraint as vLLM's ``structured_outputs`` fields (vLLM compiles it)."""
    spec = params.structured_outputs
    if spec is None:
        return None
    fields: dict[str, Any] = {spec.kind: getattr(spec, spec.kind)}
    for name in ("disable_any_whitespace", "disable_additional_properties"):
        if getattr(spec, name):
            fields[name] = True
    if spec.whitespace_pattern is not None:
        fields["whitespace_pattern"] = spec.whitespace_pattern
    return fields


class DeltaMerger:
    """vLLM's per-branch reports -> pe's delta ``RequestOutput`` objects, shaped as
    pe-engine's: every branch not done, with nothing new where vLLM did not report it this
    time. Subclasses turn one report (or None) into a branch's delta in ``_delta``."""

    def __init__(
        self,
        request_id: str,
        prompt: Prompt,
        params: SamplingParams,
        *,
        initial_logprob: float | None = None,
    ) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = None if prompt.is_pure_embeds else list(prompt.token_ids)
        self.wants_logprobs = params.logprobs is not None
        self.is_done = [False] * params.n
        first = initial_logprob if self.wants_logprobs else None
        self.cumulative_logprobs: list[float | None] = [first] * params.n

    @property
    def finished(self) -> bool:
        return all(self.is_done)

    def _delta(self, index: int, report: Any) -> CompletionOutput:
        raise NotImplementedError

    def _merge(
        self, reported: dict[int, Any], *, finished: bool | None = None, num_cached_tokens: int = 0
    ) -> RequestOutput:
        """One delta for every branch not done; ``finished`` defaults to all branches done."""
        deltas = []
        for index, is_done in enumerate(self.is_done):
            if is_done:
                continue
            delta = self._delta(index, reported.get(index))
            self.is_done[index] = delta.finish_reason is not None
            self.cumulative_logprobs[index] = delta.cumulative_logprob
            deltas.append(delta)
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt.text,
            prompt_token_ids=self.prompt_token_ids,
            outputs=deltas,
            finished=self.finished if finished is None else finished,
            metrics=None,  # type: ignore[arg-type]  # as vLLM: a backend without metrics
            num_prompt_tokens=self.prompt.num_tokens,
            num_cached_tokens=num_cached_tokens,
            kind=RequestOutputKind.DELTA,
        )
