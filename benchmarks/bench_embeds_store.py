"""Multi-turn chat with prompt embeddings: every part inline each turn vs uploaded once by id.

Issue 21. A chat of --turns turns; each user turn adds one --rows x 576 embeds part (rows of
SmolLM2's embedding table) and a short text, each assistant reply is the previous turn's
greedy output. The chat API is stateless, so the inline mode re-sends every earlier part as
base64 on every turn; the id mode uploads only the new part (POST /v1/embeds, timed and counted
apart) and references the earlier ones by id. Per turn and mode: request bytes, server decode
ms (the pe_embeds_decode_seconds sum on /metrics), TTFT (first content token, client side) and
total ms, the median of --conversations conversations per mode. Each conversation has tensors
of its own, so none hits another's prefix cache; its own earlier turns do, in both modes alike.
Target: id bytes per turn flat, turn-N TTFT (upload included) >= 30% lower than inline.
Each turn is then asked again unchanged ("repeat"): the whole prompt is in the prefix cache, so
that TTFT is what the bytes cost (transport, parsing, decoding, hashing) with almost no prefill,
the part that stays when prefill is cheap (a GPU) and that a CPU's long prefill hides.
Prints a table, writes JSON and a plot (benchmarks/embeds_store.png, needs matplotlib).

    python benchmarks/bench_embeds_store.py --quick      # 3 turns of 128 rows
    python benchmarks/bench_embeds_store.py              # 8 turns of 512 rows
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from bench_serving import SERVED_NAME, Server, build_model

from pe_client import PEClient
from pe_client.messages import assistant, user

MODES = ("inline", "id")
DECODE_METRIC = "pe_embeds_decode_seconds_sum"


@dataclass
class Turn:
    """One turn of one conversation; the upload fields are zero in inline mode."""

    mode: str
    turn: int
    prompt_tokens: int
    body_bytes: int
    upload_bytes: int
    upload_ms: float
    upload_decode_ms: float
    decode_ms: float
    ttft_ms: float
    total_ms: float
    repeat_ttft_ms: float

    @property
    def sent_bytes(self) -> int:
        return self.body_bytes + self.upload_bytes

    @property
    def ttft_with_upload_ms(self) -> float:
        """What the user waits for from the moment the new part exists."""
        return self.upload_ms + self.ttft_ms


class BodyMeter:
    """An httpx request hook that keeps the size of the last request body sent."""

    def __init__(self) -> None:
        self.last = 0

    def __call__(self, request: httpx.Request) -> None:
        self.last = len(request.content)


def decode_seconds(http: httpx.Client) -> float:
    """The server's running total of seconds spent decoding prompt-embeds tensors."""
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(DECODE_METRIC):
            return float(line.split()[-1])
    return 0.0


class Conversation:
    """One chat, its history kept as built messages (each inline part is encoded once, as a
    client holding its message list would)."""

    def __init__(self, base_url: str, mode: str, max_tokens: int) -> None:
        self.mode, self.max_tokens = mode, max_tokens
        self.meter = BodyMeter()
        self.http = httpx.Client(timeout=600, event_hooks={"request": [self.meter]})
        self.client = PEClient(base_url=f"{base_url}/v1", http_client=self.http, max_retries=0)
        self.metrics = httpx.Client(base_url=base_url)  # unmetered: /metrics reads
        self.messages: list[dict[str, Any]] = []

    def turn(self, number: int, part: np.ndarray) -> Turn:
        upload_bytes, upload_ms, upload_decode_ms, embeds = 0, 0.0, 0.0, part
        if self.mode == "id":
            before = decode_seconds(self.metrics)
            start = time.perf_counter()
            embeds = self.client.embeds.create(part)
            upload_ms = 1000 * (time.perf_counter() - start)
            upload_bytes = self.meter.last
            upload_decode_ms = 1000 * (decode_seconds(self.metrics) - before)
        self.messages.append(user(f"Part {number}:", embeds, "What does it add?"))
        before = decode_seconds(self.metrics)
        reply, ttft_ms, total_ms, prompt_tokens = self.ask(self.max_tokens)
        decode_ms = 1000 * (decode_seconds(self.metrics) - before)
        _, repeat_ttft_ms, _, _ = self.ask(1)  # only its TTFT counts
        self.messages.append(assistant(reply or "."))
        return Turn(
            self.mode, number, prompt_tokens, self.meter.last, upload_bytes, upload_ms,
            upload_decode_ms, decode_ms, ttft_ms, total_ms, repeat_ttft_ms,
        )  # fmt: skip

    def ask(self, max_tokens: int) -> tuple[str, float, float, int]:
        """(reply, TTFT ms, total ms, prompt tokens) of one streamed greedy request."""
        start = time.perf_counter()
        ttft, pieces, prompt_tokens = 0.0, [], 0
        stream = self.client.chat.completions.create(
            model=SERVED_NAME,
            messages=self.messages,
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=max_tokens,
            temperature=0.0,
            ignore_eos=True,
        )
        with stream:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    ttft = ttft or time.perf_counter() - start
                    pieces.append(chunk.choices[0].delta.content)
                if chunk.usage is not None:
                    prompt_tokens = chunk.usage.prompt_tokens
        total = time.perf_counter() - start
        return "".join(pieces), 1000 * (ttft or total), 1000 * total, prompt_tokens

    def close(self) -> None:
        self.metrics.close()
        self.http.close()


