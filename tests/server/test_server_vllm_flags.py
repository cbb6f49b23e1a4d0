"""vLLM's ``vllm serve`` flags on ``pe-server serve``: honoured with vLLM's meaning, accepted where
they mean nothing to pe, refused at start-up with the flag, its value and the backend that has it;
on ``--backend vllm`` the engine flags still reach vLLM as given."""

from __future__ import annotations

import base64
import io
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from server_harness import ServerProcess

from conftest import MODEL, Embedder, start_server
from pe_server.cli import build_parser, config_from_args, error_lines, main, setup_logging
from pe_server.config import ServerConfig

# The vLLM docs' command, `vllm serve MODEL ...` with pe-server in place of vllm.
DOCS_FLAGS = ["--runner", "generate", "--max-model-len", "4096", "--enable-prompt-embeds"]
ACCEPTED = [
    ["--runner", "auto"],
    ["--runner=generate"],
    ["--task", "generate"],
    ["--trust-remote-code"],
    ["--no-trust-remote-code"],
    ["--tensor-parallel-size", "1"],
    ["-tp", "1", "-pp", "1", "-dp", "1"],
    ["--generation-config", "auto"],
    ["--generation-config", "vllm"],
    ["--disable-log-requests"],
    ["--no-enable-log-requests"],
    ["--tokenizer-mode", "hf"],
    ["--kv-cache-dtype", "auto"],
    ["--no-enable-lora"],
    ["--enable-chunked-prefill"],
    ["--load-format", "safetensors"],
    ["--response-role", "assistant"],
    ["--disable-fastapi-docs"],
    ["--uvicorn-log-level", "warning"],
]
# Refused on pe's own backends, and by --backend vllm too (pe serves generation only).
GENERATION_ONLY = [["--runner", "pooling"], ["--runner", "draft"], ["--task", "embed"]]
# Refused on pe's own backends; vLLM's (--backend vllm) to honour.
ENGINE_REFUSED = [
    ["-tp", "2"],
    ["--tensor-parallel-size", "4"],
    ["--pipeline-parallel-size", "2"],
    ["--data-parallel-size", "2"],
    ["--generation-config", "/models/generation"],
    ["--enable-log-requests"],
    ["--tokenizer-mode", "mistral"],
    ["--kv-cache-dtype", "fp8"],
    ["--enable-lora"],
    ["--no-enable-chunked-prefill"],
    ["--load-format", "pt"],
    ["--download-dir", "/cache"],
    ["--revision", "main"],
]
# pe's front end has no such thing on any backend.
FRONTEND_REFUSED = [
    ["--ssl-keyfile", "key.pem"],
    ["--ssl-certfile", "cert.pem"],
    ["--root-path", "/api"],
    ["--allowed-origins", '["*"]'],
    ["--response-role", "user"],
]


def build(*argv: str) -> ServerConfig:
    """The config ``pe-server serve m ARGV`` builds (the parser, then the config builder)."""
    args, unknown = build_parser().parse_known_args(["serve", "m", *argv])
    return config_from_args(args, unknown)


def refusal(*argv: str) -> str:
    with pytest.raises(ValueError) as info:
        build(*argv)
    exc = info.value
    lines = error_lines(exc) if isinstance(exc, ValidationError) else [str(exc)]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("backend", ["native", "transformers"])
@pytest.mark.parametrize("argv", [DOCS_FLAGS, *ACCEPTED], ids=" ".join)
def test_accepted_flags(argv: list[str], backend: str) -> None:
    build(*argv, "--backend", backend)


@pytest.mark.parametrize("argv", GENERATION_ONLY + ENGINE_REFUSED, ids=" ".join)
def test_engine_flags_pe_cannot_honour_are_refused_naming_flag_value_and_backend(
    argv: list[str],
) -> None:
    message = refusal(*argv)
    assert message.startswith(" ".join(argv) + ": "), message
    if argv in GENERATION_ONLY:
        assert "completions and chat" in message
    else:
        assert "native backend" in message or "the native engine" in message
        assert "--backend vllm" in message
    assert refusal(*argv, "--backend", "transformers").startswith(" ".join(argv) + ": ")


