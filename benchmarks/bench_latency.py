"""Batch-1 latency beside llama.cpp (issue 22): decode speed and time to first token, one
request at a time, pe and llama.cpp (llama-cpp-python) in one run on the same weights.

Both engines run SmolLM2-135M-Instruct (the demo model) on ``--threads`` threads. pe loads the
demo's Hugging Face directory (the Q4_1 GGUF dequantized to float32) as float32, bfloat16 and
int8 (Q8_0 int8 linears: the very blocks llama.cpp's q8_0 file holds); llama.cpp loads f32, f16 and q8_0 files
made once from the same Q4_1 GGUF by llama.cpp's own quantizer (``llama_model_quantize``,
requantizing), cached beside pe's converted models. Both therefore start from the same
dequantized-Q4_1 values.

- decode tok/s: ``--decode-tokens`` greedy tokens (EOS ignored) after a ~5-token prompt; the
  time from the first token to the last over the tokens after the first (prefill excluded);
- TTFT: a ``--prompt-tokens`` prompt, one output token, wall time of the whole request.

Every engine gets the same prompt token ids. pe's prefix caching is off and llama.cpp's context
is reset before each request, so no repeat reuses an earlier one's KV cache. Each repeat runs
every engine once, the order rotating between repeats, so noise on a shared machine hits all of
them alike; the figures are medians over ``--repeats``.

    python benchmarks/bench_latency.py           # or: tox -e latency

Without llama-cpp-python installed, only pe's rows run. Prints a table and the pe / llama.cpp
ratios; writes benchmarks/out/bench_latency.json.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

OUT = Path(__file__).parent / "out" / "bench_latency.json"
REPO = Path(__file__).resolve().parent.parent
SHORT_PROMPT = "The quick brown fox jumps"
LONG_PROMPT_SOURCES = ("README.md", "packages/engine/src/pe_engine/core/scheduler.py")
PE_ROWS = (("float32", None), ("bfloat16", None), ("float32", "int8"))
LLAMA_CPP_FTYPES = {"f32": "LLAMA_FTYPE_ALL_F32", "f16": "LLAMA_FTYPE_MOSTLY_F16",
                    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0"}  # fmt: skip
# llama.cpp's AMX kernels (the first extra buffer type it offers Q8_0 weights, on CPUs with
# AMX-INT8) die with SIGILL on a tile instruction on this project's Xeon: upstream bug, tile
# config and per-thread tile permission (ggml-org/llama.cpp PR 26954). Such rows load without
# extra buffer types (weights in llama.cpp's plain layout, its AVX-512 dot products).
AMX_TYPES = frozenset({"q8_0"})
# (pe row, llama.cpp row) pairs whose ratios the targets name.
PAIRS = (("pe float32", "llama.cpp f32"), ("pe int8", "llama.cpp q8_0"),
         ("pe bfloat16", "llama.cpp f16"))  # fmt: skip


class Engine(Protocol):
    name: str

    def decode(self, prompt_ids: list[int], num_tokens: int) -> tuple[float, list[int]]:
        """Greedy ``num_tokens`` after ``prompt_ids``: (seconds from the first token to the
        last, the token ids)."""
        ...

    def ttft(self, prompt_ids: list[int]) -> float:
        """Seconds from submitting ``prompt_ids`` to holding the first output token."""
        ...


class PeEngine:
    """pe's offline ``LLM``, one request at a time."""

    def __init__(self, model_dir: Path, dtype: str, quantization: str | None, threads: int) -> None:
        from pe_engine import LLM

        self.name = f"pe {quantization or dtype}"
        self.llm = LLM(
            model=str(model_dir), dtype=dtype, quantization=quantization, num_threads=threads,
            enable_prefix_caching=False, kv_cache_memory=256 * 2**20,
        )  # fmt: skip

    def decode(self, prompt_ids: list[int], num_tokens: int) -> tuple[float, list[int]]:
        from pe_engine import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=num_tokens, ignore_eos=True)
        (out,) = self.llm.generate({"prompt_token_ids": prompt_ids}, params, use_tqdm=False)
        metrics = out.metrics
        return metrics.last_token_time - metrics.first_token_time, list(out.outputs[0].token_ids)

    def ttft(self, prompt_ids: list[int]) -> float:
        from pe_engine import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
        start = time.perf_counter()
        self.llm.generate({"prompt_token_ids": prompt_ids}, params, use_tqdm=False)
        return time.perf_counter() - start


