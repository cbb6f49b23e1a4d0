"""Online serving benchmark in the shape of `vllm bench serve`, for pe-server.

Sends N requests to /v1/completions (streaming, usage included) at a given concurrency or
Poisson request rate, with random input lengths, three ways: as text (token ids), as prompt
embeddings in JSON (base64 safetensors), and as prompt embeddings over msgpack (raw bytes).
Reports request and token throughput and TTFT / TPOT / ITL / end-to-end latency (mean, median,
p99), prints a table, writes JSON (default benchmarks/out/bench_serving.json). Then:

- server vs offline: the same burst workload through the server and through pe's LLM.generate
  (target: server output tok/s >= 90% of offline; both warm, best of --repeat);
- msgpack vs JSON TTFT for 1024 x 576 embeds (target: msgpack >= 25% lower).

    python benchmarks/bench_serving.py --quick            # about a minute on 2 CPU cores
    python benchmarks/bench_serving.py --base-url http://127.0.0.1:8000 --model-dir DIR
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import numpy as np
from bench_offline import SMOLLM2_SHAPE

from pe_server.launch import free_port, stop_process, wait_http_ready

MODES = ("text", "embeds-json", "embeds-msgpack")
SERVED_NAME = "bench"
# SmolLM2's width (576) on a shallow, untied random Llama: SmolLM2-sized embeds, quick to run.
RANDOM576_SHAPE = {**SMOLLM2_SHAPE, "num_layers": 4, "tie_word_embeddings": False}


@dataclass
class RequestResult:
    """One streamed request as the client saw it (``ok`` once it got its tokens, no error)."""

    ttft: float = 0.0
    e2e: float = 0.0
    itl: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.output_tokens > 0


# Mean, median and p99 of a latency, in milliseconds.
LatencyStats = dict[str, float]


@dataclass
class Summary:
    mode: str
    num_requests: int
    num_failed: int
    concurrency: str
    duration_s: float
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    ttft_ms: LatencyStats
    tpot_ms: LatencyStats
    itl_ms: LatencyStats
    e2e_ms: LatencyStats
    body_bytes_mean: float


def stats_ms(values: list[float]) -> LatencyStats:
    if not values:
        return {"mean": float("nan"), "median": float("nan"), "p99": float("nan")}
    ms = [v * 1000 for v in values]
    return {
        "mean": statistics.fmean(ms),
        "median": statistics.median(ms),
        "p99": float(np.percentile(ms, 99)),
    }


# ---- workload ------------------------------------------------------------------------------


@dataclass
class Workload:
    prompts: list[list[int]]
    output_len: int


def make_workload(num: int, lo: int, hi: int, output_len: int, vocab: int, seed: int) -> Workload:
    rng = random.Random(seed)
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(num)]
    return Workload(prompts, output_len)


def fresh_ids(work: Workload, vocab: int, seed: int) -> list[list[int]]:
    """New random ids with the same lengths: each mode gets prompts no earlier mode sent, so
    none of them hits the prefix cache another filled (embeds-msgpack re-sending
    embeds-json's rows would skip its prefills)."""
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in ids] for ids in work.prompts]


def embedding_table(model_dir: Path) -> np.ndarray:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), framework="np") as f:
        return f.get_tensor("model.embed_tokens.weight").astype(np.float32)


def request_body(
    mode: str, ids: list[int], table: np.ndarray, output_len: int
) -> tuple[bytes, str]:
    """(body bytes, content type) of one streamed completions request."""
    from pe_common.codec import encode_prompt_embeds

    body: dict[str, Any] = {
        "model": SERVED_NAME,
        "max_tokens": output_len,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if mode == "text":
        body["prompt"] = ids
        return msgspec.json.encode(body), "application/json"
    rows = np.ascontiguousarray(table[ids])
    if mode == "embeds-json":
        body["prompt_embeds"] = encode_prompt_embeds(rows, "safetensors")
        return msgspec.json.encode(body), "application/json"
    body["prompt_embeds"] = encode_prompt_embeds(rows, "safetensors", binary=True)
    return msgspec.msgpack.encode(body), "application/msgpack"


# ---- client --------------------------------------------------------------------------------


async def send_one(
    session: aiohttp.ClientSession, url: str, body: bytes, content_type: str
) -> RequestResult:
    headers = {"Content-Type": content_type, "Accept": "text/event-stream"}
    start = time.perf_counter()
    result = RequestResult()
    last = start
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            if resp.status != 200:
                result.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return result
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("error"):
                    result.error = str(chunk["error"])[:200]
                    return result
                now = time.perf_counter()
                if chunk.get("choices") and chunk["choices"][0].get("text"):
                    if result.ttft == 0.0:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last)
                    last = now
                if chunk.get("usage"):
                    result.prompt_tokens = chunk["usage"]["prompt_tokens"]
                    result.output_tokens = chunk["usage"]["completion_tokens"]
        result.e2e = time.perf_counter() - start
    except aiohttp.ClientError as exc:
        result.error = type(exc).__name__
    return result