def test_refusal_message_of_the_issue() -> None:
    assert refusal("--tensor-parallel-size", "2") == (
        "--tensor-parallel-size 2: the native backend runs the model on one device; "
        "use --backend vllm"
    )
    assert "the transformers backend" in refusal("-tp", "2", "--backend", "transformers")


@pytest.mark.parametrize("argv", FRONTEND_REFUSED, ids=" ".join)
@pytest.mark.parametrize("backend", ["native", "vllm"])
def test_front_end_flags_pe_cannot_honour_are_refused_on_every_backend(
    argv: list[str], backend: str
) -> None:
    message = refusal(*argv, "--backend", backend)
    assert message.startswith(" ".join(argv) + ": ") and "pe " in message, message


def test_vllm_remote_sends_engine_flags_to_the_upstream() -> None:
    remote = ["--backend", "vllm-remote", "--upstream", "http://vllm:8000"]
    assert build(*remote, "--runner", "generate", "-tp", "1", "--trust-remote-code")
    message = refusal(*remote, "-tp", "8")
    assert message.startswith("-tp 8: ") and "upstream" in message and "vllm serve" in message
    assert refusal(*remote, "--runner", "pooling").startswith("--runner pooling: pe serves")


def test_vllm_backend_passes_engine_flags_through_as_given() -> None:
    from pe_server.backends.vllm_backend import engine_argv

    given = [
        "-tp", "2", "--generation-config", "/models/generation", "--enable-log-requests",
        "--runner", "generate", "--distributed-executor-backend", "ray",
    ]  # fmt: skip
    config = build("--backend", "vllm", *given, "--disable-fastapi-docs")
    assert config.vllm_args == tuple(given)
    assert engine_argv(config, "/models/m")[-len(given) :] == given
    for argv in GENERATION_ONLY:
        assert refusal("--backend", "vllm", *argv).startswith(" ".join(argv) + ": pe serves")


def test_quantization_is_int8_on_native_and_vllms_own_on_vllm() -> None:
    from pe_server.backends.vllm_backend import engine_argv

    assert build("--quantization", "int8").quantization == "int8"
    assert build("-q", "int8").engine_settings()["quantization"] == "int8"
    message = refusal("--quantization", "awq")
    assert message.startswith("--quantization awq: the native backend has int8")
    assert "--backend vllm" in message
    message = refusal("--backend", "transformers", "-q", "int8")
    assert message.startswith("--quantization int8: the transformers backend loads unquantized")
    remote = ["--backend", "vllm-remote", "--upstream", "http://vllm:8000"]
    assert "vllm serve" in refusal(*remote, "--quantization", "awq")
    argv = engine_argv(build("--backend", "vllm", "-q", "awq"), "/models/m")
    assert argv[argv.index("--quantization") + 1] == "awq"


def test_front_end_flags_never_reach_vllm() -> None:
    config = build(
        "--backend", "vllm", "--disable-fastapi-docs", "--response-role", "assistant",
        "--uvicorn-log-level", "debug",
    )  # fmt: skip
    assert config.vllm_args == ()
    assert config.disable_fastapi_docs and config.uvicorn_log_level == "debug"


def test_unknown_flags_stay_unrecognized_on_pe_backends() -> None:
    message = refusal("--distributed-executor-backend", "ray")
    assert message.startswith("unrecognized arguments: --distributed-executor-backend ray")


def test_engine_flags_from_pe_vllm_args() -> None:
    config = ServerConfig.from_sources({"model": "m"}, {"PE_VLLM_ARGS": "--runner generate -tp 1"})
    assert config.vllm_args == ("--runner", "generate", "-tp", "1")
    with pytest.raises(ValidationError, match="-tp 2: the native backend"):
        ServerConfig.from_sources({"model": "m"}, {"PE_VLLM_ARGS": "-tp 2"})


@pytest.mark.parametrize(("given", "dtype"), [("half", "float16"), ("float", "float32")])
def test_vllm_dtype_names(given: str, dtype: str) -> None:
    assert build("--dtype", given).dtype == dtype
    assert ServerConfig.from_sources({"model": "m"}, {"PE_DTYPE": given}).dtype == dtype


