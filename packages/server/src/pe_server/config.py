"""ServerConfig: every server setting, validated once and frozen.

Values come from CLI flags (vLLM's names where vLLM has the flag) and ``PE_<FIELD>`` environment
variables; a flag given on the command line wins over the environment.
"""

from __future__ import annotations

import codecs
import ipaddress
import math
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from pe_engine.config import QUANTIZATIONS, EngineSettings
from pe_server.vllm_flags import REMOTE_REFUSAL, check_engine_args

MiB = 2**20
GiB = 2**30
ENV_PREFIX = "PE_"
# Request bodies other than the generation routes (tokenize, detokenize) stay small.
SMALL_BODY_BYTES = 1 * MiB
# JSON structure around the tensors of one request (messages, parameters, text prompts).
BODY_SLACK_BYTES = 4 * MiB
# Hard ceiling for one request body whatever --max-embeds-bytes says.
MAX_BODY_BYTES_CAP = 2 * GiB
# In-flight bytes reserved per body byte: the body, its parsed form, decoded tensors, copies.
BYTES_IN_FLIGHT_FACTOR = 5

Backend = Literal["native", "transformers", "vllm", "vllm-remote"]
UvicornLogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]


SIZE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}
SIZE_FIELDS = (
    "kv_cache_memory",
    "max_embeds_bytes",
    "max_bytes_in_flight",
    "embeds_store_bytes",
    "embeds_store_bytes_per_key",
)


def parse_size(value: Any) -> Any:
    """``"256MiB"``, ``"1G"``, ``"4096"`` -> bytes; other values pass through to validation."""
    if not isinstance(value, str):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]i?)?[bB]?\s*", value)
    if match is None:
        return value
    unit = (match.group(2) or "").lower()
    return int(float(match.group(1)) * SIZE_UNITS[unit])


def load_chat_template(value: str) -> str:
    """--chat-template as vLLM reads it: a file's text, or the template given inline (with
    backslash escapes such as ``\\n`` interpreted); a path-like string that names no file fails."""
    try:
        path = Path(value).expanduser()
        if path.is_file():
            return path.read_text(encoding="utf-8")
    except (OSError, ValueError):  # a template, too long or odd for a file name
        pass
    if not any(c in value for c in "{}\n"):
        raise ValueError(f"{value!r} looks like a file path, but there is no such file")
    return codecs.decode(value, "unicode_escape") if "\\" in value else value