class LlamaCppEngine:
    """llama-cpp-python's ``Llama`` driven token by token: ``eval`` then a greedy sampler made
    once, so the loop adds as little Python as the binding allows."""

    def __init__(self, gguf_file: Path, tag: str, threads: int) -> None:
        import llama_cpp

        self.name = f"llama.cpp {tag}"
        self.use_extra_bufts = not (tag in AMX_TYPES and has_amx_int8())
        with model_params(use_extra_bufts=self.use_extra_bufts):
            self.llama = llama_cpp.Llama(
                model_path=str(gguf_file), n_threads=threads, n_threads_batch=threads,
                n_ctx=2048, n_batch=1024, verbose=False,
            )  # fmt: skip
        self.sampler = llama_cpp.llama_sampler_init_greedy()
        self._sample = llama_cpp.llama_sampler_sample

    def _next_token(self) -> int:
        return int(self._sample(self.sampler, self.llama.ctx, -1))

    def decode(self, prompt_ids: list[int], num_tokens: int) -> tuple[float, list[int]]:
        self.llama.reset()
        self.llama.eval(prompt_ids)
        token_ids = [self._next_token()]
        start = time.perf_counter()
        while len(token_ids) < num_tokens:
            self.llama.eval(token_ids[-1:])
            token_ids.append(self._next_token())
        return time.perf_counter() - start, token_ids

    def ttft(self, prompt_ids: list[int]) -> float:
        start = time.perf_counter()
        self.llama.reset()
        self.llama.eval(prompt_ids)
        self._next_token()
        return time.perf_counter() - start


def has_amx_int8() -> bool:
    """True when this llama.cpp build runs its AMX kernels (its system info says so)."""
    import llama_cpp

    return b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()


@contextmanager
def model_params(**fields: Any) -> Iterator[None]:
    """``Llama`` takes no argument for some model parameters (``use_extra_bufts``): set them on
    the defaults it starts from while it loads."""
    import llama_cpp.llama_cpp as api

    defaults = api.llama_model_default_params

    def patched() -> Any:
        params = defaults()
        for name, value in fields.items():
            setattr(params, name, value)
        return params

    api.llama_model_default_params = patched
    try:
        yield
    finally:
        api.llama_model_default_params = defaults


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """llama.cpp's quantizer logs a line per tensor to file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def llama_cpp_gguf(source: Path, tag: str) -> Path:
    """``source`` requantized to ``tag`` by llama.cpp's own quantizer, made once and cached under
    pe's cache directory (named after the source file's identity, as pe's conversions are)."""
    import llama_cpp

    from pe_engine.gguf_model import cache_dir, gguf_cache_name

    target = cache_dir() / "llama-cpp" / f"{gguf_cache_name(source, tag)}.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, LLAMA_CPP_FTYPES[tag])
    params.allow_requantize = True  # the source is Q4_1: dequantize, then store as ``tag``
    print(f"making {target.name} with llama.cpp's quantizer (once)", flush=True)
    with quiet_stderr():
        status = llama_cpp.llama_model_quantize(
            str(source).encode(), str(tmp).encode(), ctypes.byref(params)
        )
    if status != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize({source.name} -> {tag}) failed: {status}")
    os.replace(tmp, target)
    return target


