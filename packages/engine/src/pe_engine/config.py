"""EngineConfig: the one frozen configuration of the engine, validated when built."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    import torch

DType = Literal["auto", "float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda"]

_DTYPE_ALIASES = {
    "float32": "float32",
    "float": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "half": "float16",
    "fp16": "float16",
}
DEFAULT_CPU_KV_CACHE_MEMORY = 1 << 30
QUANTIZATIONS = (None, "int8")


class EngineSettings(BaseModel):
    """The engine settings a server exposes too (pe-server's ServerConfig extends this class,
    so each setting, its default and its bounds are written once). ``dtype`` takes vLLM's
    spellings ("half", "float", ...)."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    tokenizer: str | None = None
    dtype: DType = "auto"
    device: Device = "auto"
    max_model_len: int | None = Field(None, ge=1)
    max_num_seqs: int = Field(64, ge=1)
    max_num_batched_tokens: int = Field(2048, ge=1)
    block_size: int = Field(16, ge=1)
    num_kv_blocks: int | None = Field(None, ge=1)
    kv_cache_memory: int | None = Field(None, ge=1)  # bytes; default 1 GiB on CPU
    # CUDA, without kv_cache_memory: the share of the device the engine may fill (weights,
    # peak activations of a warm-up step, then the KV pool).
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    enable_prompt_embeds: bool = False
    enable_prefix_caching: bool = True
    max_embeds_bytes: int = Field(256 * 2**20, ge=1)
    seed: int = 0
    enforce_eager: bool = False  # CUDA: no decode CUDA graphs
    # "int8": every linear's weights (and the output head) as llama.cpp's Q8_0, int8 with a
    # float16 scale per 32 inputs (CPU, native engine); None: the weights in ``dtype``. vLLM's flag name (--quantization).
    quantization: str | None = None

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype_alias(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "auto":
            return _DTYPE_ALIASES.get(value.removeprefix("torch."), value)
        return value

    def engine_settings(self) -> dict[str, Any]:
        """These settings as keyword arguments (for EngineConfig)."""
        return {name: getattr(self, name) for name in EngineSettings.model_fields}


class EngineConfig(EngineSettings):
    """Engine settings. ``dtype="auto"`` is the model's config.json dtype (float32 if absent);
    ``device="auto"`` is CUDA when available, else CPU."""

    model: str
    # "auto": Triton kernels on CUDA; on CPU "cpu" (the C paged-decode kernel, float32, built
    # at first use with the system compiler) when it builds, else "torch" (the reference).
    # "triton" on CPU needs TRITON_INTERPRET=1: the kernel tests use it.
    attention_backend: Literal["auto", "torch", "cpu", "triton"] = "auto"
    # CPU float32 linears: "onednn" (weights reordered once; 2-3x faster than the BLAS on
    # this project's AMD CPU), "torch" (F.linear), "auto" (oneDNN when this torch has it).
    cpu_linear: Literal["auto", "torch", "onednn"] = "auto"
    # CPU kernel threads; None: OMP_NUM_THREADS when set, else every usable core.
    num_threads: int | None = Field(None, ge=1)

    @field_validator("quantization")
    @classmethod
    def _native_quantization(cls, value: str | None) -> str | None:
        if value not in QUANTIZATIONS:
            raise ValueError(
                f"quantization {value!r} is not supported by pe's engine; it has: "
                f"{', '.join(str(q) for q in QUANTIZATIONS[1:])}"
            )
        return value

    @cached_property
    def model_dir(self) -> Path:
        return Path(self.model)

    @cached_property
    def config_json(self) -> dict[str, Any]:
        """The raw config.json of the model directory ({} when there is none)."""
        path = self.model_dir / "config.json"
        if not path.is_file():
            return {}
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    @cached_property
    def dtype_name(self) -> str:
        """The resolved dtype name: float32, bfloat16 or float16."""
        if self.dtype != "auto":
            return self.dtype
        raw = self.config_json.get("dtype") or self.config_json.get("torch_dtype")
        return _DTYPE_ALIASES.get(str(raw).removeprefix("torch."), "float32")

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype_name)

    @cached_property
    def device_name(self) -> str:
        """The resolved device: "cuda" or "cpu"."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    @cached_property
    def hf_config(self) -> Any:
        """The model's transformers config (loaded once, offline)."""
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.model)