class StructuredOutputsConfig(BaseModel):
    """vLLM's ``--structured-outputs-config``: server-wide defaults of every constraint.

    pe compiles every grammar with llguidance (vLLM's ``guidance`` backend); ``auto`` means it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: Literal["auto", "guidance"] = "auto"
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None


class ServerConfig(EngineSettings):
    """pe-server settings (frozen). Sizes are bytes, durations seconds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: tuple[SecretStr, ...] = ()
    insecure: bool = False
    served_model_name: tuple[str, ...] = ()
    backend: Backend = "native"
    # Chat templates (vLLM's flags). --chat-template: a file, or the template itself.
    chat_template: str | None = None
    chat_template_content_format: Literal["auto", "string", "openai"] = "auto"
    # Without it a request's own `chat_template` is a 400 (a template is a program).
    trust_request_chat_template: bool = False
    # Every render (any template) runs in one of these processes within this many seconds.
    chat_render_workers: int = Field(2, ge=1, le=64)
    chat_render_timeout: float = Field(2.0, gt=0, le=600)
    # Tool calling (vLLM's flags): "auto" parses the output with --tool-call-parser.
    enable_auto_tool_choice: bool = False
    tool_call_parser: Literal["hermes", "llama3_json", "mistral"] | None = None
    exclude_tools_when_tool_choice_none: bool = False
    structured_outputs_config: StructuredOutputsConfig = StructuredOutputsConfig()
    # vLLM engine flags as given (e.g. --tensor-parallel-size 2): --backend vllm passes them
    # through; pe's own backends accept those they honour (pe_server.vllm_flags).
    vllm_args: tuple[str, ...] = ()
    # --backend vllm-remote: the vLLM server (``vllm serve --enable-prompt-embeds``) to forward to.
    upstream: str | None = None
    upstream_api_key: SecretStr | None = None
    # The engine settings (tokenizer, dtype, device, sizes, enable_prompt_embeds, seed, ...)
    # come from pe_engine's EngineSettings. Request limits:
    max_concurrent_requests: int = Field(128, ge=1)
    # Concurrent requests one API key (or, without keys, one client address) may hold; None: no
    # quota. Beyond it: 429 with Retry-After.
    max_requests_per_key: int | None = Field(None, ge=1)
    max_bytes_in_flight: int = Field(4 * GiB, ge=1)
    # Stored prompt embeddings (/v1/embeds): bytes in all, per API key (None: no quota), and
    # seconds an object lives after its last use.
    embeds_store_bytes: int = Field(1 * GiB, ge=0)
    embeds_store_bytes_per_key: int | None = Field(None, ge=1)
    embeds_ttl: float = Field(3600.0, gt=0)
    max_prompts: int = Field(1024, ge=1)
    max_content_parts: int = Field(256, ge=1)
    max_n: int = Field(128, ge=1)
    # Sequences one request may run: prompts x max(n, best_of).
    max_seqs_per_request: int = Field(4096, ge=1)
    # Characters of one text prompt (a chat's messages count as one), refused before tokenizing;
    # None: 32 per token of the context length.
    max_prompt_chars: int | None = Field(None, ge=1)
    # Characters of all text prompts of one completions request (tokenizer time it may cost).
    max_total_prompt_chars: int = Field(2**24, ge=1)
    max_logprobs: int = Field(20, ge=0)
    # Timeouts.
    # Seconds a connection may take to send a request's head (slowloris).
    header_read_timeout: float = Field(10.0, gt=0)
    body_read_timeout: float = Field(10.0, gt=0)
    stream_write_timeout: float = Field(30.0, gt=0)
    drain_timeout: float = Field(30.0, ge=0)
    # Seconds a request's constraint (schema, regex, grammar) may take to compile.
    structured_outputs_timeout: float = Field(10.0, gt=0)
    keepalive_timeout: float = Field(30.0, gt=0)
    retry_after: int = Field(1, ge=1)
    decode_threads: int = Field(2, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # vLLM's --uvicorn-log-level: the level of the HTTP layer's loggers (pe's access lines).
    uvicorn_log_level: UvicornLogLevel | None = None
    # vLLM's --disable-fastapi-docs: no /openapi.json (pe serves no /docs or /redoc pages).
    disable_fastapi_docs: bool = False
    # Test-only fault injection: the engine fails at test_fault_stage (pe_engine's
    # FAULT_STAGES) of the first step after this many steps.
    test_fault_after_steps: int | None = Field(None, ge=0)
    test_fault_stage: Literal[
        "inbox", "schedule", "prepare", "forward", "sample", "detokenize", "deliver"
    ] = "forward"

    @field_validator(*SIZE_FIELDS, mode="before")
    @classmethod
    def _parse_size(cls, value: Any) -> Any:
        return parse_size(value)

    @field_validator("api_key", mode="before")
    @classmethod
    def _drop_empty_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, (list, tuple)):
            return tuple(v for v in value if not isinstance(v, str) or v.strip())
        return value

    @field_validator("served_model_name", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @field_validator("chat_template")
    @classmethod
    def _load_chat_template(cls, value: str | None) -> str | None:
        return None if value is None else load_chat_template(value)

    @field_validator("vllm_args", mode="before")
    @classmethod
    def _split_vllm_args(cls, value: Any) -> Any:
        return tuple(shlex.split(value)) if isinstance(value, str) else value

    @field_validator("upstream")
    @classmethod
    def _check_upstream(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_backend_flags(self) -> ServerConfig:
        if self.backend == "vllm-remote" and not self.upstream:
            raise ValueError("--backend vllm-remote needs --upstream URL (the vLLM server)")
        if self.upstream and self.backend != "vllm-remote":
            raise ValueError("--upstream is only used with --backend vllm-remote")
        check_engine_args(self.vllm_args, self.backend)
        self._check_quantization()
        return self

    def _check_quantization(self) -> None:
        """--quantization: int8 on the native backend, any of vLLM's methods on vllm."""
        method = self.quantization
        if method is None or self.backend == "vllm":
            return
        flag = f"--quantization {method}"
        if self.backend == "vllm-remote":
            raise ValueError(f"{flag}: {REMOTE_REFUSAL}")
        if self.backend == "transformers":
            raise ValueError(
                f"{flag}: the transformers backend loads unquantized weights only; "
                "use --backend native (int8) or --backend vllm"
            )
        if method not in QUANTIZATIONS:
            raise ValueError(
                f"{flag}: the native backend has int8 (Q8_0 int8 weights, CPU); "
                "use --backend vllm for vLLM's methods"
            )

    @field_validator("structured_outputs_config", mode="before")
    @classmethod
    def _parse_structured_config(cls, value: Any) -> Any:
        import json

        return json.loads(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_tool_flags(self) -> ServerConfig:
        if self.enable_auto_tool_choice and self.tool_call_parser is None:
            raise ValueError("--enable-auto-tool-choice requires --tool-call-parser")
        return self

    @model_validator(mode="after")
    def _check_bind(self) -> ServerConfig:
        if not self.is_loopback and not self.api_key and not self.insecure:
            raise ValueError(
                f"refusing to bind {self.host!r} (not a loopback address) without an API key: "
                "pass --api-key (or PE_API_KEY), or --insecure to serve without one"
            )
        return self

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def model_names(self) -> tuple[str, ...]:
        """Names clients may send in ``model``; the first is the one reported."""
        return self.served_model_name or (self.model,)

    @property
    def max_body_bytes(self) -> int:
        """client_max_size of the generation routes: base64 of the embeds budget plus slack."""
        return min(math.ceil(self.max_embeds_bytes * 4 / 3) + BODY_SLACK_BYTES, MAX_BODY_BYTES_CAP)

    @classmethod
    def from_sources(
        cls, cli_values: Mapping[str, Any], environ: Mapping[str, str]
    ) -> ServerConfig:
        """Build from environment variables overridden by the CLI values that were given."""
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is not None and raw != "":
                values[name] = raw
        values.update({k: v for k, v in cli_values.items() if v is not None})
        return cls(**values)
