"""What lower-precision weights cost in accuracy (issue 22): bfloat16 and int8 against float32,
teacher-forced over a fixed text set, on the demo model.

The text: this repo's README.md and a Python source file, tokenized with the demo tokenizer and
cut into ``--window``-token windows (at most ``--windows``). Each window goes through the model
once as a prompt (pe: ``SamplingParams(prompt_logprobs=1, max_tokens=1)``), which gives at
every position the most likely next token and the log-probability of the token that actually
follows. Per variant:

- top-1 agreement: the share of positions whose most likely next token equals float32's;
- perplexity: exp of the mean negative log-probability of the true next tokens, and its change
  against float32's.

pe's rows are float32, bfloat16 and int8 (Q8_0 int8 weights: float32 activations through the
dequantized product that prefill uses, and again with every row on the decode kernel, whose
activations are quantized per block of 32 as llama.cpp's). Where
llama-cpp-python is importable, llama.cpp's f16 and q8_0 are measured the same way against its
own f32 (bench_latency's requantized files, loaded as it loads them), and its f32 against pe's
float32 (both hold the same dequantized Q4_1 weights, so this shows the engines agree).

    python benchmarks/bench_quality.py           # or: tox -e latency

Prints a table; writes benchmarks/out/bench_quality.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from bench_latency import (
    AMX_TYPES,
    LLAMA_CPP_FTYPES,
    PE_ROWS,
    has_amx_int8,
    has_llama_cpp,
    llama_cpp_gguf,
    model_params,
)

OUT = Path(__file__).parent / "out" / "bench_quality.json"
REPO = Path(__file__).resolve().parent.parent
TEXTS = ("README.md", "packages/engine/src/pe_engine/core/scheduler.py")


class Scores:
    """Per position of every window: the most likely next token and the true one's logprob."""

    def __init__(self) -> None:
        self.top1: list[int] = []
        self.true_logprob: list[float] = []

    def add_logits(self, logits: np.ndarray, window: list[int]) -> None:
        """Row j of ``logits`` predicts ``window[j + 1]``."""
        rows = logits[: len(window) - 1].astype(np.float64)
        log_z = np.log(np.exp(rows - rows.max(-1, keepdims=True)).sum(-1)) + rows.max(-1)
        self.top1.extend(rows.argmax(-1).tolist())
        nxt = np.asarray(window[1:])
        self.true_logprob.extend((rows[np.arange(len(nxt)), nxt] - log_z).tolist())

    @property
    def perplexity(self) -> float:
        return math.exp(-sum(self.true_logprob) / len(self.true_logprob))

    def agreement(self, other: Scores) -> float:
        same = sum(a == b for a, b in zip(self.top1, other.top1, strict=True))
        return same / len(self.top1)


def text_windows(tokenizer: Any, size: int, limit: int) -> list[list[int]]:
    """Consecutive ``size``-token windows from the start of each text, the texts sharing
    ``limit`` equally (a short tail is dropped)."""
    windows = []
    per_text = -(-limit // len(TEXTS))
    for name in TEXTS:
        ids = tokenizer.encode((REPO / name).read_text(encoding="utf-8"), add_special_tokens=False)
        windows += [ids[i : i + size] for i in range(0, len(ids) - size + 1, size)][:per_text]
    return windows[:limit]


def pe_scores(model_dir: Path, dtype: str, quantization: str | None, threads: int,
              windows: list[list[int]]) -> Scores:  # fmt: skip
    from pe_engine import LLM, SamplingParams

    llm = LLM(
        model=str(model_dir), dtype=dtype, quantization=quantization, num_threads=threads,
        enable_prefix_caching=False, kv_cache_memory=256 * 2**20,
    )  # fmt: skip
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1)
    scores = Scores()
    for window in windows:
        (out,) = llm.generate({"prompt_token_ids": window}, params, use_tqdm=False)
        for token, position in zip(window[1:], out.prompt_logprobs[1:], strict=True):
            scores.top1.append(next(t for t, lp in position.items() if lp.rank == 1))
            scores.true_logprob.append(position[token].logprob)
    del llm
    gc.collect()
    return scores


