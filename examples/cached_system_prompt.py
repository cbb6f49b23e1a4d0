"""Reuse a long system prompt's embeddings across many requests.

The system prompt's embeddings (say, a document or persona projected by your encoder) are
encoded once into a message dict; every question reuses that dict, so nothing is re-encoded on
the client, and the server's prefix cache recognises the identical rows and skips their prefill
(watch the later requests get faster, and `cached_tokens` in usage where the server reports it).
Environment: PE_BASE_URL, PE_MODEL, PE_HIDDEN_SIZE (see completions_with_embeds.py).
"""

from __future__ import annotations

import time

from _setup import model_and_hidden_size, random_embeds

from pe_client import PEClient
from pe_client.messages import system, user


def main() -> None:
    with PEClient() as client:
        model, hidden = model_and_hidden_size(client)
        context = random_embeds(256, hidden, seed=3)
        cached = system("Use this context:", context)  # encoded once, reused below

        for question in ("What is it about?", "Who is it for?", "Summarise it."):
            start = time.perf_counter()
            reply = client.chat.completions.create(
                model=model, messages=[cached, user(question)], max_tokens=8, temperature=0.0
            )
            elapsed = time.perf_counter() - start
            usage = reply.usage
            details = getattr(usage, "prompt_tokens_details", None)
            cached_tokens = getattr(details, "cached_tokens", None)
            print(
                f"{question!r}: {elapsed * 1000:.0f} ms, prompt_tokens={usage.prompt_tokens}, "
                f"cached_tokens={cached_tokens} -> {reply.choices[0].message.content!r}"
            )


if __name__ == "__main__":
    main()
