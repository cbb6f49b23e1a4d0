"""Completions from prompt embeddings with pe-client: one prompt, a batch, and a stream.

Start a server first (`pe-server serve demo --enable-prompt-embeds`), then run this script.
Environment: PE_BASE_URL (default http://127.0.0.1:8000/v1), PE_MODEL (default: the server's
first model), PE_HIDDEN_SIZE (default: the model card's hidden_size, else 576 = SmolLM2-135M).

The embeddings here are random stand-ins: in real use they come from your own encoder,
projector or embedding table, shaped (num_tokens, hidden_size).
"""

from __future__ import annotations

import numpy as np
from _setup import model_and_hidden_size, random_embeds

from pe_client import PEClient


def main() -> None:
    with PEClient() as client:
        model, hidden = model_and_hidden_size(client)
        embeds = random_embeds(8, hidden, seed=0)

        # 1. One prompt made only of embeddings.
        reply = client.completions.create(
            model=model, prompt_embeds=embeds, max_tokens=16, temperature=0.0
        )
        print("1. one prompt:", repr(reply.choices[0].text))
        print("   usage:", reply.usage)

        # 2. A batch: two embeds prompts and one text prompt; embeds prompts come first.
        batch = client.completions.create(
            model=model,
            prompt_embeds=[embeds, embeds[:4]],
            prompt="Once upon a time",
            max_tokens=8,
            temperature=0.0,
        )
        for choice in batch.choices:
            print(f"2. choice {choice.index}:", repr(choice.text))

        # 3. Streamed, with float16 embeddings (half the bytes on the wire).
        print("3. streamed: ", end="", flush=True)
        stream = client.completions.create(
            model=model, prompt_embeds=embeds.astype(np.float16), max_tokens=16, stream=True
        )
        with stream:
            for chunk in stream:
                print(chunk.choices[0].text if chunk.choices else "", end="", flush=True)
        print()


if __name__ == "__main__":
    main()