def embedding_table(model_dir: Path) -> np.ndarray:
    """The model's token embeddings as float32 (through torch: the demo model is bfloat16)."""
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        return f.get_tensor("model.embed_tokens.weight").float().numpy()


def parts_for(table: np.ndarray, turns: int, rows: int, seed: int) -> list[np.ndarray]:
    """A conversation's parts: embedding-table rows of random tokens (realistic magnitudes)."""
    rng = np.random.default_rng(seed)
    return [
        np.ascontiguousarray(table[rng.integers(3, table.shape[0], rows)]) for _ in range(turns)
    ]


def run_conversation(
    base_url: str, table: np.ndarray, mode: str, args: argparse.Namespace, seed: int
) -> list[Turn]:
    chat = Conversation(base_url, mode, args.max_tokens)
    try:
        parts = parts_for(table, args.turns, args.rows, seed)
        turns = []
        for k, part in enumerate(parts):
            turns.append(chat.turn(k + 1, part))
            t = turns[-1]
            print(
                f"  {mode:<6} turn {t.turn}: {t.prompt_tokens} tokens, {t.sent_bytes} B sent, "
                f"TTFT {t.ttft_ms:.0f} ms (repeat {t.repeat_ttft_ms:.0f}), total {t.total_ms:.0f} ms",
                flush=True,
            )
        return turns
    finally:
        chat.close()


def run_all(base_url: str, table: np.ndarray, args: argparse.Namespace) -> list[list[Turn]]:
    """A short warm-up chat per mode, then the measured ones, modes alternating first."""
    warm = argparse.Namespace(**{**vars(args), "turns": 2, "rows": 16})
    for i, mode in enumerate(MODES):
        run_conversation(base_url, table, mode, warm, seed=10_000 + i)
    runs = []
    for c in range(args.conversations):
        order = MODES if c % 2 == 0 else MODES[::-1]
        for mode in order:
            runs.append(run_conversation(base_url, table, mode, args, seed=args.seed + len(runs)))
    return runs


def medians(runs: list[list[Turn]]) -> dict[str, list[dict[str, float]]]:
    """Per mode, per turn: the median of each measure over that mode's conversations."""
    fields = ("prompt_tokens", "body_bytes", "upload_bytes", "upload_ms", "upload_decode_ms")
    fields += ("decode_ms", "ttft_ms", "total_ms", "repeat_ttft_ms", "sent_bytes")
    fields += ("ttft_with_upload_ms",)
    out: dict[str, list[dict[str, float]]] = {}
    for mode in MODES:
        convs = [run for run in runs if run[0].mode == mode]
        out[mode] = [
            {
                "turn": k + 1,
                **{f: statistics.median(getattr(c[k], f) for c in convs) for f in fields},
            }
            for k in range(len(convs[0]))
        ]
    return out


def verdict(per_turn: dict[str, list[dict[str, float]]]) -> dict[str, float]:
    inline, by_id = per_turn["inline"][-1], per_turn["id"]
    return {
        "id_bytes_last_over_first": by_id[-1]["sent_bytes"] / by_id[0]["sent_bytes"],
        "inline_bytes_last_over_first": inline["sent_bytes"] / per_turn["inline"][0]["sent_bytes"],
        "last_turn_ttft_reduction": 1 - by_id[-1]["ttft_ms"] / inline["ttft_ms"],
        "last_turn_ttft_reduction_with_upload": 1
        - by_id[-1]["ttft_with_upload_ms"] / inline["ttft_ms"],
        "last_turn_repeat_ttft_reduction": 1
        - by_id[-1]["repeat_ttft_ms"] / inline["repeat_ttft_ms"],
    }