def llama_cpp_scores(gguf_file: Path, tag: str, threads: int, windows: list[list[int]]) -> Scores:
    import llama_cpp

    size = max(len(w) for w in windows)
    with model_params(use_extra_bufts=not (tag in AMX_TYPES and has_amx_int8())):
        llama = llama_cpp.Llama(
            model_path=str(gguf_file), n_threads=threads, n_threads_batch=threads, n_ctx=size,
            n_batch=size, n_ubatch=size, logits_all=True, verbose=False,
        )  # fmt: skip
    scores = Scores()
    for window in windows:
        llama.reset()
        llama.eval(window)
        scores.add_logits(llama.scores[: len(window)], window)
    del llama
    gc.collect()
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--windows", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from pe_engine.demo_model import GGUF_FILE, ensure_demo_model, gguf_dir, smollm2_tokenizer_dir

    windows = text_windows(
        AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir())), args.window, args.windows
    )
    print(f"{len(windows)} windows of {args.window} tokens", flush=True)
    model_dir = ensure_demo_model("float32")
    scores: dict[str, Scores] = {}
    for dtype, quantization in PE_ROWS:
        name = f"pe {quantization or dtype}"
        scores[name] = pe_scores(model_dir, dtype, quantization, args.threads, windows)
        print(f"{name} done", flush=True)
    # int8's decode rows take the int8 kernel (inputs quantized per 32), its wider batches the
    # dequantized float32 product: score the kernel's numbers too, every row on it
    from pe_engine.models import int8_linear

    kernel_rows, int8_linear.KERNEL_ROWS = int8_linear.KERNEL_ROWS, 1 << 30
    scores["pe int8 (decode kernel)"] = pe_scores(
        model_dir, "float32", "int8", args.threads, windows
    )
    int8_linear.KERNEL_ROWS = kernel_rows
    if has_llama_cpp():
        for tag in LLAMA_CPP_FTYPES:
            gguf = llama_cpp_gguf(gguf_dir() / GGUF_FILE, tag)
            scores[f"llama.cpp {tag}"] = llama_cpp_scores(gguf, tag, args.threads, windows)
            print(f"llama.cpp {tag} done", flush=True)
    else:
        print("llama_cpp is not importable here: pe's rows only")
    rows = report(scores)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"args": vars(args), "positions": len(scores["pe float32"].top1),
                               "rows": rows}, indent=1))  # fmt: skip
    print(f"wrote {OUT}")


def reference_of(name: str, scores: dict[str, Scores]) -> str:
    """Each engine's variants against its own float32; llama.cpp's f32 against pe's float32."""
    if name == "llama.cpp f32":
        return "pe float32"
    return "llama.cpp f32" if name.startswith("llama.cpp") else "pe float32"


def report(scores: dict[str, Scores]) -> list[dict[str, Any]]:
    print(f"\n{len(scores['pe float32'].top1)} positions")
    print("| engine, weights | against | top-1 agreement | perplexity | reference perplexity | "
          "perplexity change |")  # fmt: skip
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    rows = []
    for name, s in scores.items():
        ref_name = reference_of(name, scores)
        ref = scores[ref_name]
        row = {"variant": name, "reference": ref_name, "top1_agreement": s.agreement(ref),
               "perplexity": s.perplexity, "reference_perplexity": ref.perplexity}  # fmt: skip
        rows.append(row)
        change = (s.perplexity / ref.perplexity - 1) * 100
        print(f"| {name} | {ref_name} | {row['top1_agreement'] * 100:.2f}% | {s.perplexity:.3f} "
              f"| {ref.perplexity:.3f} | {change:+.2f}% |")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
