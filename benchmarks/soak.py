"""Soak test for pe-server: mixed traffic for a long time, then check nothing leaked.

Starts a server (a tiny random Llama built with pe_engine.models.random_model, or --model DIR) on
127.0.0.1 and runs --concurrency clients for --duration seconds (default 600) sending a random
mix of text completions, prompt-embeds completions and chat requests with an embeds part,
streaming and not, with a share of clients that disconnect mid-request (--disconnect-rate).
Every --sample-every seconds it samples /metrics and the server's RSS (/proc/PID/status).

Pass criteria (exit status 1 when one fails; reference/security.md §12.23):
  - zero 5xx responses (and zero error events inside streams);
  - zero leaked KV blocks and no running or waiting requests once the traffic stops;
  - RSS growth < 5% from the end of the warm-up (the first --warmup seconds) to the end.

Prints a table and writes JSON (default benchmarks/out/soak.json).

The KV pool is small by default (--kv-cache-memory 8MiB): the engine's KV tensors are faulted in
lazily and the prefix cache hands out never-used blocks first, so RSS climbs by up to the pool's
size until every block has been used once. A small pool is touched within the warm-up; with a
large one, make the warm-up long enough to cycle through it.

    python benchmarks/soak.py                       # 10 minutes on the tiny model
    python benchmarks/soak.py --duration 90         # a quick run
    python benchmarks/soak.py --model DIR --duration 3600
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from pe_server.launch import free_port, stop_process, wait_http_ready

SERVED_NAME = "soak"
KINDS = ("text", "embeds", "chat")
MAX_RSS_GROWTH = 0.05
METRIC_LINE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$")
WORDS = (
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "birds",
    "sing",
)
MiB = 2**20


@dataclass
class Sample:
    t: float
    rss_mib: float
    running: float
    waiting: float
    kv_used_blocks: float
    admitted: float
    num_requests: int


@dataclass
class Tally:
    by_kind: dict[str, Counter[str]] = field(default_factory=lambda: {k: Counter() for k in KINDS})
    tokens: int = 0
    failures: list[str] = field(default_factory=list)

    def count(self, kind: str, outcome: str) -> None:
        self.by_kind[kind][outcome] += 1

    @property
    def num_requests(self) -> int:
        return sum(sum(c.values()) for c in self.by_kind.values())

    def total(self, outcome: str) -> int:
        return sum(c[outcome] for c in self.by_kind.values())


# ---- the server ------------------------------------------------------------------------------


class Server:
    """``python -m pe_server serve`` on a free loopback port, keyless."""

    def __init__(self, model_dir: Path, args: argparse.Namespace, log_path: Path) -> None:
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable, "-m", "pe_server", "serve", str(model_dir),
            "--port", str(self.port), "--served-model-name", SERVED_NAME,
            "--enable-prompt-embeds", "--dtype", "float32", "--max-model-len", "512",
            "--kv-cache-memory", args.kv_cache_memory,
            "--max-concurrent-requests", str(4 * args.concurrency), "--log-level", "warning",
        ]  # fmt: skip
        self.log_path = log_path
        self.log = log_path.open("wb")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def wait_ready(self, timeout: float = 300.0) -> None:
        wait_http_ready(self.proc, f"{self.root}/health", timeout, log_path=self.log_path)

    async def metrics(self, session: aiohttp.ClientSession) -> dict[str, float]:
        async with session.get(f"{self.root}/metrics") as r:
            text = await r.text()
        samples = {}
        for line in text.splitlines():
            match = METRIC_LINE.match(line)
            if match:
                samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
        return samples

    def stop(self) -> int:
        returncode = stop_process(self.proc)
        self.log.close()
        return returncode


# ---- traffic ---------------------------------------------------------------------------------


class Traffic:
    def __init__(self, args: argparse.Namespace, root: str, table: np.ndarray, tokenizer: Any):
        self.args = args
        self.root = root
        self.table = table
        self.tokenizer = tokenizer
        self.tally = Tally()

    def embeds(self, rng: random.Random, text: str) -> str:
        from pe_common.codec import encode_prompt_embeds

        ids = self.tokenizer.encode(text, add_special_tokens=False)
        fmt = rng.choice(["safetensors", "torch"])
        return str(encode_prompt_embeds(np.ascontiguousarray(self.table[ids]), fmt))

    def request(self, rng: random.Random, kind: str, stream: bool) -> tuple[str, dict[str, Any]]:
        text = " ".join(rng.choices(WORDS, k=rng.randint(3, 40)))
        common = {
            "model": SERVED_NAME,
            "max_tokens": rng.randint(1, 48),
            "temperature": rng.choice([0.0, 0.7, 1.0]),
            "stream": stream,
            "ignore_eos": rng.random() < 0.5,
        }
        if kind == "text":
            return "/v1/completions", {**common, "prompt": text}
        if kind == "embeds":
            return "/v1/completions", {**common, "prompt_embeds": self.embeds(rng, text)}
        content = [
            {"type": "text", "text": "Continue:"},
            {"type": "prompt_embeds", "data": self.embeds(rng, text)},
        ]
        return "/v1/chat/completions", {
            **common,
            "messages": [{"role": "user", "content": content}],
        }

    async def worker(self, session: aiohttp.ClientSession, seed: int, stop_at: float) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop_at:
            kind, stream = rng.choice(KINDS), rng.random() < 0.5
            path, body = self.request(rng, kind, stream)
            leave = rng.random() < self.args.disconnect_rate
            try:
                outcome = await self.send(session, rng, path, body, stream, leave)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                outcome = "client_error"
                self.tally.failures.append(f"{kind}: {type(exc).__name__}")
            self.tally.count(kind, outcome)

    async def send(
        self,
        session: aiohttp.ClientSession,
        rng: random.Random,
        path: str,
        body: dict[str, Any],
        stream: bool,
        leave: bool,
    ) -> str:
        if leave and not stream:  # leave while the server is generating
            try:
                await asyncio.wait_for(
                    self.post(session, path, body, stream), rng.uniform(0.01, 0.3)
                )
            except asyncio.TimeoutError:
                return "disconnected"
            return "completed_before_disconnect"
        return await self.post(
            session, path, body, stream, leave_after=rng.randint(1, 3) if leave else 0
        )

    async def post(
        self,
        session: aiohttp.ClientSession,
        path: str,
        body: dict[str, Any],
        stream: bool,
        leave_after: int = 0,
    ) -> str:
        async with session.post(f"{self.root}{path}", json=body) as response:
            if response.status >= 500:
                self.tally.failures.append(f"{path}: {response.status} {await response.text()}")
                return "5xx"
            if response.status != 200:
                self.tally.failures.append(f"{path}: {response.status} {await response.text()}")
                return "4xx"
            if not stream:
                payload = await response.json()
                self.tally.tokens += payload.get("usage", {}).get("completion_tokens", 0)
                return "ok"
            num_events = 0
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                if line.strip() == b"data: [DONE]":
                    return "ok"
                if "error" in json.loads(line[6:]):  # the server failed after the stream began
                    self.tally.failures.append(f"{path}: error event {line[:200]!r}")
                    return "5xx"
                num_events += 1
                self.tally.tokens += 1
                if leave_after and num_events >= leave_after:
                    response.close()  # drop the connection mid-stream
                    return "disconnected"
            self.tally.failures.append(f"{path}: stream ended without [DONE]")
            return "5xx"


async def sampler(
    server: Server, session: aiohttp.ClientSession, traffic: Traffic, start: float,
    every: float, stop: asyncio.Event, out: list[Sample],
) -> None:  # fmt: skip
    while True:
        out.append(await take_sample(server, session, traffic, start))
        try:
            await asyncio.wait_for(stop.wait(), every)
            return
        except asyncio.TimeoutError:
            pass


async def take_sample(
    server: Server, session: aiohttp.ClientSession, traffic: Traffic, start: float
) -> Sample:
    m = await server.metrics(session)
    return Sample(
        t=round(time.monotonic() - start, 1),
        rss_mib=round(server.rss_mib(), 1),
        running=m["pe_num_requests_running"],
        waiting=m["pe_num_requests_waiting"],
        kv_used_blocks=m["pe_kv_total_blocks"] - m["pe_kv_free_blocks"],
        admitted=m["pe_http_requests_admitted"],
        num_requests=traffic.tally.num_requests,
    )


# ---- the run ---------------------------------------------------------------------------------


def build_model(workdir: Path) -> Path:
    from pe_engine.demo_model import smollm2_tokenizer_dir
    from pe_engine.models.random_model import build_random_model

    return build_random_model(workdir / "tiny-llama", tokenizer_dir=smollm2_tokenizer_dir())


def load_table(model_dir: Path) -> np.ndarray:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), framework="np") as f:
        return f.get_tensor("model.embed_tokens.weight").astype(np.float32)


async def soak(args: argparse.Namespace, model_dir: Path, log_path: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    server = Server(model_dir, args, log_path)
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    connector = aiohttp.TCPConnector(limit=0)
    try:
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            await asyncio.to_thread(server.wait_ready)
            traffic = Traffic(args, server.root, load_table(model_dir), tokenizer)
            samples: list[Sample] = []
            stop = asyncio.Event()
            start = time.monotonic()
            watcher = asyncio.create_task(
                sampler(server, session, traffic, start, args.sample_every, stop, samples)
            )
            await asyncio.sleep(0)
            warm_until = start + args.warmup
            workers = [
                traffic.worker(session, args.seed + i, start + args.duration)
                for i in range(args.concurrency)
            ]
            warm_rss = asyncio.create_task(rss_at(server, warm_until))
            await asyncio.gather(*workers)
            stop.set()
            await watcher
            idle, final = await wait_idle(server, session, traffic, start)
            samples.append(final)
            return summarise(args, traffic, samples, await warm_rss, idle, final)
    finally:
        exit_code = server.stop()
        if exit_code != 0:
            print(f"pe-server exited with {exit_code}; log: {log_path}", file=sys.stderr)


async def rss_at(server: Server, when: float) -> float:
    await asyncio.sleep(max(0.0, when - time.monotonic()))
    return server.rss_mib()


async def wait_idle(
    server: Server, session: aiohttp.ClientSession, traffic: Traffic, start: float
) -> tuple[bool, Sample]:
    """Within 5 s of the last response: nothing running or waiting, every KV block free."""
    deadline = time.monotonic() + 5.0
    while True:
        sample = await take_sample(server, session, traffic, start)
        idle = not (sample.running or sample.waiting or sample.kv_used_blocks or sample.admitted)
        if idle or time.monotonic() > deadline:
            return idle, sample
        await asyncio.sleep(0.1)


def summarise(
    args: argparse.Namespace, traffic: Traffic, samples: list[Sample], warm_rss: float,
    idle: bool, final: Sample,
) -> dict[str, Any]:  # fmt: skip
    tally = traffic.tally
    growth = (final.rss_mib - warm_rss) / warm_rss
    peak_after_warmup = max(s.rss_mib for s in samples if s.t >= args.warmup)
    checks = {
        "zero_5xx": tally.total("5xx") == 0,
        "zero_client_errors": tally.total("client_error") == 0,
        "no_leaked_blocks": idle and final.kv_used_blocks == 0,
        "rss_growth_under_5pct": growth < MAX_RSS_GROWTH,
    }
    return {
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "platform": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
        "requests": {kind: dict(c) for kind, c in tally.by_kind.items()},
        "num_requests": tally.num_requests,
        "num_5xx": tally.total("5xx"),
        "num_disconnects": tally.total("disconnected"),
        "output_tokens": tally.tokens,
        "rss_mib": {
            "warm": round(warm_rss, 1),
            "final": final.rss_mib,
            "peak_after_warmup": peak_after_warmup,
            "growth_pct": round(100 * growth, 2),
        },
        "final": asdict(final),
        "samples": [asdict(s) for s in samples],
        "failures": tally.failures[:50],
        "checks": checks,
        "passed": all(checks.values()),
    }


def print_report(result: dict[str, Any]) -> None:
    print(f"\n{'kind':<8} {'ok':>7} {'discon.':>8} {'4xx':>5} {'5xx':>5} {'other':>6}")
    for kind, counts in result["requests"].items():
        other = sum(v for k, v in counts.items() if k not in ("ok", "disconnected", "4xx", "5xx"))
        print(
            f"{kind:<8} {counts.get('ok', 0):>7} {counts.get('disconnected', 0):>8} "
            f"{counts.get('4xx', 0):>5} {counts.get('5xx', 0):>5} {other:>6}"
        )
    print(
        f"\n{'t (s)':>7} {'RSS MiB':>8} {'running':>8} {'waiting':>8} {'KV used':>8} {'requests':>9}"
    )
    for s in result["samples"]:
        print(
            f"{s['t']:>7.1f} {s['rss_mib']:>8.1f} {s['running']:>8.0f} {s['waiting']:>8.0f} "
            f"{s['kv_used_blocks']:>8.0f} {s['num_requests']:>9}"
        )
    rss = result["rss_mib"]
    print(
        f"\n{result['num_requests']} requests, {result['output_tokens']} output tokens, "
        f"{result['num_disconnects']} client disconnects, {result['num_5xx']} 5xx"
    )
    print(
        f"RSS after warm-up {rss['warm']} MiB, final {rss['final']} MiB "
        f"({rss['growth_pct']:+.2f}%), peak after warm-up {rss['peak_after_warmup']} MiB"
    )
    for name, ok in result["checks"].items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    for failure in result["failures"][:10]:
        print(f"  failure: {failure}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=600.0, help="seconds of traffic")
    p.add_argument("--warmup", type=float, default=None, help="seconds (default 20%% of duration)")
    p.add_argument("--model", type=Path, default=None, help="model dir (default: tiny random)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--disconnect-rate", type=float, default=0.1)
    p.add_argument("--sample-every", type=float, default=5.0)
    p.add_argument("--request-timeout", type=float, default=60.0)
    p.add_argument("--kv-cache-memory", default="8MiB", help="KV pool (see the module doc)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "soak.json")
    args = p.parse_args(argv)
    if args.warmup is None:
        args.warmup = 0.2 * args.duration
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pe-soak-") as tmp:
        model_dir = args.model or build_model(Path(tmp))
        log_path = Path(tmp) / "server.log"
        result = asyncio.run(soak(args, model_dir, log_path))
        if not result["passed"]:
            print(log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
    print_report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nwrote {args.out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
