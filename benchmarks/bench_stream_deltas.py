"""Per-token cost of the engine's output path over a long stream (issue 19).

One request streams 4,096 tokens (greedy, ignore_eos) from a tiny random Llama on the CPU,
through ``LLMEngine.step()``. Timed per step: the output path alone, that is the scheduler's
postprocess (append the token, detokenize, stop checks) plus the building of the step's
outputs; the forward pass is left out (it dominates and is not what changed). Reported: the
median per token over the first and the last 256 tokens, and their ratio (1.0: a token costs
the same at the end as at the start), with the size of what each output carries. Two cases:
plain, and logprobs=5 with a stop string that never matches (the held-back text path).

The same measurement runs on the working tree ("after") and on a git revision exported with
``git archive`` ("before", by default the commit before the engine's deltas: the parent of the
commit that added ``core/output_processor.py``), each in its own process.

    python benchmarks/bench_stream_deltas.py [--before REV] [--tokens 4096] [--out benchmarks/out/bench_stream_deltas.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WINDOW = 256
OUTPUT_PROCESSOR = "packages/engine/src/pe_engine/core/output_processor.py"
CASES: dict[str, dict[str, Any]] = {
    "plain": {},
    "logprobs=5 + stop": {"logprobs": 5, "stop": ["<never in this text>"]},
}


def measure(model_dir: Path, num_tokens: int) -> dict[str, Any]:
    """In this process (whichever pe_engine it imports): per-step output-path times per case."""
    import torch

    from pe_engine import EngineConfig, LLMEngine, SamplingParams

    torch.set_num_threads(1)
    config = EngineConfig(
        model=str(model_dir), dtype="float32", device="cpu", max_model_len=num_tokens + 64,
        num_kv_blocks=(num_tokens + 64) // 16 + 8, block_size=16,
    )  # fmt: skip
    engine = LLMEngine(config)
    step_times: list[float] = []
    instrument(engine, step_times)
    results = {}
    for name, extra in CASES.items():
        params = SamplingParams(temperature=0.0, max_tokens=num_tokens, ignore_eos=True, **extra)
        step_times.clear()
        sizes = []
        engine.add_request(name, "Streaming a long completion:", params)
        while engine.has_unfinished_requests():
            for out in engine.step():
                sizes.append(len(out.outputs[0].token_ids) + len(out.outputs[0].logprobs or []))
        first, last = step_times[1 : WINDOW + 1], step_times[-WINDOW:]  # step 0: prefill
        results[name] = {
            "num_steps": len(step_times),
            "first_us": statistics.median(first) * 1e6,
            "last_us": statistics.median(last) * 1e6,
            "total_ms": sum(step_times) * 1e3,
            "items_per_output_first": sizes[1],
            "items_per_output_last": sizes[-1],
        }
    return results


def instrument(engine: Any, step_times: list[float]) -> None:
    """Time ``scheduler.postprocess`` + ``engine._collect_outputs`` of every step."""
    postprocess, collect = engine.scheduler.postprocess, engine._collect_outputs
    pending = [0.0]

    def timed_postprocess(*args: Any) -> Any:
        start = time.perf_counter()
        result = postprocess(*args)
        pending[0] = time.perf_counter() - start
        return result

    def timed_collect(*args: Any) -> Any:
        start = time.perf_counter()
        result = collect(*args)
        step_times.append(pending[0] + time.perf_counter() - start)
        return result

    engine.scheduler.postprocess = timed_postprocess
    engine._collect_outputs = timed_collect


def run_tree(src_root: Path, model_dir: Path, num_tokens: int) -> dict[str, Any]:
    """``measure`` in a fresh process that imports the packages under ``src_root``."""
    paths = [str(src_root / "packages" / p / "src") for p in ("common", "engine")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    cmd = [sys.executable, __file__, "--measure", str(model_dir), "--tokens", str(num_tokens)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def last_cumulative_rev() -> str:
    """The parent of the commit that added the engine's output processor (its deltas)."""
    added = git("log", "--diff-filter=A", "--format=%h", "--", OUTPUT_PROCESSOR).splitlines()
    return f"{added[-1]}~1"


def export(rev: str, dest: Path) -> None:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)


def build_model(dest: Path, num_tokens: int) -> Path:
    from pe_engine.models.random_model import build_random_model

    return build_random_model(dest / "tiny", max_position_embeddings=num_tokens + 64)


def print_table(result: dict[str, Any]) -> None:
    print(
        f"{result['num_tokens']} tokens, output path per token (median us), "
        f"nproc={result['nproc']}, {result['date']}; before = {result['before_rev']}"
    )
    header = f"{'case':20s} {'tree':7s} {'first 256':>10s} {'last 256':>10s} {'last/first':>10s}"
    print(header + f" {'total ms':>9s} {'items/out first->last':>22s}")
    for case in CASES:
        for tree in ("before", "after"):
            r = result[tree][case]
            ratio = r["last_us"] / r["first_us"]
            items = f"{r['items_per_output_first']} -> {r['items_per_output_last']}"
            print(
                f"{case:20s} {tree:7s} {r['first_us']:10.1f} {r['last_us']:10.1f} "
                f"{ratio:10.2f} {r['total_ms']:9.0f} {items:>22s}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="git revision measured as 'before'")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "out" / "bench_stream_deltas.json"
    )
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.measure, args.tokens)))
        return
    args.before = args.before or last_cumulative_rev()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        model_dir = build_model(scratch, args.tokens)
        (scratch / "before").mkdir()
        export(args.before, scratch / "before")
        result = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "num_tokens": args.tokens,
            "window": WINDOW,
            "before_rev": git("rev-parse", "--short", args.before),
            "before": run_tree(scratch / "before", model_dir, args.tokens),
            "after": run_tree(ROOT, model_dir, args.tokens),
        }
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
