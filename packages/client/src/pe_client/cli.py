"""``pe-client``: try a pe (or vLLM) server from the shell, with embeddings read from files.

::

    pe-client complete --embeds doc.npy --prompt "In short:" --max-tokens 32
    pe-client chat --system "Be brief." --embeds doc.safetensors "Summarise:" "in one line"

The chat user message is the first TEXT, then the ``--embeds`` tensors, then the other TEXTs.
The reply is streamed to stdout. ``--model`` defaults to ``$PE_MODEL``, else the server's first
model; ``--base-url`` to ``$PE_BASE_URL``, else http://127.0.0.1:8000/v1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from pe_client.client import PEClient
from pe_client.errors import APIError
from pe_client.messages import system, user
from pe_client.streaming import Stream
from pe_client.tensors import EMBEDS_FORMATS, load_embeds_file

ChunkT = TypeVar("ChunkT")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pe-client", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    complete = commands.add_parser("complete", help="a completion from embeds and/or text")
    complete.add_argument("--prompt", help="text prompt (sent after the embeds prompts)")
    chat = commands.add_parser("chat", help="a chat turn mixing text and embeds")
    chat.add_argument("--system", help="system message text")
    chat.add_argument("text", nargs="*", help="user text; the embeds go after the first one")
    for sub in (complete, chat):
        _add_common(sub)
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=os.environ.get("PE_MODEL"), help="model name")
    parser.add_argument("--base-url", help="API root, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", help="API key (default $PE_API_KEY / $OPENAI_API_KEY)")
    parser.add_argument(
        "--embeds", action="append", default=[], metavar="FILE", help=".npy or .safetensors"
    )
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--embeds-format", choices=EMBEDS_FORMATS, default="safetensors")
    parser.add_argument("--transport", choices=("json", "msgpack"), default="json")
    parser.add_argument("--no-stream", action="store_true", help="wait for the whole reply")


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {"max_tokens": args.max_tokens, "temperature": args.temperature}
    if args.seed is not None:
        params["seed"] = args.seed
    return params


def run_complete(client: PEClient, model: str, args: argparse.Namespace) -> Iterable[str]:
    embeds = [load_embeds_file(path) for path in args.embeds]
    if not embeds and args.prompt is None:
        raise SystemExit("pe-client complete: give --embeds FILE and/or --prompt TEXT")
    prompt_embeds = embeds or None
    if args.no_stream:
        reply = client.completions.create(
            model=model, prompt=args.prompt, prompt_embeds=prompt_embeds, **_sampling(args)
        )
        return [choice.text for choice in reply.choices]
    stream = client.completions.create(
        model=model, prompt=args.prompt, prompt_embeds=prompt_embeds, stream=True, **_sampling(args)
    )
    return _texts(stream, lambda chunk: [c.text for c in chunk.choices])


def run_chat(client: PEClient, model: str, args: argparse.Namespace) -> Iterable[str]:
    embeds = [load_embeds_file(path) for path in args.embeds]
    content: list[object] = [*args.text[:1], *embeds, *args.text[1:]]
    if not content:
        raise SystemExit("pe-client chat: give some TEXT and/or --embeds FILE")
    messages = [system(args.system)] if args.system else []
    messages.append(user(*content, format=args.embeds_format))
    if args.no_stream:
        reply = client.chat.completions.create(model=model, messages=messages, **_sampling(args))
        return [choice.message.content or "" for choice in reply.choices]
    stream = client.chat.completions.create(
        model=model, messages=messages, stream=True, **_sampling(args)
    )
    return _texts(stream, lambda chunk: [c.delta.content or "" for c in chunk.choices])


def _texts(stream: Stream[ChunkT], pieces: Callable[[ChunkT], list[str]]) -> Iterator[str]:
    with stream:
        for chunk in stream:
            yield from pieces(chunk)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pe-client`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        with PEClient(
            base_url=args.base_url,
            api_key=args.api_key,
            transport=args.transport,
            embeds_format=args.embeds_format,
        ) as client:
            model = args.model or _first_model(client)
            run = run_complete if args.command == "complete" else run_chat
            for piece in run(client, model, args):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
    except APIError as exc:
        print(f"pe-client: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, TypeError) as exc:
        print(f"pe-client: {exc}", file=sys.stderr)
        return 2
    return 0


def _first_model(client: PEClient) -> str:
    models = client.models.list().data
    if not models:
        raise SystemExit("pe-client: the server lists no model; pass --model")
    return str(models[0].id)
