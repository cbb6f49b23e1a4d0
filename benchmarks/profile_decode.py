"""Where a batch-1 decode step goes (issue 22): one request at a time on the demo model, the
engine's own stages timed in place, the forward's ops counted, and the weights' read time at
the machine's measured copy bandwidth.

Stages (wall time per decode step, medians over the steps of ``--repeats`` generations):
schedule (scheduler), prepare (batch inputs), forward (decoder layers, to the final hidden
state), logits (LM head), sample (sampler), postprocess (append, stop checks, detokenize),
outputs (request outputs), and the rest of ``LLMEngine.step``. The forward is also profiled
with ``torch.profiler`` for one step: operators dispatched and the top operators by self time.
"Weights read": the bytes of the weights a step reads over the bandwidth of a sum across a large
tensor, about the floor a memory-bound decode step cannot beat.

    python benchmarks/profile_decode.py                 # demo model, 128 tokens, 3 repeats

Prints tables and writes benchmarks/out/profile_decode.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

OUT = Path(__file__).parent / "out" / "profile_decode.json"
PROMPT = "The quick brown fox"


class StageTimer:
    """Wraps bound methods of live engine objects to add up their wall time per step."""

    def __init__(self) -> None:
        self.step: dict[str, float] = defaultdict(float)
        self.steps: list[dict[str, float]] = []

    def wrap(self, obj: Any, name: str, stage: str) -> None:
        method = getattr(obj, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.step[stage] += time.perf_counter() - start

        setattr(obj, name, timed)

    def end_step(self, total: float) -> None:
        stages = dict(self.step)
        stages["other"] = total - sum(stages.values())
        stages["total"] = total
        self.steps.append(stages)
        self.step.clear()


def read_bandwidth_gbs(num_bytes: int = 512 * 2**20) -> float:
    """Read bandwidth: the best of 5 sums over a tensor much larger than the caches."""
    src = torch.ones(num_bytes // 4, dtype=torch.float32)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        src.sum()
        times.append(time.perf_counter() - start)
    return num_bytes / min(times) / 1e9


def instrument(llm: Any, timer: StageTimer) -> None:
    engine = llm.engine
    runner = engine.runner
    timer.wrap(engine.scheduler, "schedule", "schedule")
    timer.wrap(runner.inputs, "prepare", "prepare")
    timer.wrap(runner, "_forward", "forward")
    timer.wrap(runner.model, "compute_logits", "logits")
    sampler = runner.sampler
    runner.sampler = _Timed(sampler, timer, "sample")
    timer.wrap(engine.scheduler, "postprocess", "postprocess")
    timer.wrap(engine, "_collect_outputs", "outputs")


class _Timed:
    """A callable object (the sampler) timed as a stage."""

    def __init__(self, inner: Callable[..., Any], timer: StageTimer, stage: str) -> None:
        self._inner = inner
        self._timer = timer
        self._stage = stage

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self._inner(*args, **kwargs)
        finally:
            self._timer.step[self._stage] += time.perf_counter() - start


def run_generation(llm: Any, timer: StageTimer, max_tokens: int, batch: int = 1) -> None:
    from pe_engine import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    engine = llm.engine
    for i in range(batch):
        engine.add_request(f"r{time.monotonic_ns()}-{i}", f"{PROMPT} {i}", params)
    first = True
    while engine.has_unfinished_requests():
        start = time.perf_counter()
        engine.step()
        total = time.perf_counter() - start
        if first:  # the prefill step is not a decode step
            timer.step.clear()
            first = False
            continue
        timer.end_step(total)


def profile_forward(llm: Any) -> dict[str, Any]:
    """One decode step's forward under torch.profiler: ops dispatched and the top ops."""
    from torch.profiler import ProfilerActivity, profile

    from pe_engine import SamplingParams

    engine = llm.engine
    engine.add_request("profiled", PROMPT, SamplingParams(temperature=0.0, max_tokens=4))
    engine.step()  # prefill
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.step()
    while engine.has_unfinished_requests():
        engine.step()
    events = prof.key_averages()
    num_ops = sum(e.count for e in events if e.key.startswith("aten::"))
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    return {
        "aten_ops_dispatched": num_ops,
        "top_ops": [
            {"op": e.key, "count": e.count, "self_ms": e.self_cpu_time_total / 1e3} for e in top
        ],
    }


