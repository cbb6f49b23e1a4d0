"""Build a model from a Hugging Face directory: architecture check, meta-device construction,
safetensors (sharded or not) copied straight into the fused modules in the target dtype."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pe_engine.attention.backend import AttentionBackend
from pe_engine.models.llama import LlamaArgs, LlamaForCausalLM

SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
)
# checkpoint name fragment -> (fused module name, shard index)
_FUSED = {
    ".q_proj.": (".qkv_proj.", 0),
    ".k_proj.": (".qkv_proj.", 1),
    ".v_proj.": (".qkv_proj.", 2),
    ".gate_proj.": (".gate_up_proj.", 0),
    ".up_proj.": (".gate_up_proj.", 1),
}
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def model_architecture(hf_config: Any) -> str:
    """The config's architecture, or ``ValueError`` naming it and the supported list."""
    architectures = list(getattr(hf_config, "architectures", None) or [])
    for name in architectures:
        if name in SUPPORTED_ARCHITECTURES:
            return name
    found = ", ".join(architectures) or f"model_type {getattr(hf_config, 'model_type', None)!r}"
    raise ValueError(
        f"Unsupported model architecture {found}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}."
    )


def load_model(
    model_dir: str | Path,
    hf_config: Any,
    *,
    dtype: torch.dtype,
    device: torch.device,
    backend: AttentionBackend,
    max_positions: int,
) -> LlamaForCausalLM:
    """Construct the model without initialising weights, then load the checkpoint into it."""
    args = LlamaArgs.from_hf_config(hf_config, model_architecture(hf_config))
    with torch.device("meta"):
        model = LlamaForCausalLM(args, backend, max_positions)
    model = model.to(dtype).to_empty(device=device)
    load_weights(model, Path(model_dir))
    model.model.rotary_emb.reset_cache(dtype)
    return model.eval()


def checkpoint_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a directory: the index's shards, or model.safetensors."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"No *.safetensors weights in {model_dir}.")
    return files


def load_weights(model: LlamaForCausalLM, model_dir: Path) -> None:
    """Copy every checkpoint tensor into its (possibly fused) parameter, casting on the way."""
    from safetensors import safe_open

    params = dict(model.named_parameters())
    loaded: dict[str, int] = dict.fromkeys(params, 0)
    for path in checkpoint_files(model_dir):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                target = _target_slice(model, name, params)
                if target is None:
                    continue
                param_name, view = target
                tensor = f.get_tensor(name)
                if tuple(view.shape) != tuple(tensor.shape):
                    raise ValueError(
                        f"Weight {name} has shape {tuple(tensor.shape)}, "
                        f"expected {tuple(view.shape)}."
                    )
                view.copy_(tensor)
                loaded[param_name] += tensor.numel()
    missing = [n for n, p in params.items() if loaded[n] != p.numel()]
    if missing:
        raise ValueError(f"Checkpoint in {model_dir} lacks weights for: {', '.join(missing[:8])}.")


def _target_slice(
    model: LlamaForCausalLM, name: str, params: dict[str, torch.nn.Parameter]
) -> tuple[str, torch.Tensor] | None:
    """The parameter (and the rows of it) a checkpoint tensor fills; None to skip it."""
    if name.endswith(_IGNORED_SUFFIXES):
        return None
    if name == "lm_head.weight" and model.args.tie_word_embeddings:
        return None
    for fragment, (fused, shard) in _FUSED.items():
        if fragment in name:
            param_name = name.replace(fragment, fused)
            if param_name not in params:
                break
            start, size = _shard_rows(model.args, fused, shard)
            return param_name, params[param_name].data.narrow(0, start, size)
    if name not in params:
        raise ValueError(f"Unexpected weight {name!r} in the checkpoint.")
    return name, params[name].data


def _shard_rows(args: LlamaArgs, fused: str, shard: int) -> tuple[int, int]:
    if fused == ".gate_up_proj.":
        return shard * args.intermediate_size, args.intermediate_size
    q_size = args.num_heads * args.head_dim
    kv_size = args.num_kv_heads * args.head_dim
    return [(0, q_size), (q_size, kv_size), (q_size + kv_size, kv_size)][shard]
