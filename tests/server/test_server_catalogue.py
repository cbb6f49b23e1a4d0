"""The rest of the hostile input catalogue (reference/security.md §11) on the real server.

Each case checks the status, error type and code the catalogue names, that nothing leaks into
the body, and (autouse fixture) that the server still serves the next valid request. "Bomb"
cases also bound the server's RSS: the peak (VmHWM, reset before the case) may grow by at most
BOMB_RSS_LIMIT, the §12.2 criterion. Payloads stay tiny (< 64 KiB) except the size-limit rows.

Where each row is tested:
  1, 3, 4, 7, 8, 11-17, 24-27, 43, 48   test_server_hostile.py (12 and 16 with RSS bounds)
  9 (503 + Retry-After, draining)       test_server_lifecycle.py; the 100 ms bound under load in
                                        test_server_overload.py
  28 (overflow after the cast)          test_server_lifecycle.py (a bf16 server: the main test
                                        server runs float32, where nothing finite overflows)
  44 (N concurrent max-size requests)   test_server_overload.py
  45 mid-stream / mid-upload            test_server_operations.py; while queued:
                                        test_server_overload.py
  46 slow reader, 47 engine fault       test_server_lifecycle.py
  2, 5, 6, 18-23, 29-42                 here (5 and 10 also: test_server_quota_and_heads.py)
Rows that do not apply to pe, or apply differently:
  5   Slowloris: the cut-off at --header-read-timeout is tested in
      test_server_quota_and_heads.py; here, on the main server, that a trickled header runs no
      handler and takes no admission slot, and other clients are served meanwhile.
  10  Per-key quotas (429, --max-requests-per-key): test_server_quota_and_heads.py.
  29  Extreme finite magnitudes: pe has no per-model |x| bound (the knob is off), so the
      catalogue's "else 200" applies: 1e4 values are served.
  36, 37 (requires_grad), 41 (location): DESIGN §3 accepts these for vLLM-client compatibility
      (non-overlapping views are materialised, any device string, requires_grad either way), so
      they are tested as 200 with the same output as a plain contiguous tensor.
Codes that differ from the catalogue's, on purpose:
  21  Dims of the wrong JSON type ("64", 64.0, true) fail the request schema first (§6 step 7):
      invalid_parameter. Valid ints that merely declare a huge tensor ([2**31-1, H]) exceed the
      decode budget before anything is decoded: decode_budget_exceeded.
  30  A header that is not a JSON object is not recognised as safetensors: unsupported_format.
  42  An empty prompt_embeds string is an empty payload, as in vLLM (whose "both empty" check
      counts only None and []): 400 unsupported_format naming prompt_embeds.
  33, 34  Sparse tensors are accepted, as vLLM accepts them (issue 18): a valid COO, CSR or
      CSC tensor answers as its dense twin; out-of-range or unsorted indices are 400
      invalid_sparse, a declared size past the decode budget 400 too_large, both before
      anything is densified (RSS bounded).
pe's own rows, beyond security.md §11 (issue 17):
  49  A request's chat_template that loops 10^10 times, multiplies a string to 10 GB or renders
      megabytes: without --trust-request-chat-template 400 untrusted_chat_template in < 1 s;
      with it 400 chat_template_timeout / chat_template_too_large within the render budget,
      a plain completion and chat served meanwhile, SIGTERM still exits
      (test_server_chat_template.py; the pool itself: tests/engine/test_chat_render.py).
  50  One request that would run prompts x best_of = 1024 x 128 sequences: 400 too_many_inputs
      naming best_of (or n) before any prompt is built (test_server_request_bounds.py).
  51  Prefix-cache probing across tenants (timing, usage.prompt_tokens_details.cached_tokens):
      with API keys every request's cache salt includes its key's digest, so tenant B sees
      cached_tokens 0 for tenant A's prompt, with or without the same cache_salt
      (test_server_tenants.py).
  52  A 100 MB text prompt, or chat text over the cap: 400 prompt_too_long naming prompt or
      messages, before any tokenizer runs (test_server_request_bounds.py).
  53  The engine thread fails at any stage (inbox, schedule, prepare, forward, sample,
      detokenize, deliver): row 47's answer for each (tests/engine/test_async_engine.py;
      forward and deliver through the server in test_server_lifecycle.py).
pe's rows for request constraints (issue 20):
  54  Schemas, regexes and grammars built to blow up a compiler or a decoding step (nested
      repetition, catastrophic backtracking, 2^24-state DFAs, 5,000 alternatives, ambiguous
      left recursion, a schema nested 300 deep): a 400 invalid_structured_output with the
      compiler's message, or an output that ends, within the compile budget; plain requests
      meanwhile served as usual (test_server_structured.py).
  55  A constraint slower to compile than --structured-outputs-timeout: 400
      structured_output_timeout naming the field; the compile runs on its own threads, never
      the event loop or the engine thread (test_server_structured.py).
  56  Invalid, doubled or oversized constraints (bad JSON schema / regex / grammar, two
      sources, over 64 KiB, NUL bytes, structural_tag): 400 naming the field
      (test_server_structured.py; tools: test_server_tools.py).
pe's rows for stored embeddings (issue 21):
  57  Every hostile codec payload above sent to POST /v1/embeds (bad base64, pickle with a
      reduce, sparse and safetensors bombs, wrong width, NaN, size mismatches): the same 400s
      with param "data", nothing stored, the server still serving (test_server_embeds_store.py).
  58  Probing another tenant's objects by id (GET, DELETE, or a reference in a request): the 404
      of an unknown id, same message; ids are 128 random bits, never a content hash
      (test_server_embeds_store.py).
  59  Filling the store: an upload that cannot fit while objects are in use is a 429
      (embeds_store_full) that evicts nothing; one over the store or the key's quota a 413; an
      object a running request holds is never evicted (test_server_embeds_store.py).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import pickle
import select
import socket
import struct
import time
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from server_harness import (
    BOMB_RSS_LIMIT,
    INTERNALS,
    MODEL,
    RssProbe,
    ServerProcess,
    assert_error,
    wait_until,
)

from archive_payloads import b64, rezip, torch_save
from conftest import BODY_READ_TIMEOUT, Embedder
from pe_common.codec import encode_prompt_embeds

torch = pytest.importorskip("torch")

MiB = 2**20
TEXT = "The quick brown fox jumps over the lazy dog"


@pytest.fixture(autouse=True)
def still_serving(server: ServerProcess) -> Iterator[None]:
    pid = server.proc.pid
    yield
    ok = server.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 1})
    assert ok.status_code == 200, ok.text
    assert server.proc.pid == pid and server.proc.poll() is None


# payload builders --------------------------------------------------------------------------


def pickle_zip(data_pkl: bytes, storage: bytes = bytes(64)) -> bytes:
    """A torch.save-shaped archive around an arbitrary data.pkl."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", b"little")
        archive.writestr("archive/data/0", storage)
        archive.writestr("archive/version", b"3\n")
    return out.getvalue()