async def run_load(
    base_url: str,
    bodies: list[tuple[bytes, str]],
    concurrency: int | None,
    rate: float | None,
    seed: int,
) -> tuple[list[RequestResult], float]:
    url = f"{base_url}/v1/completions"
    limit = asyncio.Semaphore(concurrency or len(bodies))
    rng = random.Random(seed)
    timeout = aiohttp.ClientTimeout(total=3600)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def limited(body: bytes, ctype: str) -> RequestResult:
            async with limit:
                return await send_one(session, url, body, ctype)

        start = time.perf_counter()
        tasks = []
        for body, ctype in bodies:
            tasks.append(asyncio.create_task(limited(body, ctype)))
            if rate:
                await asyncio.sleep(rng.expovariate(rate))
        results = await asyncio.gather(*tasks)
        return list(results), time.perf_counter() - start


def summarise(
    mode: str, results: list[RequestResult], duration: float, conc: str, bodies: list[Any]
) -> Summary:
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_tokens for r in ok)
    tpot = [(r.e2e - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    return Summary(
        mode=mode,
        num_requests=len(results),
        num_failed=len(results) - len(ok),
        concurrency=conc,
        duration_s=duration,
        request_throughput=len(ok) / duration,
        output_throughput=out_tokens / duration,
        total_token_throughput=(in_tokens + out_tokens) / duration,
        ttft_ms=stats_ms([r.ttft for r in ok]),
        tpot_ms=stats_ms(tpot),
        itl_ms=stats_ms([x for r in ok for x in r.itl]),
        e2e_ms=stats_ms([r.e2e for r in ok]),
        body_bytes_mean=statistics.fmean(len(b) for b, _ in bodies),
    )


# ---- server and offline --------------------------------------------------------------------


class Server:
    def __init__(self, model_dir: Path, max_model_len: int, extra: list[str]) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable, "-m", "pe_server", "serve", str(model_dir),
            "--port", str(self.port), "--served-model-name", SERVED_NAME,
            "--enable-prompt-embeds", "--dtype", "float32",
            "--max-model-len", str(max_model_len), "--max-concurrent-requests", "4096",
            "--log-level", "warning", *extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"})

    def wait_ready(self, timeout: float = 300.0) -> None:
        wait_http_ready(self.proc, f"{self.base_url}/health", timeout)

    def stop(self) -> None:
        stop_process(self.proc)


def offline_throughput(
    model_dir: Path, work: Workload, max_model_len: int, repeat: int
) -> dict[str, float]:
    """pe's LLM.generate on the whole workload at once (token-id prompts), warm, best of N."""
    from pe_engine import LLM, SamplingParams

    llm = LLM(model=str(model_dir), dtype="float32", max_model_len=max_model_len)
    params = SamplingParams(temperature=0.0, max_tokens=work.output_len, ignore_eos=True)
    prompts = [{"prompt_token_ids": ids} for ids in work.prompts]
    llm.generate(prompts, params, use_tqdm=False)  # warm-up, as the server had its runs
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        best = min(best, time.perf_counter() - start)
    num_out = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    return {"seconds": best, "output_tokens": num_out, "output_throughput": num_out / best}


def build_model(name: str, workdir: Path) -> Path:
    from pe_engine.demo_model import ensure_demo_model, smollm2_tokenizer_dir
    from pe_engine.models.random_model import build_random_model

    if name == "random576":
        tokenizer_dir = smollm2_tokenizer_dir()
        return build_random_model(workdir / name, **RANDOM576_SHAPE, tokenizer_dir=tokenizer_dir)
    if name == "smollm2":
        return ensure_demo_model()
    return Path(name)


# ---- the benchmark -------------------------------------------------------------------------


async def run_modes(args: argparse.Namespace, base_url: str, model_dir: Path) -> dict[str, Any]:
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    table = embedding_table(model_dir)
    work = make_workload(
        args.num_prompts, args.min_input, args.max_input, args.output_len, vocab, args.seed
    )
    warm = [request_body(m, work.prompts[0], table, 4) for m in MODES]
    await run_load(base_url, warm, None, None, args.seed)
    conc = f"{args.max_concurrency}" if not args.request_rate else f"rate {args.request_rate}/s"
    summaries = []
    for i, mode in enumerate(args.modes):
        prompts = fresh_ids(work, vocab, args.seed + 1 + i)
        bodies = [request_body(mode, ids, table, work.output_len) for ids in prompts]
        results, seconds = await run_load(
            base_url, bodies, args.max_concurrency, args.request_rate, args.seed
        )
        summaries.append(summarise(mode, results, seconds, conc, bodies))
        failed = [r.error for r in results if not r.ok]
        if failed:
            print(f"{mode}: {len(failed)} failed, e.g. {failed[0]}", file=sys.stderr)
    burst = None
    if not args.no_offline:  # the whole workload at once, best of --repeat (CPU neighbours)
        bodies = [request_body("text", ids, table, work.output_len) for ids in work.prompts]
        for _ in range(args.repeat):
            results, seconds = await run_load(base_url, bodies, None, None, args.seed)
            run = summarise("text-burst", results, seconds, "all", bodies)
            if burst is None or run.output_throughput > burst.output_throughput:
                burst = run
    ttft = await embeds_ttft(args, base_url, table) if table.shape[1] == 576 else None
    return {"workload": work, "summaries": summaries, "burst": burst, "ttft_1024x576": ttft}


async def embeds_ttft(args: argparse.Namespace, base_url: str, table: np.ndarray) -> dict[str, Any]:
    """Single-token requests with 1024 x 576 embeds, JSON base64 vs msgpack bytes, interleaved.

    cold: fresh embeddings each time (TTFT includes the 1024-token prefill);
    warm: the same embeddings sent before (a prefix-cache hit), so what remains is transport,
    parsing, tensor decoding and one decode step: the part the wire format can change.
    """
    rng = np.random.default_rng(args.seed)
    modes = ("embeds-json", "embeds-msgpack")
    times: dict[str, dict[str, list[float]]] = {m: {"cold": [], "warm": []} for m in modes}
    sizes: dict[str, int] = {}
    for i in range(args.ttft_requests):
        order = modes if i % 2 == 0 else modes[::-1]
        for mode in order:  # cold
            ids = rng.integers(3, table.shape[0], size=1024).tolist()
            body = request_body(mode, ids, table, 1)
            sizes[mode] = len(body[0])
            times[mode]["cold"] += ttfts(await run_load(base_url, [body], 1, None, 0))
        ids = rng.integers(3, table.shape[0], size=1024).tolist()
        await run_load(base_url, [request_body("embeds-msgpack", ids, table, 1)], 1, None, 0)
        for mode in order:  # warm: both hit the prefix cache the request above filled
            body = request_body(mode, ids, table, 1)
            times[mode]["warm"] += ttfts(await run_load(base_url, [body], 1, None, 0))
    out: dict[str, Any] = {
        m: {"body_bytes": sizes[m], **{k: stats_ms(v) for k, v in times[m].items()}} for m in modes
    }
    for kind in ("cold", "warm"):
        json_ms = out["embeds-json"][kind]["median"]
        out[f"msgpack_reduction_{kind}"] = 1 - out["embeds-msgpack"][kind]["median"] / json_ms
    return out


def ttfts(run: tuple[list[RequestResult], float]) -> list[float]:
    """One-token requests: the end-to-end time is the time to the only token."""
    return [r.e2e for r in run[0] if r.ok]


def print_table(summaries: list[Summary]) -> None:
    head = (
        f"{'mode':<15} {'reqs':>4} {'fail':>4} {'conc':>6} {'req/s':>6} {'out tok/s':>9} "
        f"{'tot tok/s':>9} | {'TTFT mean/med/p99 ms':>22} | {'TPOT mean/med/p99':>20} | "
        f"{'ITL mean/med/p99':>20} | {'E2E mean/med/p99 ms':>22}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for s in summaries:

        def trio(d: LatencyStats) -> str:
            return f"{d['mean']:.1f}/{d['median']:.1f}/{d['p99']:.1f}"

        print(
            f"{s.mode:<15} {s.num_requests:>4} {s.num_failed:>4} {s.concurrency:>6} "
            f"{s.request_throughput:>6.2f} {s.output_throughput:>9.1f} "
            f"{s.total_token_throughput:>9.1f} | {trio(s.ttft_ms):>22} | {trio(s.tpot_ms):>20} | "
            f"{trio(s.itl_ms):>20} | {trio(s.e2e_ms):>22}"
        )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", help="target a running server (served name must be 'bench')")
    p.add_argument("--model", default="random576", help="random576 | smollm2 | a model directory")
    p.add_argument("--model-dir", help="with --base-url: the served model's directory")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--max-concurrency", type=int, default=16)
    p.add_argument("--request-rate", type=float, help="Poisson arrivals per second (default: all)")
    p.add_argument("--min-input", type=int, default=64)
    p.add_argument("--max-input", type=int, default=256)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--ttft-requests", type=int, default=10)
    p.add_argument("--repeat", type=int, default=3, help="server/offline comparison runs")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--server-args", default="", help="extra pe-server flags, one string")
    p.add_argument("--no-offline", action="store_true", help="skip the offline comparison")
    p.add_argument("--quick", action="store_true", help="small sizes: about a minute")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/out/bench_serving.json")
    args = p.parse_args()
    if args.quick:
        args.num_prompts, args.max_concurrency = 16, 8
        args.min_input, args.max_input, args.output_len = 32, 128, 32
        args.ttft_requests, args.repeat = 5, 2
    return args


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model_dir) if args.model_dir else build_model(args.model, Path(tmp))
        server = None
        base_url = args.base_url
        if base_url is None:
            server = Server(model_dir, args.max_model_len, args.server_args.split())
            server.wait_ready()
            base_url = server.base_url
        try:
            result = asyncio.run(run_modes(args, base_url, model_dir))
        finally:
            if server is not None:
                server.stop()
        offline = None
        if not args.no_offline:
            offline = offline_throughput(
                model_dir, result["workload"], args.max_model_len, args.repeat
            )
    report(args, result, offline)


def report(
    args: argparse.Namespace, result: dict[str, Any], offline: dict[str, Any] | None
) -> None:
    summaries: list[Summary] = result["summaries"]
    burst: Summary | None = result["burst"]
    print_table(summaries + ([burst] if burst else []))
    comparison = None
    if offline and burst:
        ratio = burst.output_throughput / offline["output_throughput"]
        comparison = {"server_burst": burst.output_throughput, "offline": offline, "ratio": ratio}
        print(
            f"\nserver vs offline (same {args.num_prompts} prompts at once): "
            f"{burst.output_throughput:.1f} vs {offline['output_throughput']:.1f} out tok/s "
            f"= {ratio:.0%} (target >= 90%)"
        )
    ttft = result["ttft_1024x576"]
    if ttft:
        j, m = ttft["embeds-json"], ttft["embeds-msgpack"]
        print(
            f"TTFT 1024x576 embeds (median; body JSON {j['body_bytes']} B, msgpack "
            f"{m['body_bytes']} B; target: msgpack >= 25% lower)"
        )
        for kind in ("cold", "warm"):
            print(
                f"  {kind:<4}: JSON {j[kind]['median']:.1f} ms, msgpack {m[kind]['median']:.1f} ms"
                f" -> {ttft[f'msgpack_reduction_{kind}']:.0%} lower"
            )
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "args": {k: v for k, v in vars(args).items()},
        "summaries": [asdict(s) for s in summaries],
        "burst": asdict(burst) if burst else None,
        "server_vs_offline": comparison,
        "ttft_1024x576": ttft,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
