"""--backend vllm: which flags reach vLLM's parser, without vLLM installed."""

from __future__ import annotations

from pe_server.backends.vllm_backend import engine_argv
from pe_server.config import ServerConfig


def config(**values: object) -> ServerConfig:
    return ServerConfig.from_sources({"model": "m", "backend": "vllm", **values}, {})


def test_only_flags_the_user_set_are_forwarded() -> None:
    argv = engine_argv(config(), "/models/m")
    assert argv == ["--model", "/models/m", "--dtype", "auto"]


def test_shared_flags_then_pass_through_flags_which_win() -> None:
    argv = engine_argv(
        config(
            dtype="float32",
            max_model_len=256,
            enable_prompt_embeds=True,
            enable_prefix_caching=False,
            kv_cache_memory="64MiB",
            vllm_args=("--tensor-parallel-size", "2", "--max-model-len", "128"),
        ),
        "/models/m",
    )
    assert argv[:4] == ["--model", "/models/m", "--dtype", "float32"]
    assert argv.index("--max-model-len") < argv.index("--tensor-parallel-size")
    assert argv[-4:] == ["--tensor-parallel-size", "2", "--max-model-len", "128"]
    for flag in ("--enable-prompt-embeds", "--no-enable-prefix-caching"):
        assert flag in argv
    assert argv[argv.index("--kv-cache-memory-bytes") + 1] == str(64 * 2**20)


def test_pass_through_flags_from_the_environment() -> None:
    cfg = ServerConfig.from_sources(
        {"model": "m"},
        {
            "PE_BACKEND": "vllm",
            "PE_VLLM_ARGS": "--pipeline-parallel-size 2 --distributed-executor-backend ray",
        },
    )
    assert cfg.vllm_args == (
        "--pipeline-parallel-size", "2", "--distributed-executor-backend", "ray",
    )  # fmt: skip
