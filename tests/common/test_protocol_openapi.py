"""The OpenAPI document: every route, every reference resolvable, JSON-serialisable."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from pe_common.protocol import openapi_schema


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_openapi_document() -> None:
    doc = openapi_schema(title="pe test", version="9.9")
    assert doc["openapi"].startswith("3.1")
    assert doc["info"] == {"title": "pe test", "version": "9.9"}
    assert set(doc["paths"]) == {
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/models",
        "/tokenize",
        "/detokenize",
    }
    schemas = doc["components"]["schemas"]
    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/")
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    json.dumps(doc)


def test_openapi_request_bodies_describe_the_wire_forms() -> None:
    doc = openapi_schema()
    op = doc["paths"]["/v1/completions"]["post"]
    assert set(op["requestBody"]["content"]) == {"application/json", "application/msgpack"}
    assert {"200", "400", "401", "413"} <= set(op["responses"])
    props = doc["components"]["schemas"]["CompletionRequestBody"]["properties"]
    embeds_forms = props["prompt_embeds"]["anyOf"]
    assert {f.get("type") for f in embeds_forms} == {"string", "object", "array", "null"}
    assert len(props["prompt"]["anyOf"]) == 5
    assert props["max_tokens"]["default"] == 16
    message = doc["components"]["schemas"]["ChatMessageBody"]
    part_titles = {
        p["title"] for p in message["properties"]["content"]["anyOf"][1]["items"]["anyOf"]
    }
    assert part_titles == {"TextPart", "PromptEmbedsPart"}
    assert "developer" in message["properties"]["role"]["enum"]
    assert "get" in doc["paths"]["/v1/models"]
