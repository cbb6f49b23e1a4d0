"""What constrained decoding costs (issue 20): JSON-schema outputs against free text, offline.

Workload: a fixed list of short varied prompts (cycled to the batch size) in the model's chat
template, greedy,
``max_tokens`` new tokens with ignore_eos off, the demo model (SmolLM2-135M-Instruct) in
float32 on the CPU. Each batch size runs once free and once under a JSON schema (strings with
maxLength, an enum, a boolean, a bounded integer, an array of at most 3 strings) with
``disable_any_whitespace``, so a constrained output ends when its object closes: constrained
outputs are shorter, hence both tokens/s and time per engine step are reported. Prefix caching
is off so that every run does the same prefill whatever ran before it; the schema is compiled
during the warm-up, so the decode figures leave compilation out (it is reported on its own).

The mask's cost is timed where it is paid: ``GrammarMasker.apply`` (llguidance fills the
bitmask, torch applies it) and ``GrammarMatcher.accept`` (the matcher advanced per token) are
wrapped in this process to add up their time; the engine is not edited.

Compilation: the llguidance tokenizer build, a cold compile of the schema (a fresh
``GrammarCompiler`` whose tokenizer was built first) and a cached compile (``compile`` again,
the median of ``--cached-calls`` calls).

    python benchmarks/bench_structured.py --quick      # batches 1,4; 16 tokens; 1 repeat
    python benchmarks/bench_structured.py              # batches 1,16,64; 64 tokens; 3 repeats

Writes benchmarks/out/bench_structured.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    "Describe a fictional software engineer as a JSON record.",
    "Invent a character for a fantasy novel and give their details.",
    "Who is a famous scientist? Give a short profile.",
    "Write a profile of a chef who lives in Lyon.",
    "Create a user record for a new employee in the sales team.",
    "Tell me about an imaginary astronaut.",
    "Give the details of a retired teacher who likes gardening.",
    "Summarise a person who works as a nurse in Toronto.",
    "Make up a musician and describe them briefly.",
    "Profile a student who studies chemistry.",
    "Describe a pilot with three hobbies.",
    "A carpenter from Oslo: describe them.",
    "Generate a record for a doctor who is 45 years old.",
    "Introduce a librarian who loves old maps.",
    "Sketch a painter living by the sea.",
    "Fill in a person's details for a test database.",
]
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "city": {"type": "string", "maxLength": 24},
        "role": {"type": "string", "enum": ["engineer", "doctor", "artist", "teacher", "other"]},
        "active": {"type": "boolean"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {
            "type": "array",
            "items": {"type": "string", "maxLength": 12},
            "maxItems": 3,
        },
    },
    "required": ["name", "city", "role", "active", "age", "tags"],
    "additionalProperties": False,
}
# A schema whose one string never closes within max_tokens: under it every row generates
# exactly max_tokens, as free text with ignore_eos does, so the two throughputs compare directly.
LONG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"story": {"type": "string", "minLength": 4000}},
    "required": ["story"],
    "additionalProperties": False,
}
FULL = {"batches": "1,16,64", "max_tokens": 64, "repeats": 3}
QUICK = {"batches": "1,4", "max_tokens": 16, "repeats": 1}
# free / json: the realistic pair (constrained outputs end when their object closes);
# full / long: the same number of tokens in both (ignore_eos; a string that never closes).
MODES = ("free", "json", "full", "long")


@dataclass
class Timing:
    """The time spent in one wrapped method, and the number of calls it took."""

    seconds: float = 0.0
    calls: int = 0

    def add(self, seconds: float) -> None:
        self.seconds += seconds
        self.calls += 1

    @property
    def us_per_call(self) -> float:
        return self.seconds / self.calls * 1e6


@dataclass
class Run:
    """One ``generate`` call: a batch size under one mode."""

    batch: int
    mode: str
    output_tokens: int
    seconds: float
    num_steps: int
    mask: Timing = field(default_factory=Timing)
    accept: Timing = field(default_factory=Timing)
    num_finished_stop: int = 0
    num_valid_json: int = 0


@dataclass
class Row:
    """The median of a (batch, mode)'s runs."""

    batch: int
    mode: str
    output_tokens: int
    seconds: float
    tokens_per_s: float
    num_steps: int
    step_ms: float
    mask_us_per_step: float | None
    accept_us_per_token: float | None
    mask_share: float | None  # of the run's wall time spent in mask fill + apply
    num_finished_stop: int
    num_valid_json: int


