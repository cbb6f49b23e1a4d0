"""ServerConfig and the CLI flags: env vs flags, sizes, the bind policy, the vllm backend."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from pe_server.cli import build_parser, config_from_args
from pe_server.config import MAX_BODY_BYTES_CAP, MiB, ServerConfig


def from_argv(argv: list[str], env: dict[str, str] | None = None) -> ServerConfig:
    args = build_parser().parse_args(["serve", *argv])
    values = {k: v for k, v in vars(args).items() if k != "command"}
    return ServerConfig.from_sources(values, env or {})


def test_defaults_bind_loopback() -> None:
    config = from_argv(["some/model"])
    assert config.host == "127.0.0.1" and config.port == 8000
    assert config.is_loopback and not config.enable_prompt_embeds
    assert config.model_names == ("some/model",)


def test_flags_beat_environment() -> None:
    env = {"PE_MAX_MODEL_LEN": "512", "PE_PORT": "9000", "PE_ENABLE_PROMPT_EMBEDS": "1"}
    config = from_argv(["m", "--port", "8123"], env)
    assert config.port == 8123
    assert config.max_model_len == 512
    assert config.enable_prompt_embeds is True


def test_sizes_accept_units() -> None:
    config = from_argv(["m", "--max-embeds-bytes", "2MiB", "--kv-cache-memory", "1G"])
    assert config.max_embeds_bytes == 2 * MiB
    assert config.kv_cache_memory == 10**9
    assert config.max_body_bytes == (2 * MiB * 4 + 2) // 3 + 4 * MiB


def test_body_limit_is_capped() -> None:
    assert from_argv(["m", "--max-embeds-bytes", "100GiB"]).max_body_bytes == MAX_BODY_BYTES_CAP


def test_served_names_and_keys_from_env() -> None:
    config = from_argv(["m"], {"PE_SERVED_MODEL_NAME": "a,b", "PE_API_KEY": "k1,k2"})
    assert config.model_names == ("a", "b")
    assert [k.get_secret_value() for k in config.api_key] == ["k1", "k2"]
    assert "k1" not in repr(config)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.com"])
def test_public_bind_needs_a_key(host: str) -> None:
    with pytest.raises(ValidationError, match="refusing to bind"):
        from_argv(["m", "--host", host])
    assert from_argv(["m", "--host", host, "--api-key", "k"]).api_key
    assert from_argv(["m", "--host", host, "--insecure"]).insecure


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_binds_are_fine(host: str) -> None:
    assert from_argv(["m", "--host", host]).is_loopback


def test_invalid_values_are_refused() -> None:
    with pytest.raises(ValidationError):
        from_argv(["m", "--max-concurrent-requests", "0"])
    with pytest.raises(ValidationError):
        from_argv(["m"], {"PE_BACKEND": "tgi"})


def test_config_is_frozen() -> None:
    config = from_argv(["m"])
    with pytest.raises(ValidationError):
        config.port = 1  # type: ignore[misc]


def test_config_from_args_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PE_MAX_N", "7")
    args = build_parser().parse_args(["serve", "m"])
    assert config_from_args(args).max_n == 7


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pe_server", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_refuses_public_bind_without_key() -> None:
    result = run_cli("serve", "demo", "--host", "0.0.0.0")
    assert result.returncode == 2
    assert "refusing to bind" in result.stderr and "--insecure" in result.stderr


def test_cli_vllm_backend_says_how_rather_than_crashing() -> None:
    result = run_cli("serve", "demo", "--backend", "vllm")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "vllm" in result.stderr and "pip install" in result.stderr


def test_cli_help_lists_vllm_flag_names() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    for flag in (
        "--enable-prompt-embeds", "--api-key", "--served-model-name", "--max-model-len",
        "--max-num-seqs", "--kv-cache-memory", "--backend", "--max-embeds-bytes",
        "--max-concurrent-requests", "--dtype",
    ):  # fmt: skip
        assert flag in result.stdout


def cfg(*argv: str) -> ServerConfig:
    return from_argv(list(argv))


def test_cuda_flags_reach_the_engine_config() -> None:
    from pe_server.backends.native import NativeBackend

    config = cfg("m", "--gpu-memory-utilization", "0.5", "--enforce-eager")
    engine = NativeBackend(config).engine_config()
    assert (engine.gpu_memory_utilization, engine.enforce_eager) == (0.5, True)
    default = NativeBackend(cfg("m")).engine_config()
    assert (default.gpu_memory_utilization, default.enforce_eager) == (0.9, False)


def test_chat_template_flag_reads_a_file_or_takes_the_template(tmp_path: Path) -> None:
    path = tmp_path / "t.jinja"
    path.write_text("{{ messages[0].content }}")
    assert cfg("m", "--chat-template", str(path)).chat_template == "{{ messages[0].content }}"
    inline = cfg("m", "--chat-template", "{% for m in messages %}{{ m.content }}\\n{% endfor %}")
    assert inline.chat_template == "{% for m in messages %}{{ m.content }}\n{% endfor %}"
    with pytest.raises(ValidationError, match="looks like a file path"):
        cfg("m", "--chat-template", str(tmp_path / "missing.jinja"))
    assert cfg("m").trust_request_chat_template is False
    assert cfg("m", "--trust-request-chat-template").trust_request_chat_template is True


def test_fault_stage_choices_are_the_engines_stages() -> None:
    from typing import get_args

    from pe_engine.core.llm_engine import FAULT_STAGES

    annotation = ServerConfig.model_fields["test_fault_stage"].annotation
    assert get_args(annotation) == FAULT_STAGES
