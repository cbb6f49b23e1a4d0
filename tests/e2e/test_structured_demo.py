"""Structured outputs on the real SmolLM2-135M-Instruct through the real server (issue 20): the
demo's JSON-schema question about a document sent as prompt embeddings, the same document as
text, and a named tool call, asked with the official ``openai`` client.

The tiny-model tests (tests/server) prove the constraint holds on random weights; these prove a
real model's answer under it ends by itself (finish_reason "stop", not the token limit) with
the server's default whitespace rules, and parses into the schema it was asked for.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import openai
import pytest
from pydantic import BaseModel, Field

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from server_harness import MODEL, ServerProcess

from pe_client.openai_compat import chat_part

pytestmark = pytest.mark.slow

DOCUMENT = (
    "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was built for the 1889 "
    "World's Fair and was the tallest man-made structure in the world for 41 years."
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


class DocumentSummary(BaseModel):
    topic: str = Field(max_length=40)
    sentiment: Literal["positive", "negative", "neutral"]
    keywords: list[Annotated[str, Field(max_length=20)]] = Field(max_length=3)


@pytest.fixture(scope="module")
def server(
    demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The demo model served as the demo serves it: float32, prompt embeds on, no key."""
    log_path = tmp_path_factory.mktemp("structured_demo") / "server.log"
    flags = ["--enable-prompt-embeds", "--max-model-len", "1024"]
    proc = ServerProcess(demo_model_dir, log_path, flags, api_key=None)
    try:
        yield proc.wait_ready(timeout=300.0)
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def document_embeds(demo_model_dir: Path) -> np.ndarray:
    """The document's rows of the model's own embedding table (client-side, as the demo does)."""
    from safetensors import safe_open
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    with safe_open(str(demo_model_dir / "model.safetensors"), framework="pt") as f:
        table = f.get_tensor("model.embed_tokens.weight").float().numpy()
    return np.ascontiguousarray(table[tokenizer.encode(DOCUMENT, add_special_tokens=False)])


def ask_summary(client: openai.OpenAI, document: Any) -> Any:
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Summarise this document as JSON:"}, document],
        }
    ]
    parse = getattr(client.chat.completions, "parse", None)  # under beta in older openai releases
    parse = parse if parse is not None else client.beta.chat.completions.parse
    return parse(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]  # an embeds part is pe's addition
        response_format=DocumentSummary,
        max_tokens=96,
        temperature=0.0,
    )


@pytest.mark.parametrize("as_embeds", [True, False], ids=["embeds", "text"])
def test_a_json_schema_answer_about_the_document_validates(
    client: openai.OpenAI, document_embeds: np.ndarray, as_embeds: bool
) -> None:
    document = chat_part(document_embeds) if as_embeds else {"type": "text", "text": DOCUMENT}
    choice = ask_summary(client, document).choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    summary = choice.message.parsed
    assert isinstance(summary, DocumentSummary), choice.message.content
    assert summary == DocumentSummary.model_validate_json(choice.message.content or "")


def test_a_named_tool_call_about_the_document_follows_its_schema(
    client: openai.OpenAI, document_embeds: np.ndarray
) -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Which city is this document about?"},
                chat_part(document_embeds),
                {"type": "text", "text": "Get the weather there."},
            ],
        }
    ]
    completion = client.chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=48,
        temperature=0.0,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"  # OpenAI's and vLLM's answer for a named tool
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str)
