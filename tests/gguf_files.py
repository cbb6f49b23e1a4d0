"""GGUF files for tests, written from a tiny Hugging Face Llama directory the way llama.cpp's
``convert_hf_to_gguf.py`` writes a Llama: tensor names, q/k rows permuted for its rotary layout,
the byte-level BPE vocabulary, merges and chat template as metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

CONTROL, NORMAL, USER_DEFINED = 3, 1, 4  # llama.cpp token types


def permute_for_llama_cpp(weights: torch.Tensor, num_heads: int) -> torch.Tensor:
    """llama.cpp's rotary layout: per head, the two rotated halves interleaved row by row."""
    shape = weights.shape
    return weights.reshape(num_heads, 2, shape[0] // num_heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)  # fmt: skip


def write_llama_gguf(model_dir: Path, out: Path, *, q8_0: bool = False) -> Path:
    """Write the HF Llama directory ``model_dir`` as a float32 GGUF file ``out`` (with
    ``q8_0``: its matrices as Q8_0 blocks, gguf-py's copy of llama.cpp's quantizer)."""
    import gguf
    from safetensors.torch import load_file

    config = json.loads((model_dir / "config.json").read_text())
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name("tiny llama")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(config["head_dim"])
    writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if q8_0 else gguf.LlamaFileType.ALL_F32)
    _add_tokenizer(writer, model_dir, config["vocab_size"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    for name, tensor in load_file(str(model_dir / "model.safetensors")).items():
        if name.endswith("q_proj.weight"):
            tensor = permute_for_llama_cpp(tensor, heads)
        elif name.endswith("k_proj.weight"):
            tensor = permute_for_llama_cpp(tensor, kv_heads)
        gguf_name = names.get_name(name, try_suffixes=(".weight",))
        assert gguf_name is not None, name
        array = tensor.float().numpy()
        if q8_0 and tensor.dim() == 2:
            kind = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(gguf_name, gguf.quants.quantize(array, kind), raw_dtype=kind)
        else:
            writer.add_tensor(gguf_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _add_tokenizer(writer: Any, model_dir: Path, vocab_size: int) -> None:
    spec = json.loads((model_dir / "tokenizer.json").read_text())
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [NORMAL] * vocab_size
    for token, index in spec["model"]["vocab"].items():
        tokens[index] = token
    for added in spec["added_tokens"]:
        tokens[added["id"]] = added["content"]
        types[added["id"]] = CONTROL if added["special"] else USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    ids = {t: i for i, t in enumerate(tokens)}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(ids[tokenizer_config["bos_token"]])
    writer.add_eos_token_id(ids[tokenizer_config["eos_token"]])
    writer.add_pad_token_id(ids[tokenizer_config["pad_token"]])
    writer.add_add_bos_token(False)
    writer.add_chat_template((model_dir / "chat_template.jinja").read_text())
