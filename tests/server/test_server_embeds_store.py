"""``/v1/embeds`` on the real server (issue 21), over raw HTTP: what the client e2e tests
(tests/e2e/test_client_embeds.py) leave out.

Three module servers: ``main`` (two API keys, a per-key quota, a large decode budget),
``tight`` (a 32-row store, for eviction while a stream holds an object) and ``brief`` (a 1 s
TTL). The tiny Llama's rows are 64 float32 values: 256 bytes a row.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import pytest
import torch
from server_harness import MODEL, ServerProcess, assert_error, wait_until
from test_server_catalogue import Reduce, pickle_zip, safetensors_file

from archive_payloads import b64, torch_save
from conftest import Embedder, module_server, start_server
from pe_common.codec import encode_prompt_embeds

ROW = 256  # bytes of one float32 row of the tiny Llama (hidden size 64)
OTHER_KEY = "other-key-9876543210"
LIST_KEY = "list-key-5555555555"
TEXT = "The quick brown fox jumps over the lazy dog"
OTHER = "Paris is the capital of France"
GREEDY: dict[str, Any] = {"temperature": 0.0, "max_tokens": 8, "ignore_eos": True}
OBJECT_FIELDS = {
    "id", "object", "num_tokens", "hidden_size", "dtype", "bytes", "created_at", "expires_at",
}  # fmt: skip

main = module_server(
    "embeds_main",
    [
        "--enable-prompt-embeds",
        "--api-key", OTHER_KEY,
        "--api-key", LIST_KEY,
        "--max-embeds-bytes", "48MiB",
        "--embeds-store-bytes-per-key", str(64 * ROW),
    ],
)  # fmt: skip
tight = module_server(
    "embeds_tight", ["--enable-prompt-embeds", "--embeds-store-bytes", str(32 * ROW)]
)
brief = module_server("embeds_brief", ["--enable-prompt-embeds", "--embeds-ttl", "1"])
disabled = module_server("embeds_disabled", [])


# helpers -----------------------------------------------------------------------------------


def upload(server: ServerProcess, body: Any, *, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return server.post("/v1/embeds", json=body, headers=headers)


def put(server: ServerProcess, rows: np.ndarray, fmt: str = "safetensors", **kw: Any) -> str:
    r = upload(server, wrap(encode_prompt_embeds(rows, fmt)), **kw)  # type: ignore[arg-type]
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def wrap(payload: Any) -> dict[str, Any]:
    return payload if isinstance(payload, dict) else {"data": payload}


def get(server: ServerProcess, path: str, key: str | None = None) -> httpx.Response:
    if key is None:
        return server.get(path)
    return httpx.get(f"{server.root}{path}", headers={"Authorization": f"Bearer {key}"})


def delete(server: ServerProcess, embeds_id: str) -> httpx.Response:
    return httpx.delete(f"{server.root}/v1/embeds/{embeds_id}", headers=server.headers)


def complete(server: ServerProcess, prompt_embeds: Any, **extra: Any) -> httpx.Response:
    body = {"model": MODEL, "prompt_embeds": prompt_embeds, **GREEDY, **extra}
    return server.post("/v1/completions", json=body)


def chat(server: ServerProcess, messages: list[dict[str, Any]]) -> httpx.Response:
    return server.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": messages, **GREEDY}
    )


def texts(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    return [c["text"] for c in sorted(r.json()["choices"], key=lambda c: c["index"])]


def user_with(part: dict[str, Any]) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [{"type": "text", "text": "Read:"}, {"type": "prompt_embeds", **part}],
    }


def sf(rows: np.ndarray) -> str:
    return str(encode_prompt_embeds(rows, "safetensors"))


@pytest.fixture(scope="module")
def x(embedder: Embedder) -> np.ndarray:
    return embedder(TEXT)


@pytest.fixture(scope="module")
def y(embedder: Embedder) -> np.ndarray:
    return embedder(OTHER)


# upload formats and the object -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["safetensors", "torch", "raw", "msgpack"])
def test_upload_answers_201_with_the_object(main: ServerProcess, x: np.ndarray, fmt: str) -> None:
    if fmt == "msgpack":
        body = msgspec.msgpack.encode({"data": encode_prompt_embeds(x, binary=True)})
        r = main.post("/v1/embeds", content=body, headers={"Content-Type": "application/msgpack"})
        obj = msgspec.msgpack.decode(r.content)
    else:
        r = upload(main, wrap(encode_prompt_embeds(x, fmt)))  # type: ignore[arg-type]
        obj = r.json()
    assert r.status_code == 201, r.text
    assert set(obj) == OBJECT_FIELDS
    assert obj["object"] == "prompt_embeds" and obj["id"].startswith("emb_")
    assert (obj["num_tokens"], obj["hidden_size"]) == x.shape
    assert (obj["dtype"], obj["bytes"]) == ("float32", x.nbytes)
    assert abs(obj["created_at"] - time.time()) < 60
    assert obj["expires_at"] >= obj["created_at"] + 3600  # the default TTL
    got = get(main, f"/v1/embeds/{obj['id']}").json()
    assert got["expires_at"] >= obj["expires_at"]  # a GET is a use: the TTL slides
    assert {**got, "expires_at": obj["expires_at"]} == obj


def test_float16_upload_is_stored_in_the_model_dtype(main: ServerProcess, x: np.ndarray) -> None:
    r = upload(main, wrap(sf(x.astype(np.float16))))
    assert r.status_code == 201, r.text
    assert (r.json()["dtype"], r.json()["bytes"]) == ("float32", x.nbytes)


# by id == inline -----------------------------------------------------------------------------------


def test_completions_by_id_and_mixed_equal_inline(
    main: ServerProcess, x: np.ndarray, y: np.ndarray
) -> None:
    x_id, y_id = put(main, x), put(main, y, "raw")
    inline = texts(complete(main, [sf(x), sf(y), sf(x)]))
    assert texts(complete(main, {"id": x_id})) == inline[:1]
    # Order kept whatever mixes: inline, by id, inline; and ids around an inline item.
    assert texts(complete(main, [sf(x), {"id": y_id}, sf(x)])) == inline
    assert texts(complete(main, [{"id": x_id}, sf(y), {"id": x_id}])) == inline


def test_chat_by_id_equals_inline(main: ServerProcess, x: np.ndarray, y: np.ndarray) -> None:
    x_id, y_id = put(main, x), put(main, y)

    def history(first: dict[str, Any], second: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {"role": "system", "content": "You are terse."},
            user_with(first),
            {"role": "assistant", "content": "Done."},
            user_with(second),
        ]

    inline = chat(main, history({"data": sf(x)}, {"data": sf(y)}))
    by_id = chat(main, history({"id": x_id}, {"id": y_id}))
    mixed = chat(main, history({"id": x_id}, {"data": sf(y)}))
    assert inline.status_code == 200, inline.text
    want = inline.json()["choices"][0]["message"]["content"]
    assert want
    for r in (by_id, mixed):
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == want
        assert r.json()["usage"]["prompt_tokens"] == inline.json()["usage"]["prompt_tokens"]


# GET, list, DELETE and 404 paths ----------------------------------------------------------------


def test_list_pages_follow_after_and_has_more(main: ServerProcess) -> None:
    # A key of its own: its list holds only this test's objects.
    rows = np.ones((2, 64), np.float32)
    newest_first = [put(main, rows, key=LIST_KEY) for _ in range(5)][::-1]
    seen: list[str] = []
    after = None
    for _ in range(3):
        query = f"?limit=2{'&after=' + after if after else ''}"
        page = get(main, f"/v1/embeds{query}", LIST_KEY).json()
        assert page["object"] == "list"
        assert page["first_id"] == page["data"][0]["id"]
        assert page["last_id"] == page["data"][-1]["id"]
        assert page["has_more"] == (len(seen) + len(page["data"]) < 5)
        seen += [o["id"] for o in page["data"]]
        after = page["last_id"]
    assert seen == newest_first
    for bad in ("0", "101", "x"):
        error = assert_error(
            get(main, f"/v1/embeds?limit={bad}", LIST_KEY), 400, "invalid_parameter"
        )
        assert error["param"] == "limit"
    empty = get(main, "/v1/embeds?after=emb_unknown", LIST_KEY).json()
    assert empty["data"] == [] and empty["first_id"] is None and not empty["has_more"]


def test_get_and_delete(main: ServerProcess, x: np.ndarray) -> None:
    embeds_id = put(main, x)
    assert get(main, f"/v1/embeds/{embeds_id}").json()["id"] == embeds_id
    r = delete(main, embeds_id)
    assert r.status_code == 200, r.text
    assert r.json() == {"id": embeds_id, "object": "prompt_embeds", "deleted": True}
    for r in (get(main, f"/v1/embeds/{embeds_id}"), delete(main, embeds_id)):
        assert assert_error(r, 404, "embeds_not_found")["param"] == "id"
    assert embeds_id not in [o["id"] for o in get(main, "/v1/embeds?limit=100").json()["data"]]


def test_a_deleted_id_is_a_404_naming_its_place(
    main: ServerProcess, x: np.ndarray, y: np.ndarray
) -> None:
    kept, gone = put(main, x), put(main, y)
    assert delete(main, gone).status_code == 200
    error = assert_error(complete(main, [{"id": kept}, {"id": gone}]), 404, "embeds_not_found")
    assert error["param"] == "prompt_embeds[1].id" and gone in error["message"]
    messages = [
        {"role": "system", "content": "Hi"},
        user_with({"id": kept}),
        user_with({"id": gone}),
    ]
    error = assert_error(chat(main, messages), 404, "embeds_not_found")
    assert error["param"] == "messages[2].content[1].id"
    reasoning = [
        {"role": "user", "content": "Think."},
        {"role": "assistant", "content": "Ok.", "reasoning": {"type": "prompt_embeds", "id": gone}},
        {"role": "user", "content": "Go on."},
    ]
    error = assert_error(chat(main, reasoning), 404, "embeds_not_found")
    assert error["param"] == "messages[1].reasoning.id"
    # Nothing the failed requests resolved stays pinned: the kept one can still be deleted.
    assert delete(main, kept).status_code == 200


# tenants and quotas -----------------------------------------------------------------------------


def test_tenants_see_only_their_own(main: ServerProcess, x: np.ndarray) -> None:
    mine = put(main, x)
    theirs = put(main, x, key=OTHER_KEY)
    unknown = "emb_" + "a" * 26
    as_b = get(main, f"/v1/embeds/{mine}", OTHER_KEY)
    missing = get(main, f"/v1/embeds/{unknown}", OTHER_KEY)
    assert_error(as_b, 404, "embeds_not_found")
    assert (
        as_b.json()["error"]["message"].replace(mine, unknown) == missing.json()["error"]["message"]
    )
    listed = get(main, "/v1/embeds?limit=100", OTHER_KEY).json()["data"]
    assert theirs in [o["id"] for o in listed] and mine not in [o["id"] for o in listed]
    body = {"model": MODEL, "prompt_embeds": [{"id": mine}], **GREEDY}
    r = httpx.post(
        f"{main.base_url}/completions", json=body, headers={"Authorization": f"Bearer {OTHER_KEY}"}
    )
    assert assert_error(r, 404, "embeds_not_found")["param"] == "prompt_embeds[0].id"
    r = httpx.delete(
        f"{main.root}/v1/embeds/{mine}", headers={"Authorization": f"Bearer {OTHER_KEY}"}
    )
    assert_error(r, 404, "embeds_not_found")
    assert get(main, f"/v1/embeds/{mine}").status_code == 200  # untouched by B's delete


def test_per_key_quota(main: ServerProcess, embedder: Embedder) -> None:
    over = np.ones((65, 64), np.float32)  # one row over the 64-row quota
    error = assert_error(upload(main, {"data": sf(over)}), 413, "too_large")
    assert error["param"] == "data"
    # At the quota, a key's own least recently used objects make room; the other key keeps its.
    theirs = put(main, np.ones((8, 64), np.float32), key=OTHER_KEY)
    first = put(main, np.ones((40, 64), np.float32))
    second = put(main, np.ones((40, 64), np.float32))
    assert get(main, f"/v1/embeds/{first}").status_code == 404
    assert get(main, f"/v1/embeds/{second}").status_code == 200
    assert get(main, f"/v1/embeds/{theirs}", OTHER_KEY).status_code == 200


# TTL and restart ----------------------------------------------------------------------------------


def test_expiry_slides_with_use(brief: ServerProcess, x: np.ndarray) -> None:
    embeds_id = put(brief, x)
    obj = get(brief, f"/v1/embeds/{embeds_id}").json()
    assert obj["expires_at"] - obj["created_at"] < 10  # not the default hour
    for _ in range(3):  # 1.8 s in all, never 1 s without a use
        time.sleep(0.6)
        assert complete(brief, {"id": embeds_id}, max_tokens=1).status_code == 200
    time.sleep(1.2)
    assert_error(get(brief, f"/v1/embeds/{embeds_id}"), 404, "embeds_not_found")
    error = assert_error(complete(brief, [{"id": embeds_id}]), 404, "embeds_not_found")
    assert error["param"] == "prompt_embeds[0].id"


# eviction under pressure while a stream holds an object -----------------------------------------


def test_an_object_in_use_is_never_evicted(tight: ServerProcess, embedder: Embedder) -> None:
    held_rows = embedder.rows(list(range(100, 116)))  # 16 of the store's 32 rows
    want = texts(complete(tight, sf(held_rows), max_tokens=200))
    spare = put(tight, np.ones((8, 64), np.float32))
    held = put(tight, held_rows)
    body = {"model": MODEL, "prompt_embeds": {"id": held}, **GREEDY, "max_tokens": 200}
    body["stream"] = True
    text = ""
    with httpx.stream(
        "POST", f"{tight.base_url}/completions", json=body, headers=tight.headers, timeout=60
    ) as stream:
        lines = stream.iter_lines()
        first = next(lines)
        assert first.startswith("data: ")
        text += msgspec.json.decode(first[6:])["choices"][0]["text"]
        # 16 held + 20 new > 32 even with every unpinned object gone: 429, and nothing evicted.
        r = upload(tight, {"data": sf(np.ones((20, 64), np.float32))})
        assert_error(r, 429, "embeds_store_full")
        assert "Retry-After" in r.headers
        assert get(tight, f"/v1/embeds/{spare}").status_code == 200
        # 16 held + 8 spare + 16 new: the spare (unpinned) goes, the held one stays.
        newer = put(tight, np.ones((16, 64), np.float32))
        assert get(tight, f"/v1/embeds/{spare}").status_code == 404
        assert get(tight, f"/v1/embeds/{held}").status_code == 200
        assert not tight.is_idle()  # the stream was still running throughout
        for line in lines:
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = msgspec.json.decode(line[6:])
                text += "".join(c["text"] for c in chunk["choices"])
    assert text == want[0]
    # Released when the stream ended: room for 20 rows evicts it now.
    assert wait_until(tight.is_idle)
    put(tight, np.ones((20, 64), np.float32))
    assert get(tight, f"/v1/embeds/{held}").status_code == 404
    assert get(tight, f"/v1/embeds/{newer}").status_code == 404


# hostile uploads ------------------------------------------------------------------------------------


def hostile_payloads(x: np.ndarray) -> dict[str, Any]:
    good = sf(x)
    h = x.shape[1]
    header = {"prompt_embeds": {"dtype": "F32", "shape": [2, h], "data_offsets": [0, 2 * h * 4]}}
    nan = x.copy()
    nan[0, 0] = np.nan
    sparse = torch.sparse_coo_tensor(torch.tensor([[0], [0]]), torch.tensor([1.0]), (20000, 20000))
    return {
        "bad-base64": good[:10] + "!" + good[11:],
        "pickle-reduce": b64(pickle_zip(pickle.dumps(Reduce(os.system, ("true",)), protocol=2))),
        "bare-pickle": b64(pickle.dumps(Reduce(eval, ("1",)), protocol=2)),
        "sparse-bomb": b64(torch_save(sparse)),
        "safetensors-header-bomb": b64(safetensors_file(header, bytes(2 * h * 4), 2**63)),
        "wrong-hidden-size": sf(np.ones((3, h + 1), np.float32)),
        "nan": sf(nan),
        "raw-size-mismatch": {**encode_prompt_embeds(x, "raw"), "shape": [x.shape[0] + 1, h]},  # type: ignore[dict-item]
        "empty": "",
        "not-a-string": 12,
    }


HOSTILE = [
    "bad-base64", "pickle-reduce", "bare-pickle", "sparse-bomb", "safetensors-header-bomb",
    "wrong-hidden-size", "nan", "raw-size-mismatch", "empty", "not-a-string",
]  # fmt: skip


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_uploads_are_400_naming_data(main: ServerProcess, x: np.ndarray, name: str) -> None:
    before = main.metrics().get("pe_embeds_store_uploads_total", 0)
    payload = hostile_payloads(x)[name]
    r = upload(main, wrap(payload) if name != "not-a-string" else {"data": payload})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "data", error
    assert error["type"] == "invalid_request_error"
    assert main.metrics().get("pe_embeds_store_uploads_total", 0) == before
    ok = main.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 1})
    assert ok.status_code == 200 and main.proc.poll() is None


def test_disabled_server_refuses_uploads_naming_the_flag(
    disabled: ServerProcess, x: np.ndarray
) -> None:
    error = assert_error(upload(disabled, {"data": sf(x)}), 400, "prompt_embeds_disabled")
    assert "--enable-prompt-embeds" in error["message"]


# metrics and isolation of a large upload ----------------------------------------------------------


def test_metrics_move(main: ServerProcess, x: np.ndarray) -> None:
    def store_metrics() -> dict[str, float]:
        return {k: v for k, v in main.metrics().items() if k.startswith("pe_embeds_store_")}

    before = store_metrics()
    embeds_id = put(main, x)
    assert complete(main, {"id": embeds_id}, max_tokens=1).status_code == 200
    assert complete(main, {"id": "emb_" + "b" * 26}).status_code == 404
    after = store_metrics()
    assert after["pe_embeds_store_uploads_total"] == before["pe_embeds_store_uploads_total"] + 1
    assert after["pe_embeds_store_hits_total"] >= before["pe_embeds_store_hits_total"] + 1
    assert after["pe_embeds_store_misses_total"] >= before["pe_embeds_store_misses_total"] + 1
    assert after["pe_embeds_store_bytes"] >= before["pe_embeds_store_bytes"] + x.nbytes - 64 * ROW
    delete(main, embeds_id)
    assert store_metrics()["pe_embeds_store_objects"] == after["pe_embeds_store_objects"] - 1
    assert (
        "pe_embeds_store_evictions_total" in after and "pe_embeds_store_expirations_total" in after
    )


def test_a_large_upload_does_not_delay_a_plain_request(main: ServerProcess) -> None:
    # 32 MiB of rows (131,072 x 64): decoded in full, then refused for the context length.
    big = sf(np.ones((131_072, 64), np.float32))
    plain = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
    start = time.monotonic()
    assert main.post("/v1/completions", json=plain).status_code == 200
    alone = time.monotonic() - start
    result: dict[str, Any] = {}

    def send() -> None:
        result["r"] = upload(main, {"data": big})

    thread = threading.Thread(target=send)
    thread.start()
    assert wait_until(lambda: main.metrics().get("pe_http_requests_admitted", 0) >= 1, 5.0)
    latencies = []
    while thread.is_alive() and len(latencies) < 20:
        start = time.monotonic()
        assert main.post("/v1/completions", json=plain).status_code == 200
        latencies.append(time.monotonic() - start)
    thread.join()
    assert result["r"].status_code == 400, result["r"].text
    assert latencies, "the upload finished before any plain request"
    assert max(latencies) < max(1.0, 10 * alone), (alone, latencies)


# last in the module: it stops ``brief`` --------------------------------------------------------


def test_a_restart_forgets_every_id(
    brief: ServerProcess, tiny_llama_dir: Path, tmp_path: Path, x: np.ndarray
) -> None:
    embeds_id = put(brief, x)
    assert get(brief, f"/v1/embeds/{embeds_id}").status_code == 200
    brief.stop()
    again = start_server(tiny_llama_dir, tmp_path, "again", ["--enable-prompt-embeds"])
    try:
        assert_error(get(again, f"/v1/embeds/{embeds_id}"), 404, "embeds_not_found")
        error = assert_error(complete(again, {"id": embeds_id}), 404, "embeds_not_found")
        assert error["param"] == "prompt_embeds.id"  # a lone item, not a list
    finally:
        again.stop()
