"""A soft prompt: learned embedding rows prepended to ordinary text, per request.

Prompt tuning learns a few rows in the model's embedding space that steer it towards a task.
They are not tokens, so they travel as prompt embeddings: here as the first part of the user
message, followed by the text. Set PE_SOFT_PROMPT to a .npy or .safetensors file of shape
(num_virtual_tokens, hidden_size) to use real learned rows; without it, random rows stand in.
Environment: PE_BASE_URL, PE_MODEL, PE_HIDDEN_SIZE (see completions_with_embeds.py).
"""

from __future__ import annotations

import os

from _setup import model_and_hidden_size, random_embeds

from pe_client import PEClient
from pe_client.messages import prompt_embeds_part, text_part, user
from pe_client.tensors import load_embeds_file


def load_soft_prompt(hidden: int) -> object:
    path = os.environ.get("PE_SOFT_PROMPT")
    if path:
        return load_embeds_file(path)
    return random_embeds(20, hidden, seed=2)  # 20 virtual tokens


def main() -> None:
    with PEClient() as client:
        model, hidden = model_and_hidden_size(client)
        soft_prompt = load_soft_prompt(hidden)
        # Encode once; the part (base64 text) is reused by every request below.
        task = prompt_embeds_part(soft_prompt)
        for sentence in ("I like cheese.", "The train leaves at noon."):
            reply = client.chat.completions.create(
                model=model,
                messages=[user(task, text_part(sentence))],
                max_tokens=24,
                temperature=0.0,
            )
            print(f"{sentence!r} -> {reply.choices[0].message.content!r}")
            print("   prompt tokens (soft rows count as tokens):", reply.usage.prompt_tokens)


if __name__ == "__main__":
    main()
