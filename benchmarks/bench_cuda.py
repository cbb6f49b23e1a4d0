"""CUDA throughput of pe: tokens/s, decode step time against the memory-bandwidth floor, and
the text-vs-embeds ratio, on a Qwen3-0.6B-shaped random model in bfloat16.

Workload (issue 9, as nano-vllm's bench.py): 256 prompts of random token ids, input and output
lengths uniform in [100, 1024], ignore_eos, greedy. Every prompt runs once as token ids ("text")
and once as prompt embeddings (the model's own embedding rows of the same ids).

The floor of one batch-1 decode step is the bytes it must read, weights (the embedding table
counts only when it doubles as the tied lm_head) plus the KV of the context, divided by the
device copy bandwidth measured here (a device-to-device copy reads and writes every byte).
The vocabulary is the SmolLM2 tokenizer's (49152), not Qwen3's: lm_head is a third the size.

    python benchmarks/bench_cuda.py                 # the full workload, CUDA graphs on
    python benchmarks/bench_cuda.py --enforce-eager # the same without CUDA graphs
    python benchmarks/bench_cuda.py --num-prompts 32 --max-len 256   # a quick look

Prints a table and writes benchmarks/out/bench_cuda.json. Needs an NVIDIA GPU.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

QWEN3_0_6B_SHAPE = {
    "arch": "qwen3",
    "hidden_size": 1024,
    "num_layers": 28,
    "num_heads": 16,
    "num_kv_heads": 8,
    "head_dim": 128,
    "intermediate_size": 3072,
    "tie_word_embeddings": True,
    "rope_theta": 1000000.0,
    "max_position_embeddings": 4096,
}


def copy_bandwidth(num_bytes: int = 1 << 30, repeat: int = 20) -> float:
    """Device memory bandwidth in bytes/s: a large device-to-device copy (read + write)."""
    src = torch.empty(num_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 2 * num_bytes * repeat / (time.perf_counter() - start)


def decode_bytes(llm: Any, context_len: int) -> tuple[int, int]:
    """Weight bytes and KV bytes one batch-1 decode step reads at ``context_len``."""
    runner = llm.engine.runner
    model, args = runner.model, runner.model.args
    weights = 0
    for name, param in model.named_parameters():
        if name.endswith("embed_tokens.weight") and not args.tie_word_embeddings:
            continue  # only one row is gathered
        weights += param.numel() * param.element_size()
    kv_per_token = runner.bytes_per_block // runner.block_size
    return weights, kv_per_token * context_len


def timed_generate(llm: Any, prompts: list[Any], params: list[Any]) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    llm.generate(prompts, params, use_tqdm=False)
    torch.cuda.synchronize()
    return time.perf_counter() - start


def decode_step_time(llm: Any, input_len: int, num_steps: int) -> float:
    """Seconds per batch-1 decode step: (time for 1 + num_steps tokens - time for 1) / steps."""
    from pe_engine import SamplingParams

    ids = {"prompt_token_ids": [random.Random(0).randrange(3, 49000) for _ in range(input_len)]}

    def run(n: int) -> float:
        params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
        return min(timed_generate(llm, [ids], [params]) for _ in range(3))

    return (run(1 + num_steps) - run(1)) / num_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument("--min-len", type=int, default=100)
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--model-dir", help="reuse a model built by an earlier run")
    parser.add_argument("--out", default="benchmarks/out/bench_cuda.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit(
            "bench_cuda.py needs an NVIDIA GPU and a CUDA build of torch "
            "(torch.cuda.is_available() is False here); the CPU benchmark is bench_offline.py."
        )
    from pe_engine import LLM, SamplingParams
    from pe_engine.models.random_model import build_random_model

    model_dir = args.model_dir or build_random_model(
        Path(tempfile.mkdtemp(prefix="pe-qwen3-0.6b-")), **QWEN3_0_6B_SHAPE
    )
    llm = LLM(
        str(model_dir), dtype="bfloat16", device="cuda", enable_prompt_embeds=True,
        enforce_eager=args.enforce_eager, max_model_len=max(2 * args.max_len, 1024),
        max_num_seqs=256, max_num_batched_tokens=8192,
    )  # fmt: skip
    rng = random.Random(0)
    lengths = [
        (rng.randint(args.min_len, args.max_len), rng.randint(args.min_len, args.max_len))
        for _ in range(args.num_prompts)
    ]
    ids = [[rng.randrange(3, 49000) for _ in range(n)] for n, _ in lengths]
    params = [SamplingParams(temperature=0.0, max_tokens=m, ignore_eos=True) for _, m in lengths]
    text = [{"prompt_token_ids": p} for p in ids]
    embeds = [{"prompt_embeds": llm.engine.runner.embed_tokens(p)} for p in ids]
    llm.generate(text[:4], params[:4], use_tqdm=False)  # warm-up (Triton compiles)
    llm.generate(embeds[:4], params[:4], use_tqdm=False)
    num_output = sum(m for _, m in lengths)
    num_total = num_output + sum(n for n, _ in lengths)
    text_s = timed_generate(llm, text, params)
    embeds_s = timed_generate(llm, embeds, params)

    bandwidth = copy_bandwidth()
    step_input = 512
    step_s = decode_step_time(llm, step_input, num_steps=128)
    weights, kv = decode_bytes(llm, step_input + 64)
    floor_s = (weights + kv) / bandwidth
    result = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "enforce_eager": args.enforce_eager,
        "num_prompts": args.num_prompts,
        "lengths": [args.min_len, args.max_len],
        "text": {"seconds": text_s, "output_tok_s": num_output / text_s,
                 "total_tok_s": num_total / text_s},
        "embeds": {"seconds": embeds_s, "output_tok_s": num_output / embeds_s,
                   "total_tok_s": num_total / embeds_s},
        "embeds_vs_text": text_s / embeds_s,
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "decode_batch1": {"input_len": step_input, "step_ms": step_s * 1e3,
                          "weight_bytes": weights, "kv_bytes": kv,
                          "floor_ms": floor_s * 1e3, "fraction_of_floor": floor_s / step_s},
    }  # fmt: skip
    print_table(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


def print_table(r: dict[str, Any]) -> None:
    d = r["decode_batch1"]
    graphs = "off" if r["enforce_eager"] else "on"
    print(f"{r['gpu']}, torch {r['torch']}, CUDA graphs {graphs}, {r['num_prompts']} prompts")
    print(f"{'input':<8}{'seconds':>10}{'output tok/s':>15}{'total tok/s':>14}")
    for name in ("text", "embeds"):
        row = r[name]
        print(f"{name:<8}{row['seconds']:>10.2f}{row['output_tok_s']:>15.0f}"
              f"{row['total_tok_s']:>14.0f}")  # fmt: skip
    print(f"embeds / text throughput: {r['embeds_vs_text']:.3f} (target >= 0.97)")
    print(
        f"batch-1 decode step: {d['step_ms']:.3f} ms; floor {d['floor_ms']:.3f} ms "
        f"({(d['weight_bytes'] + d['kv_bytes']) / 1e6:.0f} MB at "
        f"{r['copy_bandwidth_gb_s']:.0f} GB/s): {100 * d['fraction_of_floor']:.0f}% of the floor "
        "(target >= 60%)"
    )


if __name__ == "__main__":
    main()
