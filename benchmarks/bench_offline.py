"""Offline throughput: pe's LLM.generate against transformers' batched generate, same weights.

Each prompt is sent to pe twice, as token ids and as prompt embeddings (the model's own
embedding rows for the same ids), so the embeds/text ratio is measured in the same run.
Prints a table and writes JSON (default benchmarks/out/bench_offline.json).

    python benchmarks/bench_offline.py                        # small random Llama + SmolLM2
    python benchmarks/bench_offline.py --models small --num-prompts 16 --max-input 128  # quick
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pe_engine import LLM, SamplingParams
from pe_engine.demo_model import ensure_demo_model, smollm2_tokenizer_dir
from pe_engine.random_model import build_random_model


@dataclass
class Row:
    model: str
    engine: str
    input: str
    seconds: float
    output_tokens: int
    tokens_per_s: float


def model_dir(name: str, workdir: Path) -> Path:
    if name == "small":
        return build_random_model(
            workdir / "small-llama",
            hidden_size=512,
            num_layers=8,
            num_heads=8,
            num_kv_heads=4,
            intermediate_size=1536,
            tokenizer_dir=smollm2_tokenizer_dir(),
        )
    if name == "smollm2":
        return ensure_demo_model()
    return Path(name)


def make_prompts(n: int, lo: int, hi: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def embedding_table(path: Path) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return f.get_tensor("model.embed_tokens.weight").float()


def bench_pe(path: Path, prompts: list[list[int]], out_len: int, repeat: int) -> dict[str, float]:
    llm = LLM(model=str(path), dtype="float32", enable_prompt_embeds=True, max_model_len=2048)
    params = SamplingParams(temperature=0.0, max_tokens=out_len, ignore_eos=True)
    table = embedding_table(path)
    as_ids = [{"prompt_token_ids": ids} for ids in prompts]
    as_embeds = [{"prompt_embeds": table[torch.tensor(ids)]} for ids in prompts]
    llm.generate(as_ids[:2], params, use_tqdm=False)  # warm-up
    return {
        "ids": timed(lambda: llm.generate(as_ids, params, use_tqdm=False), repeat),
        "embeds": timed(lambda: llm.generate(as_embeds, params, use_tqdm=False), repeat),
    }


def bench_transformers(path: Path, prompts: list[list[int]], out_len: int, repeat: int) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    width = max(len(p) for p in prompts)
    pad = 0
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # left padding
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])

    def run() -> None:
        with torch.inference_mode():
            model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=out_len,
                min_new_tokens=out_len,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=pad,
            )

    return timed(run, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["small", "smollm2"])
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--min-input", type=int, default=32)
    parser.add_argument("--max-input", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument("--out", default="benchmarks/out/bench_offline.json")
    args = parser.parse_args()

    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = model_dir(name, Path(tmp))
            vocab = json.loads((path / "config.json").read_text())["vocab_size"]
            prompts = make_prompts(args.num_prompts, args.min_input, args.max_input, vocab, 0)
            n_out = args.num_prompts * args.output_len
            pe = bench_pe(path, prompts, args.output_len, args.repeat)
            for kind, secs in pe.items():
                rows.append(Row(name, "pe", kind, secs, n_out, n_out / secs))
            if not args.no_transformers:
                secs = bench_transformers(path, prompts, args.output_len, args.repeat)
                rows.append(Row(name, "transformers", "ids", secs, n_out, n_out / secs))
            print_table(rows)

    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "args": vars(args),
        "rows": [asdict(r) for r in rows],
        "ratios": ratios(rows),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result["ratios"], indent=2))


def ratios(rows: list[Row]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for model in dict.fromkeys(r.model for r in rows):
        tps = {f"{r.engine}/{r.input}": r.tokens_per_s for r in rows if r.model == model}
        entry = {"embeds_over_text": tps["pe/embeds"] / tps["pe/ids"]}
        if "transformers/ids" in tps:
            entry["pe_over_transformers"] = tps["pe/ids"] / tps["transformers/ids"]
        out[model] = entry
    return out


def print_table(rows: list[Row]) -> None:
    print(f"\n{'model':<10} {'engine':<13} {'input':<7} {'seconds':>8} {'out tok/s':>10}")
    for r in rows:
        print(
            f"{r.model:<10} {r.engine:<13} {r.input:<7} {r.seconds:>8.2f} {r.tokens_per_s:>10.1f}"
        )


if __name__ == "__main__":
    main()
