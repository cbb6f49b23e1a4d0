"""What the files carrying vLLM's prompt-embeds tests (test_server_vllm_suite_*.py) share."""

from __future__ import annotations

import openai
import torch
from server_harness import API_KEY, ServerProcess

from archive_payloads import b64, torch_save

# vLLM's default_server_args for these tests, without its LoRA flags.
SERVER_ARGS = [
    "--dtype", "bfloat16",
    "--max-model-len", "2048",
    "--max-num-seqs", "128",
    "--enforce-eager",
    "--enable-prompt-embeds",
]  # fmt: skip


def encode_embeds(embeds: torch.Tensor) -> str:
    """vLLM's test helper: base64 of ``torch.save(embeds)``."""
    return b64(torch_save(embeds))


def async_client(server: ServerProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0)
