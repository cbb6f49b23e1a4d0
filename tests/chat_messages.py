"""The mixed chat the tests send in many forms: a system message, then a user message of text,
prompt embeddings and text."""

from __future__ import annotations

from typing import Any


def mixed_chat(
    data: Any,
    system: str = "You are terse.",
    before: str = "Read:",
    after: str = "Which city?",
    *,
    system_role: str = "system",
) -> list[dict[str, Any]]:
    """``data`` (a tensor, or its base64) is the user message's prompt_embeds part."""
    return [
        {"role": system_role, "content": system},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": before},
                {"type": "prompt_embeds", "data": data},
                {"type": "text", "text": after},
            ],
        },
    ]
