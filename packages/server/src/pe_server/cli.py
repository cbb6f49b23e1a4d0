"""``pe-server serve MODEL [flags]`` (also ``python -m pe_server``).

Flags keep vLLM's names where vLLM has them; every flag can also come from ``PE_<NAME>``
(e.g. ``PE_API_KEY``, ``PE_MAX_MODEL_LEN``), and a flag given on the command line wins.

With ``--backend vllm``, vLLM engine flags (those pe does not know, and the ones of the vLLM
compatibility group) go to vLLM as given (``--tensor-parallel-size 2
--distributed-executor-backend ray``); write them after the model. ``PE_VLLM_ARGS`` holds the
same as one shell-quoted string. pe's own backends accept the vLLM flags they honour
(``--runner generate``, ``--tensor-parallel-size 1``, ...) and refuse the rest at start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, get_args

from pydantic import ValidationError

from pe_server.backends import BackendUnavailableError, check_available
from pe_server.config import ServerConfig, UvicornLogLevel
from pe_server.vllm_flags import ENGINE_FLAGS, FRONTEND_FLAGS, add_flags, check_frontend_args

EPILOG = (
    "Every pe flag can also be set as an environment variable PE_<FLAG> (e.g. PE_API_KEY; "
    "vLLM's engine flags: PE_VLLM_ARGS). "
    "With --backend vllm, other flags (after the model) are vLLM engine arguments, passed "
    "through as given: --tensor-parallel-size, --pipeline-parallel-size, "
    "--distributed-executor-backend ray, ..."
)
# The HTTP layer's loggers: what uvicorn's are to `vllm serve` (--uvicorn-log-level).
HTTP_LOGGERS = ("pe_server.access", "aiohttp")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pe-server", description="OpenAI-compatible server for prompt embeddings."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="serve a model", description=__doc__.splitlines()[0], epilog=EPILOG
    )
    serve.add_argument("model", help='Hugging Face model directory, or "demo"')
    add_serve_flags(serve)
    return parser


Flag = tuple[tuple[str, ...], dict[str, Any]]


def flag(*names: str, **settings: Any) -> Flag:
    """One ``add_argument`` call, as data."""
    return names, settings


def switch(name: str, help: str) -> Flag:
    """A flag without a value; None when absent so that the environment can supply it."""
    return flag(name, action="store_true", default=None, help=help)


# pe's own flags by help group. Every default is None so that the environment (then
# ServerConfig) supplies it.
SERVE_FLAGS: dict[str, tuple[Flag, ...]] = {
    "network and security": (
        flag("--host", help="bind address (default 127.0.0.1)"),
        flag("--port", type=int, help="port (default 8000; 0 = any free port)"),
        flag("--api-key", action="append", help="accepted API key (repeatable)"),
        switch("--insecure", "allow a non-loopback bind without an API key"),
    ),
    "model and engine": (
        flag("--served-model-name", nargs="+", help="name(s) clients use in `model`"),
        flag(
            "--backend",
            choices=("native", "transformers", "vllm", "vllm-remote"),
            help="inference backend",
        ),
        flag("--upstream", help="vllm-remote: URL of a `vllm serve --enable-prompt-embeds` server"),
        flag("--upstream-api-key", help="vllm-remote: API key of the upstream"),
        switch("--enable-prompt-embeds", "accept prompt_embeds in requests"),
        flag("--tokenizer"),
        flag(
            "--dtype",
            choices=("auto", "float32", "bfloat16", "float16", "half", "float"),
            help="half and float are vLLM's names of float16 and float32",
        ),
        flag("--device", choices=("auto", "cpu", "cuda")),
        flag(
            "--quantization",
            "-q",
            metavar="METHOD",
            help="int8: the linears' weights in int8 (native backend, CPU); --backend vllm takes "
            "vLLM's methods",
        ),
        flag("--max-model-len", type=int),
        flag("--max-num-seqs", type=int),
        flag("--max-num-batched-tokens", type=int),
        flag("--block-size", type=int),
        flag("--kv-cache-memory", help="KV-cache bytes (e.g. 1GiB)"),
        flag("--num-kv-blocks", type=int, help="exact KV-cache block count"),
        flag(
            "--gpu-memory-utilization",
            type=float,
            help="CUDA: share of the GPU's memory for weights, activations and KV cache (0.9)",
        ),
        switch("--enforce-eager", "CUDA: run decode steps eagerly, without CUDA graphs"),
        flag("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=None),
        flag("--seed", type=int),
    ),
    "chat templates": (
        flag("--chat-template", help="server-wide chat template: a file or the template"),
        flag(
            "--chat-template-content-format",
            choices=("auto", "string", "openai"),
            help="how message content reaches the template (auto: detected from the template)",
        ),
        switch(
            "--trust-request-chat-template",
            "accept a request's own `chat_template` (it runs within the render budget)",
        ),
        flag("--chat-render-workers", type=int, help="chat template render processes"),
        switch("--enable-auto-tool-choice", 'tool_choice "auto": parse calls from the output'),
        flag(
            "--tool-call-parser",
            choices=("hermes", "llama3_json", "mistral"),
            help="how calls are written in the model's output (vLLM's parser names)",
        ),
        switch(
            "--exclude-tools-when-tool-choice-none",
            'leave `tools` out of the prompt when tool_choice is "none"',
        ),
        flag(
            "--structured-outputs-config",
            metavar="JSON",
            help='defaults of every constraint, e.g. {"disable_any_whitespace": true}',
        ),
        flag("--chat-render-timeout", type=float, help="seconds one chat template render may take"),
    ),
    "request limits": (
        flag("--max-embeds-bytes", help="decoded prompt-embeds bytes per request (e.g. 256MiB)"),
        flag("--embeds-store-bytes", help="bytes of uploaded embeddings (/v1/embeds) kept (1GiB)"),
        flag(
            "--embeds-store-bytes-per-key",
            help="bytes of uploaded embeddings one API key may keep",
        ),
        flag(
            "--embeds-ttl", type=float, help="seconds an uploaded embeddings object lives after use"
        ),
        flag("--max-concurrent-requests", type=int),
        flag(
            "--max-requests-per-key",
            type=int,
            help="concurrent requests per API key (per client address without keys); over: 429",
        ),
        flag("--max-bytes-in-flight", help="admission budget (e.g. 4GiB)"),
        flag("--max-prompts", type=int, help="prompts per completions request"),
        flag("--max-content-parts", type=int, help="content parts per chat request"),
        flag("--max-n", type=int),
        flag("--max-seqs-per-request", type=int, help="prompts x max(n, best_of) per request"),
        flag(
            "--max-prompt-chars",
            type=int,
            help="characters of one text prompt or chat (default: 32 x max model length)",
        ),
        flag(
            "--max-total-prompt-chars",
            type=int,
            help="characters of all text prompts of a request",
        ),
        flag("--max-logprobs", type=int),
    ),
    "timeouts": (
        flag("--header-read-timeout", type=float, help="seconds to receive a request's head"),
        flag("--body-read-timeout", type=float, help="base seconds to read a body"),
        flag("--stream-write-timeout", type=float, help="seconds a stream write may block"),
        flag("--drain-timeout", type=float, help="seconds to drain on SIGTERM"),
        flag(
            "--structured-outputs-timeout",
            type=float,
            help="seconds a request's schema, regex or grammar may take to compile (default 10)",
        ),
        flag("--keepalive-timeout", type=float),
        flag("--decode-threads", type=int, help="threads decoding tensors"),
    ),
}


def add_serve_flags(p: argparse.ArgumentParser) -> None:
    for title, flags in SERVE_FLAGS.items():
        group = p.add_argument_group(title)
        for names, settings in flags:
            group.add_argument(*names, **settings)
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    add_vllm_flags(p)


def add_vllm_flags(p: argparse.ArgumentParser) -> None:
    vllm = p.add_argument_group(
        "vLLM compatibility",
        "`vllm serve` flags, so that vLLM's commands work as written (the ones pe shares, such "
        "as --served-model-name, --max-model-len or --dtype, are above). --backend vllm passes "
        "the engine flags to vLLM; pe's own backends honour the values shown and refuse others "
        "at start-up.",
    )
    add_flags(vllm, ENGINE_FLAGS, "vllm_args")
    vllm.add_argument(
        "--uvicorn-log-level",
        choices=get_args(UvicornLogLevel),
        help="level of the HTTP layer's logs (access lines); trace is debug",
    )
    vllm.add_argument(
        "--disable-fastapi-docs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="no /openapi.json (pe serves no /docs or /redoc pages)",
    )
    add_flags(vllm, FRONTEND_FLAGS, "vllm_frontend_args")


def config_from_args(args: argparse.Namespace, vllm_args: Sequence[str] = ()) -> ServerConfig:
    """The config of parsed flags plus the unknown ones (``vllm_args``); raises ValueError
    (pydantic's ValidationError is one) naming the flag that cannot be honoured."""
    values = {k: v for k, v in vars(args).items() if k != "command"}
    check_frontend_args(values.pop("vllm_frontend_args", None) or ())
    tokens = [*(values.pop("vllm_args", None) or ()), *vllm_args]
    if tokens:
        values["vllm_args"] = tuple(tokens)
    return ServerConfig.from_sources(values, os.environ)


def error_lines(exc: ValidationError) -> list[str]:
    """One line per error: the field (none for the config as a whole) and the message."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        cause = err.get("ctx", {}).get("error")
        message = str(cause) if err["type"] == "value_error" and cause else err["msg"]
        lines.append(f"{where}: {message}" if where else message)
    return lines


def setup_logging(level: str, http_level: str | None = None) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if http_level is not None:
        level_no = logging.DEBUG if http_level == "trace" else getattr(logging, http_level.upper())
        for name in HTTP_LOGGERS:
            logging.getLogger(name).setLevel(level_no)


def main(argv: Sequence[str] | None = None) -> int:
    args, vllm_args = build_parser().parse_known_args(argv)
    try:
        config = config_from_args(args, vllm_args)
    except ValidationError as exc:
        for line in error_lines(exc):
            print(f"pe-server: {line}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"pe-server: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.uvicorn_log_level)
    try:
        check_available(config)
        from pe_server.serve import serve  # heavy imports (torch) only once the flags are valid

        return asyncio.run(serve(config))
    except BackendUnavailableError as exc:
        print(f"pe-server: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
