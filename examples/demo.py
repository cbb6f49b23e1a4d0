"""The main job: serve SmolLM2-135M-Instruct with pe and talk to it with pe-client.

Run with `tox -e demo` (or `python examples/demo.py` where pe is installed). It converts the demo
model once into ~/.cache/pe/, starts `pe-server serve demo --enable-prompt-embeds` on 127.0.0.1,
then makes five calls: a plain chat question, the same question sent as prompt embeddings, a
mixed chat with a document's embeddings between two text parts, a streamed completion, and a
structured answer about the document's embeddings that must match a JSON schema.
It exits non-zero if any call fails or returns an empty answer.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, Field
from safetensors import safe_open
from transformers import AutoTokenizer

from pe_client import PEClient
from pe_client.messages import user
from pe_engine.demo_model import ensure_demo_model
from pe_server.launch import free_port, stop_process, wait_http_ready

QUESTION = "What is the capital of France?"
DOCUMENT = (
    "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was built for the 1889 "
    "World's Fair and was the tallest man-made structure in the world for 41 years."
)


class DocumentSummary(BaseModel):
    """The structured answer of call 5: the server constrains decoding to this schema."""

    topic: str = Field(max_length=40)
    sentiment: Literal["positive", "negative", "neutral"]
    keywords: list[Annotated[str, Field(max_length=20)]] = Field(max_length=3)


def json_schema_format(model: type[BaseModel]) -> dict[str, object]:
    """OpenAI's ``response_format`` for a Pydantic model; strict: no properties beyond it."""
    schema = {**model.model_json_schema(), "additionalProperties": False}
    return {
        "type": "json_schema",
        "json_schema": {"name": model.__name__, "schema": schema, "strict": True},
    }


class Embedder:
    """Client-side embeddings: the model's own token-embedding rows for a text."""

    def __init__(self, model_dir: Path) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
            table = f.get_tensor("model.embed_tokens.weight")
        self.table = table.float().numpy()  # numpy has no bfloat16

    def __call__(self, text: str) -> np.ndarray:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return np.ascontiguousarray(self.table[ids])


def start_server(model_dir: Path, port: int) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "pe_server", "serve", str(model_dir),
        "--served-model-name", "demo", "--enable-prompt-embeds",
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
        "--max-model-len", "2048", "--log-level", "warning",
    ]  # fmt: skip
    print("$ python " + " ".join(cmd[1:]), flush=True)
    return subprocess.Popen(cmd)


def timed(title: str, call: Callable[[], str]) -> str:
    print(f"\n== {title}", flush=True)
    start = time.perf_counter()
    answer = call()
    elapsed = time.perf_counter() - start
    print(f"\n-> {answer.strip()!r}\n   ({elapsed:.2f} s)", flush=True)
    if not answer.strip():
        raise SystemExit(f"empty answer for: {title}")
    return answer


def run_calls(client: PEClient, embed: Embedder) -> None:
    def chat(messages: list[dict[str, object]]) -> str:
        reply = client.chat.completions.create(
            model="demo", messages=messages, max_tokens=48, temperature=0.0
        )
        return reply.choices[0].message.content or ""

    text_answer = timed("1. chat, plain text", lambda: chat([user(QUESTION)]))
    embeds_answer = timed(
        "2. chat, the same question sent as prompt embeddings",
        lambda: chat([user(embed(QUESTION))]),
    )
    print(f"   same answer as text: {text_answer == embeds_answer}")
    timed(
        "3. mixed chat: text, a document's embeddings, text",
        lambda: chat([user("Read this document:", embed(DOCUMENT), "Which city is it about?")]),
    )

    def streamed() -> str:
        pieces = []
        stream = client.completions.create(
            model="demo",
            prompt_embeds=embed("The three primary colours are"),
            max_tokens=32,
            temperature=0.0,
            stream=True,
        )
        with stream:
            for chunk in stream:
                piece = chunk.choices[0].text if chunk.choices else ""
                pieces.append(piece)
                print(piece, end="", flush=True)
        return "".join(pieces)

    timed("4. streamed completion from prompt embeddings", streamed)

    def structured() -> str:
        reply = client.chat.completions.create(
            model="demo",
            messages=[user("Summarise this document as JSON:", embed(DOCUMENT))],
            max_tokens=96,
            temperature=0.0,
            response_format=json_schema_format(DocumentSummary),
        )
        choice = reply.choices[0]
        summary = DocumentSummary.model_validate_json(choice.message.content or "")
        print(f"finish_reason {choice.finish_reason!r}, parsed: {summary!r}")
        return choice.message.content or ""

    timed("5. structured output: a JSON-schema answer about the document's embeddings", structured)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    started = time.perf_counter()
    model_dir = ensure_demo_model()
    print(f"demo model ready at {model_dir} ({time.perf_counter() - started:.1f} s)", flush=True)
    port = args.port or free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(model_dir, port)
    try:
        wait_http_ready(proc, f"{base}/health", timeout=300.0, step=0.5)
        print(f"pe-server ready on {base} ({time.perf_counter() - started:.1f} s)", flush=True)
        embed = Embedder(model_dir)
        with PEClient(base_url=f"{base}/v1", api_key=None, timeout=300.0) as client:
            run_calls(client, embed)
    finally:
        stop_process(proc)
    print(f"\ndemo finished in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
