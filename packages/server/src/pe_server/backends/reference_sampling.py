"""Sampling, stop rules and text for the transformers reference backend (vLLM semantics).

Penalties: repetition over the prompt's real token ids and the output, presence and frequency
over the output; embed placeholders never count. Logprobs come from the raw logits.
"""

from __future__ import annotations

from typing import Any

import torch

from pe_engine.outputs import CompletionOutput, Logprob
from pe_engine.prompt import Prompt
from pe_engine.sampling_params import SamplingParams

REPLACEMENT_CHAR = "\ufffd"


class StepSampler:
    """Chooses each next token of one branch and decides when the branch stops."""

    def __init__(
        self,
        params: SamplingParams,
        prompt: Prompt,
        branch: int,
        tokenizer: Any,
        eos_token_ids: frozenset[int],
    ) -> None:
        """``eos_token_ids``: the model's one EOS set (``pe_engine.models.eos``), as the engine's."""
        self.params = params
        self.tokenizer = tokenizer
        self.eos_ids = frozenset() if params.ignore_eos else eos_token_ids
        self.stop_ids = set(params.stop_token_ids or [])
        mask = prompt.is_token_ids or [True] * len(prompt.token_ids)
        self.prompt_ids = [
            t for t, is_token in zip(prompt.token_ids, mask, strict=True) if is_token
        ]
        self.generator: torch.Generator | None = None
        if params.seed is not None:
            self.generator = torch.Generator().manual_seed(params.seed * 1_000_003 + branch)
        self._stop_text_end: int | None = None

    def sample(self, logits: torch.Tensor, output_ids: list[int]) -> tuple[int, dict[int, Logprob]]:
        raw = torch.log_softmax(logits, dim=-1)
        scores = self._penalised(logits.clone(), output_ids)
        if len(output_ids) < self.params.min_tokens:
            for tid in self._stop_token_ids():
                if tid < scores.numel():  # a config may list ids past the model's vocab
                    scores[tid] = -float("inf")
        if self.params.temperature == 0:
            token_id = int(torch.argmax(scores))
        else:
            token_id = self._draw(scores)
        return token_id, self._logprobs(raw, token_id)

    def _stop_token_ids(self) -> set[int]:
        return self.stop_ids | self.eos_ids

    def _penalised(self, scores: torch.Tensor, output_ids: list[int]) -> torch.Tensor:
        p = self.params
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(self.prompt_ids) | set(output_ids)), dtype=torch.long)
            if len(seen):
                vals = scores[seen]
                scores[seen] = torch.where(
                    vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty
                )
        if output_ids and (p.presence_penalty or p.frequency_penalty):
            counts = torch.bincount(torch.tensor(output_ids), minlength=scores.numel()).float()
            scores -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).float()
        return scores

    def _draw(self, scores: torch.Tensor) -> int:
        p = self.params
        scores = scores / p.temperature
        if p.top_k and p.top_k > 0:
            kth = torch.topk(scores, min(p.top_k, scores.numel())).values[-1]
            scores[scores < kth] = -float("inf")
        probs = torch.softmax(scores, dim=-1)
        if p.min_p > 0:
            probs[probs < p.min_p * probs.max()] = 0.0
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            drop = torch.cumsum(sorted_probs, 0) - sorted_probs > p.top_p
            probs[order[drop]] = 0.0
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def _logprobs(self, raw: torch.Tensor, token_id: int) -> dict[int, Logprob]:
        num = self.params.logprobs
        if num is None:
            return {}
        value = float(raw[token_id])
        rank = int((raw > raw[token_id]).sum()) + 1
        step = {token_id: Logprob(logprob=value, rank=rank, decoded_token=self._piece(token_id))}
        if num > 0:
            top = torch.topk(raw, num)
            for r, (lp, tid) in enumerate(
                zip(top.values.tolist(), top.indices.tolist(), strict=True), 1
            ):
                step.setdefault(tid, Logprob(logprob=lp, rank=r, decoded_token=self._piece(tid)))
        return step

    def _piece(self, token_id: int) -> str:
        return str(self.tokenizer.decode([token_id]))

    def finish(self, out: CompletionOutput) -> tuple[str, int | str | None] | None:
        """(finish_reason, stop_reason) once the branch must stop, else None."""
        ids, last = out.token_ids, out.token_ids[-1]
        if len(ids) >= self.params.min_tokens:
            if last in self.stop_ids:
                return "stop", last
            if last in self.eos_ids:
                return "stop", None
            stop = self._find_stop_string(ids)
            if stop is not None:
                return "stop", stop
        if self.params.max_tokens is not None and len(ids) >= self.params.max_tokens:
            return "length", None
        return None

    def _find_stop_string(self, ids: list[int]) -> str | None:
        if not self.params.stop:
            return None
        text = self._decode(ids)
        for stop in self.params.stop:
            pos = text.find(stop)
            if pos >= 0:
                keep = self.params.include_stop_str_in_output
                self._stop_text_end = pos + len(stop) if keep else pos
                return stop
        return None

    def final_text(self, ids: list[int]) -> str:
        if self._stop_text_end is not None:
            return self._decode(ids)[: self._stop_text_end]
        last = ids[-1] if ids else None
        stopped_on_token = last in self.stop_ids or last in self.eos_ids
        if stopped_on_token and not self.params.include_stop_str_in_output:
            ids = ids[:-1]
        return self._decode(ids)

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=self.params.skip_special_tokens))

    @staticmethod
    def stream_text(tokenizer: Any, ids: list[int], params: SamplingParams) -> str:
        """Text safe to show before the branch ends: no half characters, no partial stop."""
        text = str(tokenizer.decode(ids, skip_special_tokens=params.skip_special_tokens))
        text = text.rstrip(REPLACEMENT_CHAR)
        if params.stop and not params.include_stop_str_in_output:
            hold = max(len(s) for s in params.stop) - 1
            text = text[: max(0, len(text) - hold)]
        return text
