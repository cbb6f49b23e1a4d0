"""Plain requests' latency while hostile chat templates render (issue 17, item 1).

Starts pe-server with --trust-request-chat-template, then measures the end-to-end latency of
plain requests sent one after another (a completion of --max-tokens tokens, and a chat of the
same length, which renders the model's template in a worker) twice: on an idle server, and while
--hostile clients keep sending a chat whose own template loops 10^10 times (each is killed at
the render budget and answered 400 chat_template_timeout). Target: plain p99 within 2x of idle.
Also times SIGTERM to exit with a hostile render in flight. Prints a table, writes JSON.

    python benchmarks/bench_render_isolation.py                     # the demo model
    python benchmarks/bench_render_isolation.py --model random576 --num 20
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from bench_serving import SERVED_NAME, Server, build_model

DOS_TEMPLATE = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x"


def completion_body(max_tokens: int) -> dict[str, Any]:
    return {
        "model": SERVED_NAME,
        "prompt": "The capital of France is",
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
    }


def chat_body(max_tokens: int, template: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": SERVED_NAME,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
    }
    if template is not None:
        body["chat_template"] = template
    return body


def timed(client: httpx.Client, path: str, body: dict[str, Any]) -> float:
    start = time.perf_counter()
    response = client.post(path, json=body)
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise SystemExit(f"plain request failed: {response.status_code} {response.text[:200]}")
    return elapsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latencies(base_url: str, num: int, max_tokens: int) -> dict[str, dict[str, float]]:
    out: dict[str, list[float]] = {"completion": [], "chat": []}
    with httpx.Client(base_url=base_url, timeout=120) as client:
        for _ in range(num):
            out["completion"].append(timed(client, "/v1/completions", completion_body(max_tokens)))
            out["chat"].append(timed(client, "/v1/chat/completions", chat_body(max_tokens)))
    return {
        kind: {
            "p50_ms": 1000 * statistics.median(v),
            "p99_ms": 1000 * percentile(v, 0.99),
            "max_ms": 1000 * max(v),
        }
        for kind, v in out.items()
    }


class Hostile:
    """Clients that keep a hostile render running until stopped."""

    def __init__(self, base_url: str, num_clients: int) -> None:
        self.base_url = base_url
        self.stop = threading.Event()
        self.statuses: list[int] = []
        self.seconds: list[float] = []
        self.threads = [threading.Thread(target=self.run) for _ in range(num_clients)]

    def __enter__(self) -> Hostile:
        for thread in self.threads:
            thread.start()
        time.sleep(0.5)  # the renders are running
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=120) as client:
            while not self.stop.is_set():
                start = time.perf_counter()
                response = client.post("/v1/chat/completions", json=chat_body(4, DOS_TEMPLATE))
                self.seconds.append(time.perf_counter() - start)
                self.statuses.append(response.status_code)


def descendants(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [d for c in map(int, children) for d in (c, *descendants(c))]


def pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def render_memory_mib(server: Server) -> dict[str, float]:
    """Proportional set size of the server and of its render processes (forkserver, workers)."""
    helpers = descendants(server.proc.pid)
    return {
        "server_pss_mib": pss_mib(server.proc.pid),
        "render_processes": len(helpers),
        "render_pss_mib": sum(pss_mib(pid) for pid in helpers),
    }


def sigterm_seconds(server: Server) -> float:
    """Seconds from SIGTERM to exit with a hostile render in flight."""
    with Hostile(server.base_url, 1):
        start = time.perf_counter()
        server.stop()
        return time.perf_counter() - start


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2", help="smollm2 (demo), random576 or a directory")
    p.add_argument("--num", type=int, default=40, help="plain requests of each kind per phase")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--hostile", type=int, default=1, help="concurrent hostile clients")
    p.add_argument("--render-timeout", type=float, default=2.0)
    p.add_argument("--out", default="benchmarks/out/bench_render_isolation.json")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(args.model, Path(tmp))
        flags = [
            "--trust-request-chat-template",
            "--chat-render-timeout", str(args.render_timeout),
            "--drain-timeout", "2",
        ]  # fmt: skip
        server = Server(model_dir, 2048, flags)
        server.wait_ready()
        latencies(server.base_url, 3, args.max_tokens)  # warm-up
        idle = latencies(server.base_url, args.num, args.max_tokens)
        memory = render_memory_mib(server)
        with Hostile(server.base_url, args.hostile) as hostile:
            loaded = latencies(server.base_url, args.num, args.max_tokens)
        exit_s = sigterm_seconds(server)
    result = {
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "args": vars(args),
        "idle": idle,
        "hostile": loaded,
        "hostile_requests": len(hostile.statuses),
        "hostile_statuses": sorted(set(hostile.statuses)),
        "hostile_median_s": statistics.median(hostile.seconds) if hostile.seconds else None,
        "p99_ratio": {k: loaded[k]["p99_ms"] / idle[k]["p99_ms"] for k in idle},
        "sigterm_exit_s": exit_s,
        "memory": memory,
    }
    print_table(result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


def print_table(r: dict[str, Any]) -> None:
    print(f"\nplain request latency, {r['args']['hostile']} hostile render client(s)")
    print(f"{'request':<12}{'phase':<10}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for kind in ("completion", "chat"):
        for phase in ("idle", "hostile"):
            s = r[phase][kind]
            print(
                f"{kind:<12}{phase:<10}{s['p50_ms']:>10.1f}{s['p99_ms']:>10.1f}{s['max_ms']:>10.1f}"
            )
        print(f"{kind:<12}{'p99 ratio':<10}{r['p99_ratio'][kind]:>10.2f}")
    print(
        f"hostile renders: {r['hostile_requests']} answered {r['hostile_statuses']}, "
        f"median {r['hostile_median_s']:.2f} s; SIGTERM to exit: {r['sigterm_exit_s']:.2f} s"
    )
    m = r["memory"]
    print(
        f"PSS: server {m['server_pss_mib']:.0f} MiB, {m['render_processes']} render processes "
        f"{m['render_pss_mib']:.0f} MiB"
    )


if __name__ == "__main__":
    main()
