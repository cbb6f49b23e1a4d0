"""Per-step deltas: each step's samples become, per request, the new token ids, the new text
and the new logprobs of its branches, plus finish reasons as branches end (vLLM v1's output
processor). Nothing here costs more as an output grows."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pe_engine.core.detokenizer import decode_token
from pe_engine.outputs import (
    CompletionOutput,
    Logprob,
    RequestMetrics,
    RequestOutput,
    RequestOutputKind,
)

if TYPE_CHECKING:
    from pe_engine.core.scheduler import Scheduler
    from pe_engine.core.sequence import Sequence
    from pe_engine.models.runner import SampleResult
    from pe_engine.prompt import Prompt
    from pe_engine.sampling_params import SamplingParams


@dataclass
class BranchState:
    """One branch's output not yet sent in a delta, and its running logprob total."""

    seq: Sequence
    cumulative_logprob: float = 0.0
    num_sent_tokens: int = 0
    texts: list[str] = field(default_factory=list)
    logprobs: list[dict[int, Logprob]] = field(default_factory=list)
    is_done: bool = False  # its last delta, with the finish reason, was made


@dataclass
class RequestState:
    """One request inside the engine: prompt, parameters, branches and milestones."""

    request_id: str
    prompt: Prompt
    params: SamplingParams
    branches: list[BranchState]
    metrics: RequestMetrics
    prompt_token_ids: list[int] | None  # made once, shared by every output (read-only)
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None
    num_outputs: int = 0

    @classmethod
    def create(
        cls,
        request_id: str,
        prompt: Prompt,
        params: SamplingParams,
        seqs: list[Sequence],
        arrival_time: float,
    ) -> RequestState:
        num_positions = prompt.num_tokens
        return cls(
            request_id=request_id,
            prompt=prompt,
            params=params,
            branches=[BranchState(seq) for seq in seqs],
            metrics=RequestMetrics(arrival_time=arrival_time),
            prompt_token_ids=None if prompt.is_pure_embeds else list(prompt.token_ids),
            prompt_logprobs=None if params.prompt_logprobs is None else [None] * num_positions,
        )

    @property
    def seqs(self) -> list[Sequence]:
        return [branch.seq for branch in self.branches]

    @property
    def is_finished(self) -> bool:
        return all(branch.seq.is_finished for branch in self.branches)

    @property
    def holds_output(self) -> bool:
        """``best_of > n``: the best branches are known only at the end, so nothing is sent
        before (as vLLM, which refuses to stream such a request)."""
        return len(self.branches) > self.params.n

    def branch(self, seq: Sequence) -> BranchState:
        return next(b for b in self.branches if b.seq is seq)


class OutputProcessor:
    """Records samples on their request and makes its deltas."""

    def __init__(self, scheduler: Scheduler, tokenizer: Any) -> None:
        self.scheduler = scheduler
        self.tokenizer = tokenizer

    def record_sample(
        self, request: RequestState, seq: Sequence, result: SampleResult, now: float
    ) -> None:
        metrics = request.metrics
        if metrics.first_token_time is None:
            metrics.first_token_time = now
        metrics.last_token_time = now
        branch = request.branch(seq)
        if result.logprob is not None:
            branch.cumulative_logprob += result.logprob
        if request.params.logprobs is not None:
            branch.logprobs.append(self.logprobs_entry(result))
        self._take_text(branch)

    def record_prompt_logprobs(
        self, request: RequestState, position: int, result: SampleResult
    ) -> None:
        """Keyed by position, so a recomputed prompt (preemption) overwrites, never appends."""
        assert request.prompt_logprobs is not None
        request.prompt_logprobs[position] = self.logprobs_entry(result)

    def logprobs_entry(self, result: SampleResult) -> dict[int, Logprob]:
        assert result.logprob is not None, "logprobs requested but not computed"
        top = result.top_logprobs or []
        rank = getattr(result, "rank", None)
        if rank is None:
            rank = next((i + 1 for i, (t, _) in enumerate(top) if t == result.token_id), None)
        entry = {result.token_id: self._logprob(result.token_id, result.logprob, rank)}
        for i, (token_id, logprob) in enumerate(top):
            entry.setdefault(token_id, self._logprob(token_id, logprob, i + 1))
        return entry

    def _logprob(self, token_id: int, logprob: float, rank: int | None) -> Logprob:
        return Logprob(logprob, rank, decode_token(self.tokenizer, token_id))

    def _take_text(self, branch: BranchState) -> None:
        seq = branch.seq
        detokenizer = self.scheduler.detokenizers.get(seq.seq_id)
        if detokenizer is not None:
            text = detokenizer.take_text(seq.is_finished)
            if text:
                branch.texts.append(text)

    def make_output(self, request: RequestState) -> RequestOutput | None:
        """The request's delta since its previous output; None while a ``best_of > n``
        request runs. Once finished, its final delta (then the request may be released)."""
        finished = request.is_finished
        if request.holds_output and not finished:
            return None
        if finished:
            request.metrics.finished_time = time.time()
        outputs = []
        for index, b in enumerate(self._branches_to_report(request)):
            branch = request.branches[b]
            if not branch.is_done:
                outputs.append(self._take_delta(request, branch, index))
        is_first = request.num_outputs == 0
        request.num_outputs += 1
        prompt_logprobs = request.prompt_logprobs
        return RequestOutput(
            request_id=request.request_id,
            prompt=request.prompt.text,
            prompt_token_ids=request.prompt_token_ids,
            outputs=outputs,
            finished=finished,
            metrics=request.metrics,
            num_prompt_tokens=request.prompt.num_tokens,
            num_cached_tokens=request.branches[0].seq.num_cached_tokens,
            prompt_logprobs=list(prompt_logprobs) if is_first and prompt_logprobs else None,
            kind=RequestOutputKind.DELTA,
        )

    def _branches_to_report(self, request: RequestState) -> list[int]:
        """The first n branches; with ``best_of > n`` (only once all finished) the n with the
        highest cumulative logprob, best first (as vLLM)."""
        n = request.params.n
        if not request.holds_output:
            return list(range(n))
        branches = request.branches
        ranked = sorted(range(len(branches)), key=lambda i: -branches[i].cumulative_logprob)
        return ranked[:n]

    def _take_delta(
        self, request: RequestState, branch: BranchState, index: int
    ) -> CompletionOutput:
        seq = branch.seq
        self._take_text(branch)  # a branch may end without a sample (abort, capacity)
        start = seq.num_prompt_tokens + branch.num_sent_tokens
        new_ids = seq.token_ids[start:]
        branch.num_sent_tokens += len(new_ids)
        text = "".join(branch.texts)
        branch.texts.clear()
        wants_logprobs = request.params.logprobs is not None
        logprobs = None
        if wants_logprobs:
            logprobs, branch.logprobs = branch.logprobs, []
        finish_reason = self.scheduler.finish_reason(seq)
        branch.is_done = finish_reason is not None
        return CompletionOutput(
            index=index,
            text=text,
            token_ids=new_ids,
            cumulative_logprob=branch.cumulative_logprob if wants_logprobs else None,
            logprobs=logprobs,
            finish_reason=finish_reason,
            stop_reason=self.scheduler.stop_reasons.get(seq.seq_id),
        )