def has_llama_cpp() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def long_prompt_ids(tokenizer: Any, num_tokens: int) -> list[int]:
    """``num_tokens`` ids of real text (this repo's README and a source file, repeated)."""
    text = "\n".join((REPO / p).read_text(encoding="utf-8") for p in LONG_PROMPT_SOURCES)
    ids = tokenizer.encode(text, add_special_tokens=False)
    return (ids * (num_tokens // len(ids) + 1))[:num_tokens]


def build_engines(threads: int, with_llama_cpp: bool) -> list[Engine]:
    from pe_engine.demo_model import GGUF_FILE, ensure_demo_model, gguf_dir

    model_dir = ensure_demo_model("float32")
    engines: list[Engine] = [PeEngine(model_dir, d, q, threads) for d, q in PE_ROWS]
    if with_llama_cpp:
        source = gguf_dir() / GGUF_FILE
        for tag in LLAMA_CPP_FTYPES:
            engines.append(LlamaCppEngine(llama_cpp_gguf(source, tag), tag, threads))
    return engines


def measure(engines: list[Engine], args: argparse.Namespace, short: list[int],
            long: list[int]) -> dict[str, dict[str, Any]]:  # fmt: skip
    runs: dict[str, dict[str, Any]] = {e.name: {"decode_s": [], "ttft_s": []} for e in engines}
    for engine in engines:  # warm-up: first-call allocations and kernel choices
        engine.decode(short, 8)
        engine.ttft(long)
    for repeat in range(args.repeats):
        shift = repeat % len(engines)
        for engine in engines[shift:] + engines[:shift]:
            seconds, token_ids = engine.decode(short, args.decode_tokens)
            runs[engine.name]["decode_s"].append(seconds)
            runs[engine.name]["token_ids"] = token_ids
            runs[engine.name]["ttft_s"].append(engine.ttft(long))
        print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)
    for run in runs.values():
        run["decode_tok_s"] = (args.decode_tokens - 1) / statistics.median(run["decode_s"])
        run["ttft_ms"] = statistics.median(run["ttft_s"]) * 1e3
    return runs


def print_table(runs: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    reference = runs.get("pe float32", {}).get("token_ids")
    print(f"\n| engine, weights | decode tok/s | decode runs (tok/s) | TTFT {args.prompt_tokens} "
          f"tokens ms | TTFT runs (ms) | greedy tokens = pe float32's |")  # fmt: skip
    print("| --- | ---: | --- | ---: | --- | ---: |")
    for name, run in runs.items():
        decode_runs = ", ".join(f"{(args.decode_tokens - 1) / s:.1f}" for s in run["decode_s"])
        ttft_runs = ", ".join(f"{s * 1e3:.0f}" for s in run["ttft_s"])
        same = sum(1 for _ in _common_prefix(run["token_ids"], reference or []))
        print(f"| {name} | {run['decode_tok_s']:.1f} | {decode_runs} | {run['ttft_ms']:.0f} | "
              f"{ttft_runs} | {same}/{len(run['token_ids'])} |")  # fmt: skip
    ratios = {}
    for pe_name, llama_name in PAIRS:
        if pe_name in runs and llama_name in runs:
            pe, llama = runs[pe_name], runs[llama_name]
            ratios[f"{pe_name} / {llama_name}"] = {
                "decode": pe["decode_tok_s"] / llama["decode_tok_s"],
                "ttft_speed": llama["ttft_ms"] / pe["ttft_ms"],  # > 1: pe's first token sooner
            }
    if ratios:
        print("\n| pe / llama.cpp | decode speed | TTFT speed (llama.cpp ms / pe ms) |")
        print("| --- | ---: | ---: |")
        for pair, r in ratios.items():
            print(f"| {pair} | {r['decode']:.2f}x | {r['ttft_speed']:.2f}x |")
    return ratios


def _common_prefix(a: list[int], b: list[int]) -> list[int]:
    prefix = []
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        prefix.append(x)
    return prefix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=1024, help="TTFT prompt length")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with_llama_cpp = has_llama_cpp()
    if not with_llama_cpp:
        print("llama_cpp is not importable here (pip install llama-cpp-python, or tox -e "
              "latency): pe's rows only")  # fmt: skip
    engines = build_engines(args.threads, with_llama_cpp)
    tokenizer = engines[0].llm.get_tokenizer()  # type: ignore[attr-defined]
    short = tokenizer.encode(SHORT_PROMPT, add_special_tokens=False)
    long = long_prompt_ids(tokenizer, args.prompt_tokens)
    runs = measure(engines, args, short, long)
    ratios = print_table(runs, args)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({
        "args": vars(args), "short_prompt_ids": short, "llama_cpp": with_llama_cpp,
        "load_average_end": os.getloadavg(), "runs": runs, "ratios": ratios,
    }, indent=1))  # fmt: skip
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
