"""Decode speed of the prompt-embeds codec against its floors (issue 2).

For one SIZE x SIZE bfloat16 tensor: median decode time of each wire form, the floors
measured in the same run (pybase64 decode alone, one memcpy of the tensor bytes) and
torch.load(weights_only=True) on the same torch.save bytes for comparison. Rows marked
"info" are not held to a target: "msgpack memoryview" decodes the msgpack ``bin`` as a
zero-copy memoryview (a typed msgspec Struct) instead of a bytes copy.

    python benchmarks/bench_codec.py [--size 4096] [--repeat 7] [--out benchmarks/out/bench_codec.json]
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import pybase64
import torch

from pe_common.codec import EmbedsLimits, decode_prompt_embeds, encode_prompt_embeds

BASE64_TARGET = 1.5  # x (pybase64 decode + one memcpy)
MSGPACK_TARGET = 3.0  # x one memcpy


class RawView(msgspec.Struct):
    """Raw embeds whose msgpack ``bin`` decodes as a zero-copy view of the body."""

    data: memoryview
    dtype: str
    shape: list[int]


class BodyView(msgspec.Struct):
    prompt_embeds: RawView


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def build_payloads(size: int) -> dict[str, object]:
    tensor = torch.randn(size, size).to(torch.bfloat16)
    torch_bytes = encode_prompt_embeds(tensor, "torch", binary=True)
    raw = encode_prompt_embeds(tensor, "raw", binary=True)
    assert isinstance(torch_bytes, bytes) and isinstance(raw, dict)
    return {
        "tensor": tensor,
        "torch_bytes": torch_bytes,
        "torch_b64": pybase64.b64encode(torch_bytes).decode(),
        "safetensors_b64": encode_prompt_embeds(tensor, "safetensors"),
        "raw_b64": encode_prompt_embeds(tensor, "raw"),
        "msgpack_body": msgspec.msgpack.encode({"prompt_embeds": raw}),
    }


def run(size: int, repeat: int) -> dict[str, object]:
    p = build_payloads(size)
    limits = EmbedsLimits(max_bytes=max(256 * 2**20, 4 * size * size))
    kw = {"hidden_size": size, "dtype": torch.bfloat16, "limits": limits}
    raw_text = p["raw_b64"]["data"]  # type: ignore[index]
    tensor: torch.Tensor = p["tensor"]  # type: ignore[assignment]

    def msgpack_decode() -> torch.Tensor:
        body = msgspec.msgpack.decode(p["msgpack_body"])  # type: ignore[arg-type]
        return decode_prompt_embeds(body["prompt_embeds"], **kw)

    def msgpack_view_decode() -> torch.Tensor:
        body = msgspec.msgpack.decode(p["msgpack_body"], type=BodyView)  # type: ignore[arg-type]
        return decode_prompt_embeds(body.prompt_embeds, **kw)

    timings = {
        "floor: pybase64 decode": median_ms(
            lambda: pybase64.b64decode(raw_text, validate=True), repeat
        ),
        "floor: memcpy (clone)": median_ms(tensor.clone, repeat),
        "torch.save base64": median_ms(lambda: decode_prompt_embeds(p["torch_b64"], **kw), repeat),
        "safetensors base64": median_ms(
            lambda: decode_prompt_embeds(p["safetensors_b64"], **kw), repeat
        ),
        "raw base64": median_ms(lambda: decode_prompt_embeds(p["raw_b64"], **kw), repeat),
        "msgpack raw bytes": median_ms(msgpack_decode, repeat),
        "info: msgpack memoryview": median_ms(msgpack_view_decode, repeat),
        "cmp: torch.load bytes": median_ms(
            lambda: torch.load(io.BytesIO(p["torch_bytes"]), weights_only=True),
            repeat,  # type: ignore[arg-type]
        ),
        "cmp: base64 + torch.load": median_ms(
            lambda: torch.load(
                io.BytesIO(pybase64.b64decode(p["torch_b64"], validate=True)),
                weights_only=True,  # type: ignore[arg-type]
            ),
            repeat,
        ),
    }
    base64_floor = timings["floor: pybase64 decode"] + timings["floor: memcpy (clone)"]
    memcpy = timings["floor: memcpy (clone)"]
    ratios = {
        "torch.save base64": timings["torch.save base64"] / base64_floor,
        "safetensors base64": timings["safetensors base64"] / base64_floor,
        "raw base64": timings["raw base64"] / base64_floor,
        "msgpack raw bytes": timings["msgpack raw bytes"] / memcpy,
    }
    passed = all(
        ratio <= (MSGPACK_TARGET if name.startswith("msgpack") else BASE64_TARGET)
        for name, ratio in ratios.items()
    )
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "size": [size, size],
        "dtype": "bfloat16",
        "tensor_bytes": size * size * 2,
        "repeat": repeat,
        "median_ms": timings,
        "ratios": ratios,
        "targets": {
            "base64_vs_b64_plus_memcpy": BASE64_TARGET,
            "msgpack_vs_memcpy": MSGPACK_TARGET,
        },
        "pass": passed,
    }


def print_table(result: dict[str, object]) -> None:
    timings: dict[str, float] = result["median_ms"]  # type: ignore[assignment]
    ratios: dict[str, float] = result["ratios"]  # type: ignore[assignment]
    print(
        f"{result['size']} bf16, {result['tensor_bytes'] / 2**20:.1f} MiB, "
        f"nproc={result['nproc']}, {result['date']}"
    )
    print(f"{'path':28s} {'median ms':>10s} {'ratio':>8s}  target")
    for name, ms in timings.items():
        ratio = ratios.get(name)
        if ratio is None:
            print(f"{name:28s} {ms:10.1f}")
            continue
        target = MSGPACK_TARGET if name.startswith("msgpack") else BASE64_TARGET
        floor = "memcpy" if name.startswith("msgpack") else "(b64 + memcpy)"
        print(f"{name:28s} {ms:10.1f} {ratio:7.2f}x  <= {target}x {floor}")
    print("PASS" if result["pass"] else "MISS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "out" / "bench_codec.json"
    )
    args = parser.parse_args()
    result = run(args.size, args.repeat)
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