def safetensors_file(
    header: bytes | dict[str, Any], data: bytes, header_len: int | None = None
) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data


class Reduce:
    """Pickles as ``func(*args)``: what a malicious torch.save file would call on load."""

    def __init__(self, func: Any, args: tuple[Any, ...]) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


# request helpers -----------------------------------------------------------------------------


def complete(server: ServerProcess, payload: Any, **extra: Any) -> httpx.Response:
    body = {"model": MODEL, "prompt_embeds": payload, "max_tokens": 4, **extra}
    return server.post("/v1/completions", json=body)


def chat(server: ServerProcess, part: dict[str, Any]) -> httpx.Response:
    content = [{"type": "text", "text": "Hi"}, {"type": "prompt_embeds", **part}]
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4}
    return server.post("/v1/chat/completions", json=body)


def expect(server: ServerProcess, payload: Any, code: str) -> None:
    """Both endpoints refuse the payload with 400 ``code`` naming ``prompt_embeds``, in < 1 s."""
    start = time.monotonic()
    error = assert_error(complete(server, payload), 400, code)
    assert error["param"] == "prompt_embeds"
    part = payload if isinstance(payload, dict) else {"data": payload}
    assert_error(chat(server, part), 400, code)
    assert time.monotonic() - start < 2.0  # two requests


def expect_bomb(server: ServerProcess, payload: Any, code: str) -> None:
    with RssProbe(server) as rss:
        expect(server, payload, code)
    print(f"{code}: {rss}")  # shown with -s
    assert rss.peak_delta <= BOMB_RSS_LIMIT, str(rss)


