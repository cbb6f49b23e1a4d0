"""Request outputs shaped like vLLM's ``RequestOutput`` / ``CompletionOutput``.

The engine emits *deltas* (``RequestOutputKind.DELTA``): each output of a request carries only
what its branches produced since the previous one, so a step costs the same at the 4,000th token
as at the first. :class:`OutputAccumulator` folds a request's deltas into its totals (a
``CUMULATIVE`` output, what ``LLM.generate`` returns).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class RequestOutputKind(enum.Enum):
    """What an output's text, token ids and logprobs cover (vLLM's names)."""

    CUMULATIVE = enum.auto()  # everything so far
    DELTA = enum.auto()  # only what is new since the request's previous output


@dataclass
class Logprob:
    """Log-probability of one token, its rank in the distribution (1 = most likely), its text."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    """One generated branch of a request.

    Cumulative: the full text, ids and logprobs so far. In a delta: only the new ones;
    ``cumulative_logprob`` is the running total either way, and ``finish_reason`` appears in
    the branch's last delta only.
    """

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: list[dict[int, Logprob]] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: int | str | None = None  # the matched stop string or stop token id

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    """Wall-clock times (``time.time()``) of a request's milestones."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None


@dataclass
class RequestOutput:
    """The state of one request after an engine step.

    ``prompt_token_ids`` is None for a pure-embeds prompt (no real ids); for a mixed prompt,
    embed positions hold the placeholder id 0. Embeds rows count in ``num_prompt_tokens``.
    In a delta, ``outputs`` lists the branches still running or finishing now (a finished
    branch is reported once) and ``prompt_logprobs`` comes with the request's first output only.
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None
    kind: RequestOutputKind = RequestOutputKind.CUMULATIVE


def extend_logprobs(
    logprobs: list[dict[int, Logprob]] | None, more: list[dict[int, Logprob]] | None
) -> list[dict[int, Logprob]] | None:
    """``logprobs`` with a delta's ``more`` appended in place (a new list where it had none);
    None while no delta carried logprobs."""
    if more is None:
        return logprobs
    if logprobs is None:
        return list(more)
    logprobs.extend(more)
    return logprobs


def merge_delta(into: RequestOutput, later: RequestOutput) -> None:
    """Fold delta ``later`` into delta ``into`` (a consumer that fell behind gets one output
    for several steps; nothing is dropped)."""
    branches = {out.index: out for out in into.outputs}
    for out in later.outputs:
        earlier = branches.get(out.index)
        if earlier is None:
            into.outputs.append(out)
            branches[out.index] = out
            continue
        earlier.text += out.text
        earlier.token_ids.extend(out.token_ids)
        earlier.logprobs = extend_logprobs(earlier.logprobs, out.logprobs)
        earlier.cumulative_logprob = out.cumulative_logprob
        earlier.finish_reason, earlier.stop_reason = out.finish_reason, out.stop_reason
    into.finished = later.finished
    into.metrics = later.metrics
    into.num_cached_tokens = later.num_cached_tokens
    if into.prompt_logprobs is None:
        into.prompt_logprobs = later.prompt_logprobs


@dataclass
class _BranchTotals:
    index: int
    texts: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, Logprob]] | None = None
    cumulative_logprob: float | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    def add(self, out: CompletionOutput) -> None:
        if out.text:
            self.texts.append(out.text)
        self.token_ids.extend(out.token_ids)
        self.logprobs = extend_logprobs(self.logprobs, out.logprobs)
        self.cumulative_logprob = out.cumulative_logprob
        self.finish_reason, self.stop_reason = out.finish_reason, out.stop_reason

    def total(self) -> CompletionOutput:
        return CompletionOutput(
            index=self.index,
            text="".join(self.texts),
            token_ids=self.token_ids,
            cumulative_logprob=self.cumulative_logprob,
            logprobs=self.logprobs,
            finish_reason=self.finish_reason,
            stop_reason=self.stop_reason,
        )


class OutputAccumulator:
    """Folds one request's delta outputs into its totals: ``add`` each delta (O(its size)),
    then ``result()`` once, a ``CUMULATIVE`` output with the branches in index order."""

    def __init__(self) -> None:
        self._last: RequestOutput | None = None
        self._prompt_logprobs: list[dict[int, Logprob] | None] | None = None
        self._branches: dict[int, _BranchTotals] = {}

    @property
    def has_output(self) -> bool:
        return self._last is not None

    @property
    def finished(self) -> bool:
        return self._last is not None and self._last.finished

    @property
    def num_output_tokens(self) -> int:
        return sum(len(b.token_ids) for b in self._branches.values())

    def add(self, delta: RequestOutput) -> None:
        self._last = delta
        if self._prompt_logprobs is None:
            self._prompt_logprobs = delta.prompt_logprobs
        for out in delta.outputs:
            branch = self._branches.get(out.index)
            if branch is None:
                branch = self._branches[out.index] = _BranchTotals(out.index)
            branch.add(out)

    def result(self) -> RequestOutput:
        last = self._last
        assert last is not None, "no output to accumulate"
        return RequestOutput(
            request_id=last.request_id,
            prompt=last.prompt,
            prompt_token_ids=last.prompt_token_ids,
            outputs=[self._branches[i].total() for i in sorted(self._branches)],
            finished=last.finished,
            metrics=last.metrics,
            num_prompt_tokens=last.num_prompt_tokens,
            num_cached_tokens=last.num_cached_tokens,
            prompt_logprobs=self._prompt_logprobs,
            kind=RequestOutputKind.CUMULATIVE,
        )
