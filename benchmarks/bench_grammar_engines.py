"""llguidance (pe's grammar engine) against xgrammar on the same schema and tokenizer (issue 20:
measure before choosing): tokenizer build, compile, and one step's token-mask fill for 1 and
for 64 sequences standing inside a JSON string.

xgrammar is a bench-only peer, never a dependency of the packages (its wheel requires triton on
Linux). Install it beside pe without its dependencies:

    pip install --target /tmp/xgt --no-deps xgrammar apache-tvm-ffi
    PYTHONPATH=/tmp/xgt python benchmarks/bench_grammar_engines.py

Prints a table and writes benchmarks/out/bench_grammar_engines.json.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_structured import SCHEMA  # the schema whose per-step cost bench_structured measures

PREFIX = '{"name":"Ada","city":"Lon'  # every matcher stands inside a string
BATCH = 64
OUT = Path(__file__).parent / "out" / "bench_grammar_engines.json"


def median_s(fn: Callable[[], object], n: int = 20) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_llguidance(tokenizer: Any, vocab: int, prefix: list[int]) -> dict[str, float]:
    import llguidance
    import llguidance.hf
    import llguidance.numpy as lnp

    start = time.perf_counter()
    llg_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab, eos_token=[2])
    tokenizer_s = time.perf_counter() - start
    grammar = llguidance.LLMatcher.grammar_from_json_schema(
        json.dumps(SCHEMA), defaults={"whitespace_flexible": False}
    )
    compile_s = median_s(lambda: llguidance.LLMatcher(llg_tokenizer, grammar), 5)
    matchers = [llguidance.LLMatcher(llg_tokenizer, grammar) for _ in range(BATCH)]
    for matcher in matchers:
        for token in prefix:
            assert matcher.consume_token(token)
    bitmask = lnp.allocate_token_bitmask(BATCH, vocab)
    executor = llguidance.LLExecutor(2)
    rows = [(m, i) for i, m in enumerate(matchers)]
    return {
        "tokenizer_ms": tokenizer_s * 1e3,
        "compile_ms": compile_s * 1e3,
        "fill_1_us": median_s(lambda: lnp.fill_next_token_bitmask(matchers[0], bitmask, 0)) * 1e6,
        "fill_64_us": median_s(lambda: lnp.fill_next_token_bitmask_par(executor, rows, bitmask))
        * 1e6,
    }


def bench_xgrammar(tokenizer: Any, vocab: int, prefix: list[int]) -> dict[str, float]:
    import xgrammar as xgr

    start = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab, stop_token_ids=[2])
    tokenizer_s = time.perf_counter() - start

    def compile_schema() -> Any:
        compiler = xgr.GrammarCompiler(info, max_threads=2, cache_enabled=False)
        return compiler.compile_json_schema(
            json.dumps(SCHEMA), any_whitespace=False, separators=(",", ":")
        )

    compile_s = median_s(compile_schema, 5)
    compiled = compile_schema()
    matchers = [xgr.GrammarMatcher(compiled) for _ in range(BATCH)]
    for matcher in matchers:
        for token in prefix:
            assert matcher.accept_token(token)
    bitmask = xgr.allocate_token_bitmask(BATCH, vocab)
    batch = xgr.BatchGrammarMatcher(max_threads=2)
    return {
        "tokenizer_ms": tokenizer_s * 1e3,
        "compile_ms": compile_s * 1e3,
        "fill_1_us": median_s(lambda: matchers[0].fill_next_token_bitmask(bitmask, 0)) * 1e6,
        "fill_64_us": median_s(lambda: batch.batch_fill_next_token_bitmask(matchers, bitmask))
        * 1e6,
    }


def main() -> None:
    from transformers import AutoTokenizer

    from pe_engine.demo_model import smollm2_tokenizer_dir

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())
    vocab = 49152
    prefix = tokenizer.encode(PREFIX)
    results = {"llguidance": bench_llguidance(tokenizer, vocab, prefix)}
    try:
        results["xgrammar"] = bench_xgrammar(tokenizer, vocab, prefix)
    except ImportError as exc:
        print(f"xgrammar not importable ({exc}); see this file's docstring")
    print(
        f"{'engine':<11} {'tokenizer ms':>13} {'compile ms':>11} {'fill 1 us':>10} {'fill 64 us':>11}"
    )
    for name, r in results.items():
        print(
            f"{name:<11} {r['tokenizer_ms']:13.1f} {r['compile_ms']:11.2f} "
            f"{r['fill_1_us']:10.1f} {r['fill_64_us']:11.1f}"
        )
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"schema": SCHEMA, "prefix": PREFIX, "results": results}, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