@pytest.mark.parametrize(
    "argv", [["-tp", "2"], ["--ssl-keyfile", "key.pem"], ["--quantization", "awq"]], ids=" ".join
)
def test_cli_refusal_is_one_line_and_exit_status_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "demo", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"pe-server: {' '.join(argv)}: "), err


def test_cli_process_refuses_tensor_parallel_on_native() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pe_server", "serve", "demo", "--tensor-parallel-size", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "pe-server: --tensor-parallel-size 2: the native backend runs the model on one device; "
        "use --backend vllm\n"
    )


@pytest.fixture
def http_loggers() -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in ("pe_server.access", "aiohttp", "aiohttp.access")]
    levels = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


@pytest.mark.usefixtures("http_loggers")
def test_uvicorn_log_level_sets_the_http_loggers() -> None:
    setup_logging("info", "warning")
    assert logging.getLogger("pe_server.access").level == logging.WARNING
    assert logging.getLogger("aiohttp").level == logging.WARNING
    setup_logging("info", "trace")
    assert logging.getLogger("pe_server.access").level == logging.DEBUG


def test_help_groups_the_vllm_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = capsys.readouterr().out
    section = text[text.index("vLLM compatibility:") :]
    for flag in ("--runner", "--tensor-parallel-size N, -tp N", "--generation-config"):
        assert flag in section


# Through real servers.


@pytest.fixture(scope="module")
def model_4k(tiny_models_root: Path, smollm2_tokenizer_dir: Path) -> Path:
    """The tiny Llama with 4096 positions, so the docs' --max-model-len 4096 fits."""
    from pe_engine.models.random_model import build_random_model

    return build_random_model(
        tiny_models_root / "tiny-llama-4k",
        max_position_embeddings=4096,
        tokenizer_dir=smollm2_tokenizer_dir,
    )


@pytest.fixture(scope="module")
def docs_server(model_4k: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    proc = start_server(model_4k, tmp_path_factory.mktemp("logs"), "vllm-docs", DOCS_FLAGS)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def compat_server(model_4k: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Every accepted flag at once (the ones that change nothing, and the honoured ones)."""
    flags = ["--enable-prompt-embeds", "--dtype", "float"] + [f for a in ACCEPTED for f in a]
    proc = start_server(model_4k, tmp_path_factory.mktemp("logs"), "vllm-compat", flags)
    yield proc
    proc.stop()


def tensor2base64(rows: Any) -> str:
    """vLLM's docs' encoding: base64 of ``torch.save(tensor)``."""
    import torch

    buffer = io.BytesIO()
    torch.save(torch.from_numpy(rows), buffer)
    return base64.b64encode(buffer.getvalue()).decode()


def complete_embeds(server: ServerProcess, rows: Any) -> dict[str, Any]:
    body = {"model": MODEL, "prompt_embeds": tensor2base64(rows), "max_tokens": 6}
    response = server.post("/v1/completions", json={**body, "temperature": 0.0})
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_docs_command_serves_prompt_embeds(docs_server: ServerProcess, model_4k: Path) -> None:
    rows = Embedder(model_4k)("The quick brown fox")
    out = complete_embeds(docs_server, rows)
    assert out["usage"]["prompt_tokens"] == len(rows)
    assert out["choices"][0]["text"] and out["choices"][0]["finish_reason"] in ("length", "stop")
    assert "pe_server.access" in docs_server.log_text()  # vLLM's default: uvicorn at info
    assert docs_server.get("/openapi.json").status_code == 200


def test_accepted_flags_serve_the_same_outputs(
    docs_server: ServerProcess, compat_server: ServerProcess, model_4k: Path
) -> None:
    rows = Embedder(model_4k)("Paris is the capital of France")
    ours = complete_embeds(compat_server, rows)
    assert ours["choices"][0]["text"] == complete_embeds(docs_server, rows)["choices"][0]["text"]
    chat = compat_server.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    )
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["role"] == "assistant"


def test_disable_fastapi_docs_removes_openapi_json(compat_server: ServerProcess) -> None:
    response = compat_server.get("/openapi.json")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"


def test_uvicorn_log_level_warning_drops_access_lines(compat_server: ServerProcess) -> None:
    assert compat_server.get("/v1/models").status_code == 200
    assert "pe_server.access" not in compat_server.log_text()