class GrammarTimer:
    """Adds up the time spent in the grammar mask (fill + apply) and in matcher advances, by
    wrapping the engine's classes in this process (the sampler looks them up per call)."""

    def __init__(self) -> None:
        self.mask = Timing()  # GrammarMasker.apply: llguidance fills the bitmask, torch applies it
        self.accept = Timing()  # GrammarMatcher.accept: the matcher advanced by one token

    def reset(self) -> None:
        """Start new totals; a Run keeps the ones it was handed."""
        self.mask, self.accept = Timing(), Timing()

    @contextmanager
    def installed(self) -> Iterator[GrammarTimer]:
        from pe_engine.structured.bitmask import GrammarMasker
        from pe_engine.structured.grammar import GrammarMatcher

        apply, accept = GrammarMasker.apply, GrammarMatcher.accept
        GrammarMasker.apply = self._timed(apply, "mask")  # type: ignore[method-assign]
        GrammarMatcher.accept = self._timed(accept, "accept")  # type: ignore[method-assign]
        try:
            yield self
        finally:
            GrammarMasker.apply = apply  # type: ignore[method-assign]
            GrammarMatcher.accept = accept  # type: ignore[method-assign]

    def _timed(self, method: Callable[..., Any], name: str) -> Callable[..., Any]:
        """``method`` adding its time to the Timing named ``name`` at the time of the call."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                timing: Timing = getattr(self, name)
                timing.add(time.perf_counter() - start)

        return timed


# ---- decode -------------------------------------------------------------------------------------


def sampling_params(mode: str, max_tokens: int) -> Any:
    from pe_engine.sampling_params import SamplingParams, StructuredOutputsParams

    constraint = None
    if mode in ("json", "long"):
        schema = SCHEMA if mode == "json" else LONG_SCHEMA
        constraint = StructuredOutputsParams(json=schema, disable_any_whitespace=True)
    return SamplingParams(
        temperature=0.0, max_tokens=max_tokens, ignore_eos=mode == "full",
        structured_outputs=constraint,
    )  # fmt: skip


def is_valid_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def chat_prompts(llm: Any, batch: int) -> list[str]:
    """The first ``batch`` prompts (cycled) in the model's chat template: an instruct model
    given bare text tends to end at once."""
    tokenizer = llm.get_tokenizer()
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for i in range(batch)
    ]


def run_once(llm: Any, batch: int, mode: str, max_tokens: int, timer: GrammarTimer) -> Run:
    prompts = chat_prompts(llm, batch)
    params = sampling_params(mode, max_tokens)
    timer.reset()
    steps_before = llm.engine.num_steps
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    completions = [o.outputs[0] for o in outputs]
    return Run(
        batch=batch,
        mode=mode,
        output_tokens=sum(len(c.token_ids) for c in completions),
        seconds=seconds,
        num_steps=llm.engine.num_steps - steps_before,
        mask=timer.mask,
        accept=timer.accept,
        num_finished_stop=sum(c.finish_reason == "stop" for c in completions),
        num_valid_json=sum(is_valid_json(c.text) for c in completions),
    )


def median_row(runs: list[Run]) -> Row:
    def med(values: list[float]) -> float:
        return float(statistics.median(values))

    first = runs[0]
    mask_calls = med([r.mask.calls for r in runs])
    accept_calls = med([r.accept.calls for r in runs])
    return Row(
        batch=first.batch,
        mode=first.mode,
        output_tokens=int(med([r.output_tokens for r in runs])),
        seconds=med([r.seconds for r in runs]),
        tokens_per_s=med([r.output_tokens / r.seconds for r in runs]),
        num_steps=int(med([r.num_steps for r in runs])),
        step_ms=med([r.seconds / r.num_steps * 1e3 for r in runs]),
        mask_us_per_step=med([r.mask.us_per_call for r in runs]) if mask_calls else None,
        accept_us_per_token=med([r.accept.us_per_call for r in runs]) if accept_calls else None,
        mask_share=med([r.mask.seconds / r.seconds for r in runs]) if mask_calls else None,
        num_finished_stop=first.num_finished_stop,
        num_valid_json=first.num_valid_json,
    )


def bench_decode(llm: Any, batches: list[int], max_tokens: int, repeats: int) -> list[Run]:
    timer = GrammarTimer()
    runs: list[Run] = []
    with timer.installed():
        for mode in MODES:  # warm-up; also compiles the schema into the engine's cache
            run_once(llm, 2, mode, 4, timer)
        for batch in batches:
            for repeat in range(repeats):
                # alternate the order so drift on a shared machine favours neither mode
                for mode in MODES if repeat % 2 == 0 else reversed(MODES):
                    runs.append(run_once(llm, batch, mode, max_tokens, timer))
                    print(f"  batch {batch:3d} {mode:5s} {runs[-1].seconds:8.2f} s", flush=True)
    return runs


def ratios(rows: list[Row]) -> dict[str, dict[str, float]]:
    """Per batch size: constrained over free, for throughput and for time per step."""
    by_key = {(r.batch, r.mode): r for r in rows}
    out = {}
    for batch in sorted({r.batch for r in rows}):
        free, constrained = by_key[batch, "free"], by_key[batch, "json"]
        full, long = by_key[batch, "full"], by_key[batch, "long"]
        out[str(batch)] = {
            "tokens_per_s": constrained.tokens_per_s / free.tokens_per_s,
            "step_ms": constrained.step_ms / free.step_ms,
            "equal_length_tokens_per_s": long.tokens_per_s / full.tokens_per_s,
        }
    return out


# ---- compile ------------------------------------------------------------------------------------


def bench_compile(llm: Any, repeats: int, cached_calls: int) -> dict[str, Any]:
    """Tokenizer build, cold compile and cached compile of the schema, in the engine's terms."""
    from pe_engine.structured.grammar import GrammarCompiler

    engine = llm.engine
    constraint = sampling_params("json", 1).structured_outputs
    builds, colds = [], []
    compiler = None
    for _ in range(repeats):
        compiler = GrammarCompiler(
            engine.tokenizer, engine.vocab_size, engine.runner.sampler.eos_token_ids
        )
        start = time.perf_counter()
        compiler.llg_tokenizer()
        builds.append(time.perf_counter() - start)
        start = time.perf_counter()
        compiler.compile(constraint)
        colds.append(time.perf_counter() - start)
    assert compiler is not None
    cached = []
    for _ in range(cached_calls):
        start = time.perf_counter_ns()
        compiler.compile(constraint)
        cached.append(time.perf_counter_ns() - start)
    return {
        "tokenizer_build_ms": statistics.median(builds) * 1e3,
        "cold_compile_ms": statistics.median(colds) * 1e3,
        "cached_compile_us": statistics.median(cached) / 1e3,
        "cached_calls": cached_calls,
    }


