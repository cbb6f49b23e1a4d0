"""A chat whose messages mix text and prompt embeddings, sent with pe-client.

`user("Read this document:", doc_embeds, "Which city is it about?")` builds one message with a
text part, a prompt_embeds part and another text part; the server applies the chat template
around them. The same message dicts also work with the official `openai` client (shown last).
Environment: PE_BASE_URL, PE_MODEL, PE_HIDDEN_SIZE (see completions_with_embeds.py).
"""

from __future__ import annotations

from _setup import model_and_hidden_size, random_embeds

from pe_client import PEClient
from pe_client.messages import system, user


def main() -> None:
    with PEClient() as client:
        model, hidden = model_and_hidden_size(client)
        doc_embeds = random_embeds(12, hidden, seed=1)
        messages = [
            system("You answer in one short sentence."),
            user("Read this document:", doc_embeds, "Which city is it about?"),
        ]

        reply = client.chat.completions.create(
            model=model, messages=messages, max_tokens=32, temperature=0.0
        )
        print("answer:", repr(reply.choices[0].message.content))

        print("streamed: ", end="", flush=True)
        with client.chat.completions.create(
            model=model, messages=messages, max_tokens=32, temperature=0.0, stream=True
        ) as stream:
            for chunk in stream:
                if chunk.choices:
                    print(chunk.choices[0].delta.content or "", end="", flush=True)
        print()

        # Tensors may also sit directly in parts: the client encodes them for its transport.
        binary = client.with_options(transport="msgpack")
        direct = binary.chat.completions.create(
            model=model,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Read this document:"},
                        {"type": "prompt_embeds", "data": doc_embeds},
                        {"type": "text", "text": "Which city is it about?"},
                    ],
                }
            ],
            max_tokens=32,
            temperature=0.0,
        )
        print("msgpack transport:", repr(direct.choices[0].message.content))

    try:
        from openai import OpenAI
    except ImportError:
        return
    openai_client = OpenAI(base_url=str(client.base_url), api_key=client.api_key or "-")
    same = openai_client.chat.completions.create(
        model=model,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=32,
        temperature=0.0,
    )
    print("openai client:", repr(same.choices[0].message.content))


if __name__ == "__main__":
    main()
