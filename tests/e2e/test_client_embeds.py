"""client.embeds against the real pe server (tiny random Llama, float32, greedy).

Upload once, reference by id: the greedy output must equal sending the tensor inline, in
completions (alone and mixed with inline tensors) and in chat, over both transports, sync and
async; retrieve / list / delete answer as the wire contract says; a deleted id is a 404 naming
where it was referenced; and an object made with ``reupload=True`` survives a server that has
never seen it (a restart or another replica): the client uploads it again and the answer is
the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from server_harness import MODEL, ServerProcess

from pe_client import AsyncPEClient, EmbedsObject, NotFoundError, PEClient
from pe_client.messages import system, user

TEXT = "The quick brown fox jumps over the lazy dog"
OTHER = "Paris is the capital of France"
GREEDY: dict[str, Any] = {"max_tokens": 8, "temperature": 0.0, "ignore_eos": True}
TRANSPORTS = ["json", "msgpack"]


def texts(reply: Any) -> list[str]:
    return [choice.text for choice in sorted(reply.choices, key=lambda c: c.index)]


def chat_text(client: PEClient, messages: list[dict[str, Any]]) -> str | None:
    reply = client.chat.completions.create(model=MODEL, messages=messages, **GREEDY)
    return reply.choices[0].message.content


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_by_id_equals_inline_in_completions(
    server: ServerProcess, embedder: Any, transport: str
) -> None:
    x, y = embedder(TEXT), embedder(OTHER)
    with PEClient(base_url=server.base_url, transport=transport) as c:  # type: ignore[arg-type]
        obj = c.embeds.create(x)
        assert isinstance(obj, EmbedsObject) and obj.id.startswith("emb_")
        assert (obj.num_tokens, obj.hidden_size) == x.shape
        assert obj.expires_at >= obj.created_at
        inline = c.completions.create(model=MODEL, prompt_embeds=[x, y], **GREEDY)
        by_id = c.completions.create(model=MODEL, prompt_embeds=obj, **GREEDY)
        mixed = c.completions.create(model=MODEL, prompt_embeds=[obj, y], **GREEDY)
    assert texts(by_id) == texts(inline)[:1]
    assert texts(mixed) == texts(inline)


def test_by_id_equals_inline_in_chat(client: PEClient, embedder: Any) -> None:
    x = embedder(TEXT)
    obj = client.embeds.create(x, format="raw")
    inline = chat_text(client, [system("You are terse."), user("Read:", x, "Summarise")])
    by_id = chat_text(client, [system("You are terse."), user("Read:", obj, "Summarise")])
    assert inline and by_id == inline


def test_retrieve_list_delete(client: PEClient, embedder: Any) -> None:
    first = client.embeds.create(embedder(TEXT))
    second = client.embeds.create(embedder(OTHER).astype(np.float16))
    got = client.embeds.retrieve(second.id)
    assert (got.id, got.num_tokens, got.bytes) == (second.id, second.num_tokens, second.bytes)
    page = client.embeds.list(limit=1)
    assert [o.id for o in page.data] == [second.id]  # newest first
    assert page.has_more and page.first_id == page.last_id == second.id
    rest = client.embeds.list(limit=100, after=page.last_id)
    assert first.id in [o.id for o in rest.data] and second.id not in [o.id for o in rest.data]
    deleted = client.embeds.delete(first.id)
    assert (deleted.id, deleted.deleted) == (first.id, True)
    for call in (client.embeds.retrieve, client.embeds.delete):
        with pytest.raises(NotFoundError) as info:
            call(first.id)
        assert (info.value.code, info.value.param) == ("embeds_not_found", "id")


def test_a_deleted_id_is_a_404_naming_where(client: PEClient, embedder: Any) -> None:
    x = embedder(TEXT)
    kept, gone = client.embeds.create(x), client.embeds.create(x)
    client.embeds.delete(gone.id)
    with pytest.raises(NotFoundError) as info:
        client.completions.create(model=MODEL, prompt_embeds=[kept, gone], **GREEDY)
    assert (info.value.code, info.value.param) == ("embeds_not_found", "prompt_embeds[1].id")
    with pytest.raises(NotFoundError) as info:
        chat_text(client, [system("Hi"), user("Read:", gone)])
    assert info.value.param == "messages[1].content[1].id"


def test_reupload_after_the_server_lost_the_id(
    server: ServerProcess, replica: ServerProcess, embedder: Any
) -> None:
    x, y = embedder(TEXT), embedder(OTHER)
    with PEClient(base_url=server.base_url) as first:
        obj = first.embeds.create(x, reupload=True)
        streamed_obj = first.embeds.create(y, reupload=True)
        history = [system("You are terse."), user("Read:", obj, "Summarise")]
        expected = chat_text(first, history)
        old_ids = (obj.id, streamed_obj.id)
        with first.with_options(base_url=replica.base_url) as second:
            assert chat_text(second, history) == expected  # history holds the old id
            assert second.embeds.retrieve(obj.id).id == obj.id
            by_index = ["", ""]
            with second.completions.create(
                model=MODEL, prompt_embeds=[x, streamed_obj], stream=True, **GREEDY
            ) as stream:
                for chunk in stream:
                    for choice in chunk.choices:
                        by_index[choice.index] += choice.text
            whole = second.completions.create(model=MODEL, prompt_embeds=[x, y], **GREEDY)
    assert obj.id != old_ids[0] and streamed_obj.id != old_ids[1]
    assert by_index == texts(whole)


async def test_async_upload_reference_delete(server: ServerProcess, embedder: Any) -> None:
    x = embedder(OTHER)
    async with AsyncPEClient(base_url=server.base_url, transport="msgpack") as c:
        obj = await c.embeds.create(x)
        inline = await c.completions.create(model=MODEL, prompt_embeds=x, **GREEDY)
        by_id = await c.completions.create(model=MODEL, prompt_embeds=obj, **GREEDY)
        assert (await c.embeds.retrieve(obj.id)).id == obj.id
        assert (await c.embeds.delete(obj.id)).deleted
        with pytest.raises(NotFoundError):
            await c.completions.create(model=MODEL, prompt_embeds=obj, **GREEDY)
    assert texts(by_id) == texts(inline)