def model_weight_bytes(llm: Any) -> int:
    """Bytes of every weight a decode step reads: parameters but the token-embedding table (a
    step looks up one row), plus the oneDNN-packed linears' weights (held outside
    ``parameters()``, a tied model's output head among them), at the model's dtype."""
    from pe_engine.models.cpu_linear import PackedLinear
    from pe_engine.models.int8_linear import Int8Linear

    model = llm.engine.runner.model
    table = model.model.embed_tokens.weight
    total = sum(p.numel() * p.element_size() for p in model.parameters() if p is not table)
    itemsize = torch.empty(0, dtype=llm.engine.dtype).element_size()
    for module in model.modules():
        if isinstance(module, PackedLinear):
            total += module.in_features * module.out_features * itemsize
        elif isinstance(module, Int8Linear):  # int8 values and a float16 scale per 32
            total += module.weight.numel() + module.scale.numel() * 2
    head = getattr(model, "lm_head", None)
    if head is None or getattr(head, "weight", None) is table:  # a tied head reads the table
        total += table.numel() * table.element_size()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=1, help="requests decoded together")
    parser.add_argument(
        "--cpu-linear", default="auto", choices=("auto", "onednn", "torch"),
        help="the engine's CPU linear path (torch: F.linear, as bfloat16 ran before issue 22)",
    )  # fmt: skip
    parser.add_argument("--quantization", choices=("int8",), help="weight-only int8 linears")
    args = parser.parse_args()
    from pe_engine import LLM
    from pe_engine.demo_model import resolve_model

    llm = LLM(
        model=str(resolve_model(args.model)), dtype=args.dtype, enable_prefix_caching=False,
        cpu_linear=args.cpu_linear, quantization=args.quantization,
    )  # fmt: skip
    weight_bytes = model_weight_bytes(llm)
    timer = StageTimer()
    run_generation(llm, StageTimer(), 8)  # warm-up
    instrument(llm, timer)
    for _ in range(args.repeats):
        run_generation(llm, timer, args.max_tokens, args.batch)
    stages = sorted({k for s in timer.steps for k in s}, key=lambda k: (k == "total", k))
    medians = {k: statistics.median(s.get(k, 0.0) for s in timer.steps) * 1e3 for k in stages}
    bandwidth = read_bandwidth_gbs()
    weights_ms = weight_bytes / (bandwidth * 1e9) * 1e3  # a step reads them once
    forward = profile_forward(llm)
    print(f"decode step, batch {args.batch}, {args.dtype}, {len(timer.steps)} steps; medians (ms):")
    for stage in stages:
        share = medians[stage] / medians["total"] * 100
        print(f"  {stage:<12} {medians[stage]:8.2f}  {share:5.1f}%")
    print(
        f"  tokens/s {args.batch * 1e3 / medians['total']:.1f}; weights {weight_bytes / 2**20:.0f} MiB, "
        f"read bandwidth {bandwidth:.1f} GB/s: reading them once takes {weights_ms:.1f} ms"
    )
    print(f"forward: {forward['aten_ops_dispatched']} aten ops per step; top by self time:")
    for op in forward["top_ops"]:
        print(f"  {op['op']:<40} x{op['count']:<5} {op['self_ms']:8.2f} ms")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "args": vars(args),
                "threads": torch.get_num_threads(),
                "stage_median_ms": medians,
                "weight_bytes": weight_bytes,
                "read_bandwidth_gbs": bandwidth,
                "weights_read_ms": weights_ms,
                "forward_profile": forward,
            },
            indent=1,
        )
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