# ---- the driver ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def print_tables(rows: list[Row], summary: dict[str, Any], compile_: dict[str, Any]) -> None:
    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    print(
        f"\n{'batch':>5} {'mode':<5} {'tokens':>7} {'seconds':>8} {'tok/s':>8} {'steps':>6} "
        f"{'ms/step':>8} {'mask us/step':>13} {'accept us/tok':>14} {'mask %':>7} {'stop':>5} "
        f"{'json ok':>7}"
    )
    for r in rows:
        share = None if r.mask_share is None else r.mask_share * 100
        print(
            f"{r.batch:5d} {r.mode:<5} {r.output_tokens:7d} {r.seconds:8.2f} "
            f"{r.tokens_per_s:8.1f} {r.num_steps:6d} {r.step_ms:8.2f} "
            f"{fmt(r.mask_us_per_step, '13.0f'):>13} {fmt(r.accept_us_per_token, '14.1f'):>14} "
            f"{fmt(share, '7.1f'):>7} {r.num_finished_stop:5d} {r.num_valid_json:7d}"
        )
    print(
        f"\n{'batch':>5} {'json/free tok/s':>16} {'json/free ms/step':>18} {'long/full tok/s':>16}"
    )
    for batch, ratio in summary.items():
        print(
            f"{batch:>5} {ratio['tokens_per_s']:16.2f} {ratio['step_ms']:18.2f} "
            f"{ratio['equal_length_tokens_per_s']:16.2f}"
        )
    print(
        f"\ncompile: llguidance tokenizer build {compile_['tokenizer_build_ms']:.1f} ms, "
        f"cold {compile_['cold_compile_ms']:.2f} ms, "
        f"cached {compile_['cached_compile_us']:.2f} us (median of {compile_['cached_calls']})"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"smaller run: {QUICK}")
    parser.add_argument("--model", default="demo", help="'demo' or a Hugging Face directory")
    parser.add_argument(
        "--batches", help=f"comma-separated batch sizes (default {FULL['batches']})"
    )
    parser.add_argument("--max-tokens", type=int, help=f"default {FULL['max_tokens']}")
    parser.add_argument("--repeats", type=int, help=f"runs per timing (default {FULL['repeats']})")
    parser.add_argument("--cached-calls", type=int, default=1000)
    parser.add_argument("--threads", type=int, help="torch threads (default: pe's, every core)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/out/bench_structured.json")
    args = parser.parse_args()
    base = QUICK if args.quick else FULL
    for name, value in base.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main() -> None:
    args = parse_args()
    from pe_engine import LLM
    from pe_engine.demo_model import resolve_model

    batches = [int(b) for b in str(args.batches).split(",")]
    model_dir = resolve_model(args.model)
    llm = LLM(
        model=str(model_dir),
        dtype="float32",
        enable_prefix_caching=False,
        max_num_seqs=max(64, *batches),
        num_threads=args.threads,
    )
    runs = bench_decode(llm, batches, args.max_tokens, args.repeats)
    rows = [
        median_row([r for r in runs if (r.batch, r.mode) == (batch, mode)])
        for batch in batches
        for mode in MODES
    ]
    compile_ = bench_compile(llm, args.repeats, args.cached_calls)
    summary = ratios(rows)
    print_tables(rows, summary, compile_)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "model": str(model_dir),
        "dtype": "float32",
        "workload": {
            "batches": batches,
            "max_tokens": args.max_tokens,
            "repeats": args.repeats,
            "num_prompts": len(PROMPTS),
            "schema": SCHEMA,
            "long_schema": LONG_SCHEMA,
            "disable_any_whitespace": True,
            "prefix_caching": False,
        },
        "rows": [asdict(r) for r in rows],
        "ratios_json_over_free": summary,
        "compile": compile_,
        "runs": [asdict(r) for r in runs],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