def expect_completion_bomb(server: ServerProcess, payload: Any, *codes: str) -> None:
    """/v1/completions refuses the payload with one of ``codes`` (whichever check fires first),
    and the server's peak RSS stays within the bomb limit."""
    with RssProbe(server) as rss:
        r = complete(server, payload)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] in codes
    print(rss)  # shown with -s
    assert rss.peak_delta <= BOMB_RSS_LIMIT, str(rss)


def greedy_text(server: ServerProcess, payload: Any) -> str:
    r = complete(server, payload, temperature=0.0, max_tokens=8, ignore_eos=True)
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["text"])


@pytest.fixture(scope="module")
def rows(embedder: Embedder) -> np.ndarray:
    return embedder(TEXT)


@pytest.fixture(scope="module")
def reference_text(server: ServerProcess, rows: np.ndarray) -> str:
    return greedy_text(server, encode_prompt_embeds(rows, "safetensors"))


# row 2: chunked body past the limit ----------------------------------------------------------


def send_chunked(
    server: ServerProcess, path: str, total: int, chunk: int = 64 * 1024
) -> tuple[bytes, int]:
    """Stream a chunked JSON body of ``total`` bytes; stop once the server has answered."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Authorization: Bearer {server.api_key}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    piece = b'{"model": "tiny", "prompt": "' + b"a" * (chunk - 29)
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head)
        reply = b""
        # Blocking sends: a non-blocking sendall can send part of a chunk and then raise,
        # and resending it whole would corrupt the chunked framing. A reply ends the upload.
        while sent < total:
            if select.select([sock], [], [], 0)[0]:
                with contextlib.suppress(ConnectionResetError):
                    reply += sock.recv(65536)
                break
            try:
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break  # the server stopped reading: its answer is waiting
            sent += len(piece)
            piece = b"a" * chunk
        while b"\r\n\r\n" not in reply:
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            reply += data
    return reply, sent


@pytest.mark.parametrize(("path", "limit"), [("/tokenize", MiB), ("/v1/completions", None)])
def test_row2_chunked_body_over_the_limit_is_413(
    server: ServerProcess, path: str, limit: int | None
) -> None:
    # The main server's generation limit: base64 of 256 KiB of embeds + 4 MiB of slack.
    limit = limit or (4 * 256 * 1024 + 2) // 3 + 4 * MiB
    # Offer far more than the limit plus what loopback socket buffers can hold (a few MiB).
    offered = limit + 64 * MiB
    with RssProbe(server) as rss:
        reply, sent = send_chunked(server, path, total=offered)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:300]
    assert b"request_too_large" in reply
    assert sent < offered  # the server stopped reading and answered
    print(rss)  # shown with -s
    assert rss.peak_delta <= BOMB_RSS_LIMIT + 2 * limit, str(rss)  # at most the capped body


# row 5: slowloris headers ----------------------------------------------------------------------


def test_row5_trickled_headers_run_no_handler(server: ServerProcess) -> None:
    before = server.metrics()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        for byte in b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n":
            sock.sendall(bytes([byte]))
            if byte == ord("\n"):
                assert server.metrics()["pe_http_requests_admitted"] == 0
                ok = server.post(
                    "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1}
                )
                assert ok.status_code == 200
            time.sleep(0.005)
    after = server.metrics()
    key = 'pe_http_requests_total{endpoint="/v1/completions",status="401"}'
    assert after.get(key, 0) == before.get(key, 0)  # the half-sent request never reached auth


# row 6: body trickled below the minimum rate ------------------------------------------------


def test_row6_trickled_body_is_408_and_frees_its_slot(server: ServerProcess) -> None:
    # The main server's body-read deadline is BODY_READ_TIMEOUT plus 1 s per MB declared.
    body = json.dumps({"model": MODEL, "prompt": "x" * 200, "max_tokens": 1}).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Authorization: Bearer {server.api_key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        reply = b""
        for i, byte in enumerate(body):  # 10 bytes/s, far below the 1 MB/s the deadline assumes
            try:
                sock.send(bytes([byte]))
                reply += sock.recv(65536)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                pass
            if reply or time.monotonic() - start > BODY_READ_TIMEOUT + 3:
                break
            if i == 0:  # the slot is held while the body trickles in
                assert server.metrics()["pe_http_requests_admitted"] == 1
            time.sleep(0.1)
        sock.settimeout(5)
        while b"\r\n\r\n" not in reply:
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    elapsed = time.monotonic() - start
    assert reply.startswith(b"HTTP/1.1 408"), reply[:300]
    assert b'"request_timeout"' in reply and b'"invalid_request_error"' in reply
    deadline = BODY_READ_TIMEOUT + len(body) / 1e6
    assert deadline - 0.1 <= elapsed <= deadline + 1.0
    assert wait_until(lambda: server.metrics()["pe_http_requests_admitted"] == 0, 1.0)
    ok = server.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1})
    assert ok.status_code == 200


# rows 18-23: base64, raw metadata, shapes and dtypes ---------------------------------------------


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s[:10] + "!" + s[11:],  # a character outside the alphabet
        lambda s: s.replace("+", "-").replace("/", "_") if ("+" in s or "/" in s) else "-_" + s[2:],
        lambda s: s.rstrip("=") if s.endswith("=") else s[:-1],  # bad padding
        lambda s: s[:16] + " " + s[16:],
        lambda s: s[:16] + "\n" + s[16:],
    ],
    ids=["bad-char", "url-safe", "padding", "space", "newline"],
)
def test_row18_invalid_base64(server: ServerProcess, rows: np.ndarray, mutate: Any) -> None:
    payload = encode_prompt_embeds(rows, "safetensors")
    assert isinstance(payload, str)
    expect(server, mutate(payload), "invalid_base64")


def raw(rows: np.ndarray, **override: Any) -> dict[str, Any]:
    return {**encode_prompt_embeds(np.ascontiguousarray(rows, np.float32), "raw"), **override}


def test_row19_raw_base64_length_mismatch(server: ServerProcess, rows: np.ndarray) -> None:
    payload = raw(rows)
    expect(server, {**payload, "data": payload["data"] + "AAAA"}, "size_mismatch")
    expect(server, {**payload, "shape": [rows.shape[0] + 1, rows.shape[1]]}, "size_mismatch")


def test_row20_raw_decoded_length_mismatch(server: ServerProcess, embedder: Embedder) -> None:
    # 3 x 64 float32 = 768 bytes -> 1024 base64 chars; so do 766 and 767 bytes.
    good = raw(np.ones((3, embedder.hidden_size)))
    short = base64.b64encode(base64.b64decode(good["data"])[:-1]).decode()
    assert len(short) == len(good["data"])
    expect(server, {**good, "data": short}, "size_mismatch")


@pytest.mark.parametrize(
    "shape", [[-3, 64], [3, -64], [3, 0], [2**62, 64], [3, 2**62], [2**64, 64]]
)
def test_row21_invalid_shapes(server: ServerProcess, rows: np.ndarray, shape: list[Any]) -> None:
    expect_bomb(server, raw(rows, shape=shape), "invalid_shape")


@pytest.mark.parametrize("shape", [[3, "64"], [3, 64.0], [True, 64], "3x64", [[3, 64]]])
def test_row21_non_integer_dims_fail_the_schema(
    server: ServerProcess, rows: np.ndarray, shape: Any
) -> None:
    # Wrong JSON types are refused by the request schema (§6 step 7), before the embeds checks.
    expect(server, raw(rows, shape=shape), "invalid_parameter")


def test_row21_huge_declared_shape_allocates_nothing(
    server: ServerProcess, embedder: Embedder
) -> None:
    # Valid ints, 2**31 - 1 rows: refused from the declared shape before any allocation.
    payload = raw(np.ones((1, embedder.hidden_size)), shape=[2**31 - 1, embedder.hidden_size])
    expect_completion_bomb(server, payload, "decode_budget_exceeded")


@pytest.mark.parametrize(
    "dtype", ["int64", "bool", "uint8", "complex64", "float64", "float8_e4m3fn", "unknown", ""]
)
def test_row22_raw_unsupported_dtypes(server: ServerProcess, rows: np.ndarray, dtype: str) -> None:
    expect(server, raw(rows, dtype=dtype), "unsupported_dtype")


@pytest.mark.parametrize("dtype", ["int64", "int32", "bool", "uint8", "complex64"])
def test_row22_torch_save_unsupported_dtypes(
    server: ServerProcess, embedder: Embedder, dtype: str
) -> None:
    tensor = torch.ones(3, embedder.hidden_size).to(getattr(torch, dtype))
    expect(server, b64(torch_save(tensor)), "unsupported_dtype")


def test_row22_torch_save_float64_is_cast(server: ServerProcess, rows: np.ndarray) -> None:
    """vLLM casts any floating payload to the model dtype; float64 answers as float32."""
    want = greedy_text(server, b64(torch_save(torch.from_numpy(rows))))
    assert greedy_text(server, b64(torch_save(torch.from_numpy(rows).double()))) == want


@pytest.mark.parametrize("dtype", ["F64", "I64", "BOOL", "U8", "F8_E4M3"])
def test_row22_safetensors_unsupported_dtypes(
    server: ServerProcess, embedder: Embedder, dtype: str
) -> None:
    h = embedder.hidden_size
    size = 3 * h * {"F64": 8, "I64": 8}.get(dtype, 1)
    header = {"prompt_embeds": {"dtype": dtype, "shape": [3, h], "data_offsets": [0, size]}}
    expect(server, b64(safetensors_file(header, bytes(size))), "unsupported_dtype")


@pytest.mark.parametrize("shape", [(), (64,), (2, 3, 64), (1, 1, 3, 64)])
def test_row23_wrong_rank(server: ServerProcess, shape: tuple[int, ...]) -> None:
    tensor = torch.ones(shape)
    expect(server, b64(torch_save(tensor)), "invalid_shape")
    if len(shape) >= 1:
        expect(server, raw(np.ones(shape)), "invalid_shape")


def test_row23_leading_batch_of_one_is_squeezed(
    server: ServerProcess, rows: np.ndarray, reference_text: str
) -> None:
    batched = b64(torch_save(torch.from_numpy(rows)[None]))
    assert greedy_text(server, batched) == reference_text


# rows 29-30: magnitudes, safetensors --------------------------------------------------------


def test_row29_large_finite_values_are_served(server: ServerProcess, rows: np.ndarray) -> None:
    big = np.full_like(rows, 1e4)
    r = complete(server, encode_prompt_embeds(big, "safetensors"))
    assert r.status_code == 200, r.text


def st_entry(h: int, name_shape: tuple[int, int] = (2, 0), start: int = 0) -> dict[str, Any]:
    rows_, _ = name_shape
    return {"dtype": "F32", "shape": [rows_, h], "data_offsets": [start, start + rows_ * h * 4]}


def test_row30_safetensors(server: ServerProcess, embedder: Embedder) -> None:
    h = embedder.hidden_size
    data = bytes(2 * h * 4)
    two = {"a": st_entry(h), "b": st_entry(h, start=len(data))}
    expect(server, b64(safetensors_file(two, data + data)), "invalid_safetensors")
    wrong_offsets = {"prompt_embeds": {**st_entry(h), "data_offsets": [0, 10**12]}}
    expect(server, b64(safetensors_file(wrong_offsets, data)), "invalid_safetensors")
    expect(server, b64(safetensors_file(b"{not json", data)), "invalid_safetensors")
    # A header that is not a JSON object is not recognised as safetensors at all.
    expect(server, b64(safetensors_file(b"[]", data)), "unsupported_format")


def test_row30_safetensors_header_bombs(server: ServerProcess, embedder: Embedder) -> None:
    h = embedder.hidden_size
    data = bytes(2 * h * 4)
    header = {"prompt_embeds": st_entry(h)}
    # Declared header lengths of 200 MB and 2**63 with a 1 KiB file.
    for declared in (200 * 10**6, 2**63):
        expect_bomb(
            server, b64(safetensors_file(header, data, header_len=declared)), "invalid_safetensors"
        )
    # A metadata bomb: 2,500 keys in __metadata__ (35 KiB of header for one small tensor).
    meta = {f"k{i}": "v" for i in range(2500)}
    bomb = safetensors_file({"__metadata__": meta, **header}, data)
    assert len(b64(bomb)) < 64 * 1024
    r = complete(server, b64(bomb))
    assert r.status_code in (200, 400), r.text  # the header fits the bound: served or refused
    if r.status_code == 400:
        assert r.json()["error"]["code"] == "invalid_safetensors"


# rows 31-32: pickles ----------------------------------------------------------------------


def test_row31_reduce_payloads_are_never_executed(server: ServerProcess, tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    evil = pickle.dumps(Reduce(os.system, (f"touch {marker}",)), protocol=2)
    expect(server, b64(pickle_zip(evil)), "unsupported_format")
    expect(server, b64(evil), "unsupported_format")
    eval_call = pickle.dumps(Reduce(eval, (f"open({str(marker)!r}, 'w')",)), protocol=2)
    expect(server, b64(pickle_zip(eval_call)), "unsupported_format")
    time.sleep(0.2)
    assert not marker.exists()


@pytest.mark.parametrize(
    "obj",
    [{"prompt_embeds": [1.0]}, [1.0, 2.0], 3, "text", None],
    ids=["dict", "list", "int", "str", "none"],
)
def test_row32_torch_save_of_a_non_tensor(server: ServerProcess, obj: object) -> None:
    expect(server, b64(torch_save(obj)), "unsupported_format")


# rows 33-37: layouts and tensor kinds -------------------------------------------------------


def test_row33_sparse_with_out_of_range_indices(server: ServerProcess, embedder: Embedder) -> None:
    h = embedder.hidden_size
    for index in ([[10], [10]], [[2**40], [0]], [[-5], [0]]):
        tensor = torch.sparse_coo_tensor(
            torch.tensor(index), torch.tensor([1.0]), (3, h), check_invariants=False
        )
        expect(server, b64(torch_save(tensor)), "invalid_sparse")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sparse CSR is beta
        csr = torch.sparse_csr_tensor(
            torch.tensor([0, 1, 1, 1]), torch.tensor([h]), torch.tensor([1.0]), (3, h)
        )
    expect(server, b64(torch_save(csr)), "invalid_sparse")


def test_row33_valid_sparse_answers_as_dense(server: ServerProcess, rows: np.ndarray) -> None:
    dense = torch.from_numpy(rows.copy())
    dense[1, :] = 0  # a zero row, so the sparse forms really are sparse
    want = greedy_text(server, b64(torch_save(dense)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sparse CSR is beta
        for sparse in (dense.to_sparse(), dense.to_sparse_csr(), dense.to_sparse_csc()):
            assert greedy_text(server, b64(torch_save(sparse))) == want, sparse.layout


def test_row34_sparse_with_a_huge_shape(server: ServerProcess) -> None:
    # One non-zero in [20000, 20000]: 1.6 GB if densified.
    tensor = torch.sparse_coo_tensor(torch.tensor([[0], [0]]), torch.tensor([1.0]), (20000, 20000))
    payload = b64(torch_save(tensor))
    assert len(payload) < 64 * 1024
    expect_bomb(server, payload, "too_large")


def test_row35_stride_zero_views(server: ServerProcess, embedder: Embedder) -> None:
    h = embedder.hidden_size
    expanded = torch.ones(1, h).expand(1_000_000, h)  # 256 MB if materialised
    payload = b64(torch_save(expanded))
    assert len(payload) < 64 * 1024
    expect_completion_bomb(server, payload, "unsupported_layout", "too_large")
    small = torch.ones(1, h).expand(8, h)
    expect_bomb(server, b64(torch_save(small)), "unsupported_layout")
    overlapping = torch.ones(2 * h).as_strided((4, h), (1, 1))
    expect(server, b64(torch_save(overlapping)), "unsupported_layout")


def test_row36_views_inside_their_storage_are_materialised(
    server: ServerProcess, rows: np.ndarray, reference_text: str
) -> None:
    t = torch.from_numpy(rows)
    padded = torch.cat([torch.zeros(2, t.shape[1]), t, torch.zeros(3, t.shape[1])])
    views = [
        padded[2 : 2 + t.shape[0]],  # storage offset, larger storage
        t.t().contiguous().t(),  # transposed strides
        torch.cat([t, t], dim=1)[:, : t.shape[1]],  # row stride 2H
    ]
    for view in views:
        assert torch.equal(view, t)
        assert greedy_text(server, b64(torch_save(view))) == reference_text


def test_row37_tensor_kinds(server: ServerProcess, embedder: Embedder) -> None:
    h = embedder.hidden_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated / beta constructors
        quantized = torch.quantize_per_tensor(torch.ones(2, h), 0.1, 0, torch.qint8)
        nested = torch.nested.nested_tensor([torch.ones(2, h), torch.ones(1, h)])
    for tensor in (
        quantized,
        nested,
        torch.empty(2, h, device="meta"),
        torch.nn.Parameter(torch.ones(2, h)),
    ):
        expect(server, b64(torch_save(tensor)), "unsupported_tensor_kind")


def test_row37_requires_grad_is_accepted(
    server: ServerProcess, rows: np.ndarray, reference_text: str
) -> None:
    tensor = torch.from_numpy(rows).clone().requires_grad_(True)
    assert greedy_text(server, b64(torch_save(tensor))) == reference_text


# rows 38-42: archive formats ------------------------------------------------------------------


def test_row38_deflate_zip_bomb(server: ServerProcess, embedder: Embedder) -> None:
    # data/0 inflates to 64 MB from a 64 KB entry.
    h = embedder.hidden_size
    rows = 64 * MiB // (4 * h)
    archive = torch_save(torch.zeros(rows, h))
    bomb = rezip(archive, compression=zipfile.ZIP_DEFLATED)
    del archive
    payload = b64(bomb)
    assert len(payload) < 128 * 1024
    expect_completion_bomb(server, payload, "unsupported_format", "too_large")
    # A small tensor whose data.pkl alone is compressed: refused for the compression itself.
    small = torch_save(torch.ones(2, h))
    expect_bomb(server, b64(rezip(small, compression=zipfile.ZIP_DEFLATED)), "unsupported_format")


@pytest.mark.parametrize(
    "data_pkl",
    [
        b"\x80\x02c__builtin__\nbytearray\nJ\x00\x00\x00\x80\x85R.",  # bytearray(2 GiB)
        b"\x80\x02ctorch\nFloatTensor\nJ\x90\xd0\x03\x00M\x00\x10\x86R.",  # FloatTensor(250000, 4096)
        b"\x80\x02ctorch\nTensor\n)\x81.",  # NEWOBJ
        b"\x80\x02" + b"\x8f" * 900 + b".",  # EMPTY_SET flood
        b"\x80\x02" + b"(" * 1000 + b".",  # MARK flood
        b"\x80\x02" + b"(" * 20_000 + b".",  # over the data.pkl cap
    ],
    ids=["bytearray", "FloatTensor", "newobj", "empty-set", "mark", "oversized"],
)
def test_row39_pickle_bombs(server: ServerProcess, data_pkl: bytes) -> None:
    expect_bomb(server, b64(pickle_zip(data_pkl)), "unsupported_format")


def test_row40_legacy_torch_format(server: ServerProcess, rows: np.ndarray) -> None:
    legacy = torch_save(torch.from_numpy(rows), _use_new_zipfile_serialization=False)
    expect(server, b64(legacy), "unsupported_format")


def test_row41_byte_order_and_location(
    server: ServerProcess, rows: np.ndarray, reference_text: str
) -> None:
    archive = torch_save(torch.from_numpy(rows))
    expect(server, b64(rezip(archive, replace={"byteorder": b"big"})), "unsupported_format")
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        data_pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    cpu = b"X\x03\x00\x00\x00cpu"
    assert cpu in data_pkl
    on_gpu = data_pkl.replace(cpu, b"X\x06\x00\x00\x00cuda:7")
    assert greedy_text(server, b64(rezip(archive, replace={"data.pkl": on_gpu}))) == reference_text


def test_row42_truncated_empty_and_random_bytes(server: ServerProcess, rows: np.ndarray) -> None:
    archive = torch_save(torch.from_numpy(rows))
    for cut in (1, 4, 30, len(archive) // 2, len(archive) - 1):
        expect(server, b64(archive[:cut]), "unsupported_format")
    rng = np.random.default_rng(0)
    for data in (bytes(64), rng.bytes(4096), b"PK\x03\x04" + rng.bytes(1000)):
        expect(server, b64(data), "unsupported_format")
    # An empty string is an empty payload (as in vLLM), not an absent prompt; an empty chat
    # part's data is vLLM's "requires a non-empty `data`" (test_server_vllm_suite_chat.py).
    error = assert_error(complete(server, ""), 400, "unsupported_format")
    assert error["param"] == "prompt_embeds"


def test_messages_name_the_parameter_and_leak_nothing(
    server: ServerProcess, tmp_path: Path
) -> None:
    marker = "SECRET_MARKER_zq"
    evil = pickle.dumps(Reduce(os.system, (marker,)), protocol=2)
    for payload in (b64(pickle_zip(evil)), raw(np.ones((2, 64)), dtype=marker)):
        r = complete(server, payload)
        assert r.status_code == 400
        assert marker not in r.text and "system" not in r.text
        assert not INTERNALS.search(r.text)