def print_table(per_turn: dict[str, list[dict[str, float]]], v: dict[str, float]) -> None:
    head = (
        f"{'turn':>4} {'tokens':>6} | {'inline KiB':>10} {'decode ms':>9} {'TTFT ms':>8} "
        f"{'total ms':>8} {'repeat':>6} | {'id KiB':>7} {'upload KiB':>10} {'upl ms':>7} {'decode ms':>9} "
        f"{'TTFT ms':>8} {'+upload':>8} {'total ms':>8} {'repeat':>6}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for a, b in zip(per_turn["inline"], per_turn["id"], strict=True):
        print(
            f"{a['turn']:>4.0f} {a['prompt_tokens']:>6.0f} | {a['body_bytes'] / 1024:>10.1f} "
            f"{a['decode_ms']:>9.1f} {a['ttft_ms']:>8.1f} {a['total_ms']:>8.1f} {a['repeat_ttft_ms']:>6.0f} | "
            f"{b['body_bytes'] / 1024:>7.1f} {b['upload_bytes'] / 1024:>10.1f} "
            f"{b['upload_ms']:>7.1f} {b['upload_decode_ms'] + b['decode_ms']:>9.1f} "
            f"{b['ttft_ms']:>8.1f} {b['ttft_with_upload_ms']:>8.1f} {b['total_ms']:>8.1f} {b['repeat_ttft_ms']:>6.0f}"
        )
    print(
        f"bytes sent, last turn / first: id {v['id_bytes_last_over_first']:.2f}, inline "
        f"{v['inline_bytes_last_over_first']:.2f} (target: id flat)\n"
        f"last-turn TTFT, id vs inline: {v['last_turn_ttft_reduction']:.0%} lower, "
        f"{v['last_turn_ttft_reduction_with_upload']:.0%} with the upload (target >= 30%); "
        f"repeat TTFT {v['last_turn_repeat_ttft_reduction']:.0%} lower"
    )


def plot(per_turn: dict[str, list[dict[str, float]]], title: str, path: Path) -> bool:
    """Bytes and TTFT per turn; False (and no file) without matplotlib (tox -e bench has it)."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot")
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    turns = [row["turn"] for row in per_turn["inline"]]
    series = {
        "bytes sent per turn (MiB)": [
            ("inline", "inline", "sent_bytes", 2**20),
            ("id: chat + upload", "id", "sent_bytes", 2**20),
        ],
        "TTFT per turn (ms)": [
            ("inline", "inline", "ttft_ms", 1),
            ("id: chat", "id", "ttft_ms", 1),
            ("id: upload + chat", "id", "ttft_with_upload_ms", 1),
            ("inline, repeat (cached)", "inline", "repeat_ttft_ms", 1),
            ("id, repeat (cached)", "id", "repeat_ttft_ms", 1),
        ],
    }
    fig, axes = plt.subplots(1, len(series), figsize=(11, 4))
    for ax, (label, lines) in zip(axes, series.items(), strict=True):
        for name, mode, field, scale in lines:
            ax.plot(turns, [row[field] / scale for row in per_turn[mode]], marker="o", label=name)
        ax.set_xlabel("turn")
        ax.set_title(label)
        ax.set_ylim(bottom=0)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2", help="smollm2 (demo), random576 or a directory")
    p.add_argument("--turns", type=int, default=8)
    p.add_argument("--rows", type=int, default=512, help="embeds rows added per turn")
    p.add_argument("--conversations", type=int, default=2, help="per mode; medians reported")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--max-model-len", type=int, default=8192)
    p.add_argument("--kv-cache-memory", default="2GiB")
    p.add_argument("--quick", action="store_true", help="3 turns of 128 rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/out/bench_embeds_store.json")
    p.add_argument("--plot", default="benchmarks/embeds_store.png")
    args = p.parse_args()
    if args.quick:
        args.turns, args.rows = 3, 128
        args.plot = str(Path(args.plot).with_name(Path(args.plot).stem + "_quick.png"))
        args.out = str(Path(args.out).with_name(Path(args.out).stem + "_quick.json"))
    return args


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(args.model, Path(tmp))
        table = embedding_table(model_dir)
        embeds_bytes = args.turns * args.rows * table.shape[1] * 4  # float32 on the server
        flags = [
            "--kv-cache-memory", args.kv_cache_memory,
            "--max-embeds-bytes", str(2 * embeds_bytes + 2**20),
            "--embeds-store-bytes", str(2 * embeds_bytes * args.conversations + 2**24),
        ]  # fmt: skip
        server = Server(model_dir, args.max_model_len, flags)
        try:
            server.wait_ready()
            runs = run_all(server.base_url, table, args)
        finally:
            server.stop()
    per_turn = medians(runs)
    v = verdict(per_turn)
    print_table(per_turn, v)
    machine = f"{platform.machine()} {os.cpu_count()} cpus"
    title = (
        f"pe multi-turn chat, {args.rows} x {table.shape[1]} embeds per turn, inline vs by id "
        f"({args.model}, {machine}, median of {args.conversations})"
    )
    plotted = plot(per_turn, title, Path(args.plot))
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine,
        "args": vars(args),
        "per_turn": per_turn,
        "verdict": v,
        "conversations": [[{**asdict(t), "sent_bytes": t.sent_bytes} for t in r] for r in runs],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}" + (f" and {args.plot}" if plotted else ""))


if __name__ == "__main__":
    main()
