"""Delta outputs: folding them into totals (OutputAccumulator) and merging the ones a slow
consumer missed (merge_delta)."""

from __future__ import annotations

from pe_engine.outputs import (
    CompletionOutput,
    Logprob,
    OutputAccumulator,
    RequestMetrics,
    RequestOutput,
    RequestOutputKind,
    merge_delta,
)

PROMPT_STEPS = [None, {7: Logprob(-0.5, 1)}]


def delta(
    outputs: list[CompletionOutput], *, finished: bool = False, first: bool = False
) -> RequestOutput:
    return RequestOutput(
        request_id="r", prompt="p", prompt_token_ids=[1, 7], outputs=outputs, finished=finished,
        metrics=RequestMetrics(arrival_time=0.0), num_prompt_tokens=2, num_cached_tokens=1,
        prompt_logprobs=PROMPT_STEPS if first else None, kind=RequestOutputKind.DELTA,
    )  # fmt: skip


def branch(index: int, text: str, ids: list[int], finish: str | None = None) -> CompletionOutput:
    steps = [{i: Logprob(-1.0, 1)} for i in ids]
    return CompletionOutput(index, text, ids, -1.0 * len(ids), steps, finish_reason=finish)


def deltas() -> list[RequestOutput]:
    return [
        delta([branch(0, "He", [1]), branch(1, "", [])], first=True),
        delta([branch(0, "", [2]), branch(1, "A", [3])]),  # branch 0's text held back
        delta([branch(0, "llo", [4], "length"), branch(1, "B", [5])]),
        delta([branch(1, "", [], "stop")], finished=True),  # branch 0 is not reported again
    ]


def test_accumulator_folds_deltas_into_totals() -> None:
    accumulator = OutputAccumulator()
    for d in deltas():
        accumulator.add(d)
    total = accumulator.result()
    assert total.kind is RequestOutputKind.CUMULATIVE and total.finished
    assert [(o.index, o.text, o.token_ids) for o in total.outputs] == [
        (0, "Hello", [1, 2, 4]),
        (1, "AB", [3, 5]),
    ]
    assert [o.finish_reason for o in total.outputs] == ["length", "stop"]
    assert [len(o.logprobs or []) for o in total.outputs] == [3, 2]
    assert total.outputs[0].cumulative_logprob == -1.0  # the last delta's running total
    assert total.prompt_logprobs == PROMPT_STEPS and total.num_cached_tokens == 1


def test_merged_deltas_fold_to_the_same_totals() -> None:
    first, *rest = deltas()
    for d in rest:
        merge_delta(first, d)
    assert first.finished and first.prompt_logprobs == PROMPT_STEPS
    assert [(o.text, o.token_ids, o.finish_reason) for o in first.outputs] == [
        ("Hello", [1, 2, 4], "length"),
        ("AB", [3, 5], "stop"),
    ]
    accumulator = OutputAccumulator()
    accumulator.add(first)
    whole = OutputAccumulator()
    for d in deltas():
        whole.add(d)
    assert accumulator.result().outputs == whole.result().outputs
