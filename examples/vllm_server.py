"""pe-client against a vLLM server (or pe): torch.save payloads, the one format vLLM reads.

vLLM (started with `vllm serve MODEL --enable-prompt-embeds`) decodes prompt embeddings with
torch.load, so the client must send embeds_format="torch"; pe reads that format too, so this
script runs unchanged against either. Needs PyTorch on the client (pip install
'pe-client[torch]'). Environment: VLLM_BASE_URL (else PE_BASE_URL, else
http://127.0.0.1:8000/v1), PE_MODEL (default: the server's first model), PE_HIDDEN_SIZE
(default: the model card's hidden_size, else 576).
"""

from __future__ import annotations

import os

import torch
from _setup import model_and_hidden_size

from pe_client import PEClient
from pe_client.messages import user


def main() -> None:
    base_url = os.environ.get("VLLM_BASE_URL") or os.environ.get("PE_BASE_URL")
    with PEClient(base_url=base_url, embeds_format="torch") as client:
        model, hidden = model_and_hidden_size(client)
        generator = torch.Generator().manual_seed(4)
        embeds = torch.randn(10, hidden, generator=generator) * 0.05

        reply = client.completions.create(
            model=model, prompt_embeds=embeds, max_tokens=16, temperature=0.0
        )
        print("completion:", repr(reply.choices[0].text))

        # Chat content parts ({"type": "prompt_embeds"}) need a vLLM recent enough to have them.
        chat = client.chat.completions.create(
            model=model,
            messages=[user("Describe this:", embeds, "in a few words.", format="torch")],
            max_tokens=16,
            temperature=0.0,
        )
        print("chat:", repr(chat.choices[0].message.content))


if __name__ == "__main__":
    main()
