"""vLLM 0.33's prompt-embeds payload-loading cases, carried to pe as HTTP requests (issue 18).

vLLM tests its decoder (``vllm/renderers/embed_utils.py::safe_load_prompt_embeds`` and
``vllm/utils/sparse_utils.py::safe_to_dense``) by calling it in process. Each case here sends the
same payload to pe's /v1/completions and expects what vLLM's serving path makes of the same
outcome: a loaded tensor is a 200 whose ``usage.prompt_tokens`` is its row count (vLLM's shape
assertion), a ``VLLMValidationError`` / ``ValueError`` is a 400 whose message holds vLLM's
fragment. Sources (vllm-project/vllm):

- tests/entrypoints/openai/completion/test_prompt_validation.py (prompt_embeds cases)
- tests/renderers/test_sparse_tensor_validation.py (the prompt_embeds and safe_to_dense cases)
- tests/renderers/test_prompt_embeds_payload_validation.py
- tests/renderers/test_sparse_tensor_concurrent_race.py (the prompt_embeds cases)

Not carried: image/audio/video embeds loaders (pe serves no multimodal inputs), the module-identity
check of vLLM's shared lock, and the two cases that patch ``torch.load`` to check how vLLM quotes
torch's exception text (pe never quotes decoder exceptions: DESIGN §3).

The widths differ: vLLM's mock models are 768 wide (opt-125m) or as wide as the test tensor; the
tiny model is 64 wide (the ``hidden`` fixture), so a tensor is that wide wherever vLLM's matched
its model.
"""

from __future__ import annotations

import io
import threading
import warnings
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from server_harness import ServerProcess
from vllm_suite import encode_embeds

from archive_payloads import b64, torch_save
from conftest import MODEL, Embedder
from pe_common.codec import encode_prompt_embeds
from pe_server.config import ServerConfig

# pe's --max-embeds-bytes stands in for VLLM_MAX_EMBED_DECODE_BYTES. vLLM's size tests lower it to
# 4096; pe also counts a payload's own bytes against it, so 4096 would refuse every torch.save
# file here. 128 KiB keeps vLLM's proportions: every ordinary payload fits, the oversized one
# (vLLM's 4 MiB (1024, 1024), here (1024, HIDDEN) = 256 KiB) does not.
LIMIT_BYTES = 128 * 1024
EMBEDS_FLAGS = ["--enable-prompt-embeds", "--max-embeds-bytes", str(LIMIT_BYTES)]
MAX_TOKENS = 3


@pytest.fixture(scope="module")
def servers(
    tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServerProcess]]:
    """The model with prompt embeds on (float32, as vLLM's ``model_config`` fixture), and
    without them (vLLM's ``test_empty_prompt`` server); both start at once."""
    log_dir = tmp_path_factory.mktemp("vllm_suite_payloads")
    procs = {
        "embeds": ServerProcess(tiny_llama_dir, log_dir / "embeds.log", EMBEDS_FLAGS),
        "plain": ServerProcess(tiny_llama_dir, log_dir / "plain.log", []),
    }
    try:
        for proc in procs.values():
            proc.wait_ready()
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


def http_client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.root, headers=server.headers, timeout=60.0) as client:
        yield client


@pytest.fixture(scope="module")
def client(servers: dict[str, ServerProcess]) -> Iterator[httpx.Client]:
    yield from http_client(servers["embeds"])


@pytest.fixture(scope="module")
def plain_client(servers: dict[str, ServerProcess]) -> Iterator[httpx.Client]:
    yield from http_client(servers["plain"])


@pytest.fixture(scope="module")
def hidden(embedder: Embedder) -> int:
    return embedder.hidden_size


# ---- payloads, as vLLM's tests build them ---------------------------------------------------


def _sparse_coo(indices: list[list[int]], values: list[float], shape: tuple[int, ...]) -> Any:
    return torch.sparse_coo_tensor(
        torch.tensor(indices),
        torch.tensor(values),
        shape,
        dtype=torch.float32,
        check_invariants=False,
    )


def _create_malicious_sparse_tensor(hidden: int) -> torch.Tensor:
    """vLLM's: indices (10, 10) in a 3 x 3 tensor (here 3 x hidden)."""
    return _sparse_coo([[10], [10]], [1.0], (3, hidden))


def _create_valid_sparse_tensor(hidden: int) -> torch.Tensor:
    """vLLM's: the diagonal 1, 2, 3 of a 3 x 3 tensor (here 3 x hidden)."""
    return _sparse_coo([[0, 1, 2], [0, 1, 2]], [1.0, 2.0, 3.0], (3, hidden))


def _create_valid_dense_tensor(hidden: int, seq_len: int = 10) -> torch.Tensor:
    """vLLM's: randn(10, 768) (here 10 x hidden); ``seq_len`` 4 for the race file's."""
    return torch.randn(seq_len, hidden, generator=torch.Generator().manual_seed(seq_len))


def _create_oversized_sparse_tensor(shape: tuple[int, int]) -> torch.Tensor:
    """vLLM's: a valid sparse tensor with one stored element and a declared ``shape``."""
    return _sparse_coo([[0], [0]], [1.0], shape)


# ---- requests and expectations --------------------------------------------------------------


def complete(client: httpx.Client, payload: Any, **extra: Any) -> httpx.Response:
    body = {
        "model": MODEL,
        "prompt": None,
        "prompt_embeds": payload,
        "max_tokens": MAX_TOKENS,
        "temperature": 0.0,
        **extra,
    }
    return client.post("/v1/completions", json=body)


def loaded(response: httpx.Response, num_rows: int) -> dict[str, Any]:
    """The payload loaded as a ``num_rows``-row tensor."""
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["usage"]["prompt_tokens"] == num_rows
    return body


def refused(response: httpx.Response, *fragments: str) -> dict[str, Any]:
    """A client error (vLLM: ``VLLMValidationError`` / ``ValueError`` -> 400) whose message
    holds every fragment."""
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    for fragment in fragments:
        assert fragment in error["message"], error
    return error


def same_as_dense(client: httpx.Client, payload: str, dense: torch.Tensor) -> None:
    """vLLM's ``assert_close(loaded, tensor.to_dense())``, seen from outside: the payload
    generates what the same values sent dense (float32 safetensors) generate."""
    reference = encode_prompt_embeds(dense.float().numpy(), "safetensors")
    got = loaded(complete(client, payload, logprobs=1), dense.shape[0])
    want = loaded(complete(client, reference, logprobs=1), dense.shape[0])
    assert got["choices"][0]["text"] == want["choices"][0]["text"]
    assert got["choices"][0]["logprobs"]["tokens"] == want["choices"][0]["logprobs"]["tokens"]


def in_parallel(requests: list[Any]) -> list[httpx.Response]:
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        return list(pool.map(lambda request: request(), requests))


# ---- test_prompt_validation.py --------------------------------------------------------------


def test_empty_prompt(plain_client: httpx.Client) -> None:
    """vLLM test_prompt_validation.py: test_empty_prompt (a server without the flag)."""
    response = complete(plain_client, [])
    refused(response, "Either prompt or prompt_embeds must be provided and non-empty.")


LAYOUTS = {
    "strided": torch.Tensor.contiguous,
    "sparse_coo": torch.Tensor.to_sparse_coo,
    "sparse_csc": torch.Tensor.to_sparse_csc,
    "sparse_csr": torch.Tensor.to_sparse_csr,
}


# vLLM also parametrizes hidden_size (2, 10) and mocks a model that wide: both cases are "the
# tensor is as wide as the model", which here is the served model's width.
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["float32", "bfloat16", "float16"]
)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("seq_len", [2, 10])
def test_load_prompt_embeds(
    client: httpx.Client, hidden: int, dtype: torch.dtype, layout: str, seq_len: int
) -> None:
    """vLLM test_prompt_validation.py: test_load_prompt_embeds[dtype-layout-seq_len-*].

    vLLM checks the loaded tensor is dense, on the CPU and equal to ``tensor.to_dense()``; over
    HTTP that is a 200 whose output equals the output of the dense values. vLLM's mock model has
    the tensor's dtype; the server here is float32, so bfloat16 / float16 are cast (exactly).
    """
    generator = torch.Generator().manual_seed(seq_len)
    tensor = torch.randn((seq_len, hidden), generator=generator).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sparse CSR / CSC are beta
        tensor = LAYOUTS[layout](tensor)
    same_as_dense(client, encode_embeds(tensor), tensor.to("cpu").to_dense())


def test_disable_prompt_embeds(plain_client: httpx.Client) -> None:
    """vLLM test_prompt_validation.py: test_disable_prompt_embeds (float32, 2 x 2)."""
    tensor = torch.randn((2, 2), dtype=torch.float32)
    refused(complete(plain_client, encode_embeds(tensor)), "--enable-prompt-embeds")


# ---- test_sparse_tensor_validation.py: TestPromptEmbedsValidation ---------------------------


def test_valid_dense_tensor_accepted(client: httpx.Client, hidden: int) -> None:
    """vLLM TestPromptEmbedsValidation: test_valid_dense_tensor_accepted."""
    valid_tensor = _create_valid_dense_tensor(hidden)
    loaded(complete(client, encode_embeds(valid_tensor)), valid_tensor.shape[0])


def test_valid_sparse_tensor_accepted(client: httpx.Client, hidden: int) -> None:
    """vLLM TestPromptEmbedsValidation: test_valid_sparse_tensor_accepted (vLLM loads it with
    its image-embeds loader; here it is a prompt_embeds payload)."""
    valid_sparse = _create_valid_sparse_tensor(hidden)
    loaded(complete(client, encode_embeds(valid_sparse)), valid_sparse.shape[0])


def test_malicious_sparse_tensor_rejected(client: httpx.Client, hidden: int) -> None:
    """vLLM TestPromptEmbedsValidation: test_malicious_sparse_tensor_rejected."""
    error = refused(complete(client, encode_embeds(_create_malicious_sparse_tensor(hidden))))
    error_msg = error["message"].lower()
    assert "sparse" in error_msg or "index" in error_msg or "bounds" in error_msg


def test_extremely_large_indices_rejected(client: httpx.Client, hidden: int) -> None:
    """vLLM TestPromptEmbedsValidation: test_extremely_large_indices_rejected."""
    malicious_tensor = _sparse_coo([[999999], [999999]], [1.0], (10, hidden))
    refused(complete(client, encode_embeds(malicious_tensor)))


def test_negative_indices_rejected(client: httpx.Client, hidden: int) -> None:
    """vLLM TestPromptEmbedsValidation: test_negative_indices_rejected."""
    malicious_tensor = _sparse_coo([[-1], [-1]], [1.0], (10, hidden))
    refused(complete(client, encode_embeds(malicious_tensor)))


def test_hidden_size_mismatch_rejected(client: httpx.Client, hidden: int) -> None:
    """vLLM TestPromptEmbedsValidation: test_hidden_size_mismatch_rejected (512 for 768;
    here half the width)."""
    wrong_hidden = torch.randn(10, hidden // 2, dtype=torch.float32)
    refused(complete(client, encode_embeds(wrong_hidden)), "hidden_size")


def test_float_dtype_mismatch_cast_to_model_dtype(client: httpx.Client, hidden: int) -> None:
    """vLLM TestPromptEmbedsValidation: test_float_dtype_mismatch_cast_to_model_dtype (a
    bfloat16 upload to a float32 model is cast: same shape, the values' float32 output)."""
    mismatched_float = torch.randn(10, hidden, dtype=torch.bfloat16)
    same_as_dense(client, encode_embeds(mismatched_float), mismatched_float)


def test_non_float_dtype_rejected(client: httpx.Client, hidden: int) -> None:
    """vLLM TestPromptEmbedsValidation: test_non_float_dtype_rejected (int32)."""
    non_float = torch.randint(0, 100, (10, hidden), dtype=torch.int32)
    refused(complete(client, encode_embeds(non_float)), "floating-point")


def test_non_2d_tensor_rejected(client: httpx.Client, hidden: int) -> None:
    """vLLM TestPromptEmbedsValidation: test_non_2d_tensor_rejected (1-D)."""
    bad = torch.randn(hidden, dtype=torch.float32)
    refused(complete(client, encode_embeds(bad)), "2D tensor")


def test_non_tensor_payload_rejected(client: httpx.Client) -> None:
    """vLLM TestPromptEmbedsValidation: test_non_tensor_payload_rejected (torch.save of a
    dict)."""
    refused(complete(client, b64(torch_save({"not": "a tensor"}))), "torch.Tensor")


def test_attack_scenario_completions_api(client: httpx.Client, hidden: int) -> None:
    """vLLM TestSparseTensorValidationIntegration: test_attack_scenario_completions_api."""
    attack_payload = encode_embeds(_create_malicious_sparse_tensor(hidden))
    refused(complete(client, attack_payload))


# ---- test_sparse_tensor_validation.py: TestEmbeddingDecodeSizeLimit (safe_to_dense) ---------

# The real attack payload: 4 TiB of float32 once densified, from a single stored element.
BOMB_SHAPE = (2**20, 2**20)


def test_oversized_sparse_tensor_rejected(client: httpx.Client, hidden: int) -> None:
    """vLLM TestEmbeddingDecodeSizeLimit: test_oversized_sparse_tensor_rejected.

    vLLM's message names ``prompt_embeds`` and its env var VLLM_MAX_EMBED_DECODE_BYTES; pe's names
    ``prompt_embeds`` and its limit in bytes (pe's limit is the --max-embeds-bytes flag).
    """
    oversized = _create_oversized_sparse_tensor((1024, hidden))
    error = refused(complete(client, encode_embeds(oversized)), "prompt_embeds")
    assert str(LIMIT_BYTES) in error["message"]
    assert error["param"] == "prompt_embeds"


def test_default_limit_would_reject_the_real_payload(client: httpx.Client) -> None:
    """vLLM TestEmbeddingDecodeSizeLimit: test_default_limit_would_reject_the_real_payload (the
    shipped default is below the bomb's dense size; the bomb itself is refused)."""
    dense_bytes = BOMB_SHAPE[0] * BOMB_SHAPE[1] * 4
    assert dense_bytes > ServerConfig.model_fields["max_embeds_bytes"].default > 0
    refused(complete(client, encode_embeds(_create_oversized_sparse_tensor(BOMB_SHAPE))))


def test_attack_payload_is_tiny(client: httpx.Client) -> None:
    """vLLM TestEmbeddingDecodeSizeLimit: test_attack_payload_is_tiny (amplification, not an
    upload: the bomb is under 4096 characters and the server refuses it)."""
    payload = encode_embeds(_create_oversized_sparse_tensor(BOMB_SHAPE))
    assert len(payload) < 4096
    refused(complete(client, payload))


def test_valid_tensors_still_densify(client: httpx.Client, hidden: int) -> None:
    """vLLM TestEmbeddingDecodeSizeLimit: test_valid_tensors_still_densify."""
    loaded(complete(client, encode_embeds(_create_valid_dense_tensor(hidden))), 10)
    loaded(complete(client, encode_embeds(_create_valid_sparse_tensor(hidden))), 3)


def test_limit_is_configurable(client: httpx.Client, hidden: int) -> None:
    """vLLM TestEmbeddingDecodeSizeLimit: test_limit_is_configurable (a shape exactly at the
    limit densifies, one row more does not)."""
    rows_at_limit = LIMIT_BYTES // (hidden * 4)
    at_limit = _create_oversized_sparse_tensor((rows_at_limit, hidden))
    loaded(complete(client, encode_embeds(at_limit), max_tokens=1), rows_at_limit)

    over_limit = _create_oversized_sparse_tensor((rows_at_limit + 1, hidden))
    refused(complete(client, encode_embeds(over_limit), max_tokens=1))


def test_limit_can_be_disabled() -> None:
    """vLLM TestEmbeddingDecodeSizeLimit: test_limit_can_be_disabled.

    pe deliberately has no unbounded decode: VLLM_MAX_EMBED_DECODE_BYTES=0 disables vLLM's bound,
    while pe's --max-embeds-bytes must be at least 1 (README, Security defaults).
    """
    with pytest.raises(ValueError, match="max_embeds_bytes"):
        ServerConfig(model="tiny", max_embeds_bytes=0)


# ---- test_prompt_embeds_payload_validation.py -----------------------------------------------


def _zip_without_a_tensor() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("junk.txt", "hello")
    return buffer.getvalue()


UNPARSABLE_PAYLOADS = [
    pytest.param(b"", id="empty"),
    pytest.param(b"\x80", id="single-byte"),
    pytest.param(b"\x00\x01\x02\x03not-a-tensor", id="random-bytes"),
    pytest.param(b"hello world this is not a torch file", id="ascii-text"),
    pytest.param(b"PK\x03\x04" + b"\x00" * 20, id="truncated-zip"),
    pytest.param(_zip_without_a_tensor(), id="zip-without-a-tensor"),
    # pickle.dumps(42): a valid pickle stream that is not a torch checkpoint.
    pytest.param(b"\x80\x04K*.", id="legacy-pickle-of-an-int"),
]


@pytest.mark.parametrize("payload", UNPARSABLE_PAYLOADS)
def test_unreadable_prompt_embeds_payload_is_a_client_error(
    client: httpx.Client, payload: bytes
) -> None:
    """vLLM test_prompt_embeds_payload_validation.py:
    test_unreadable_prompt_embeds_payload_is_a_client_error (400 naming prompt_embeds)."""
    error = refused(complete(client, b64(payload)))
    assert error["param"] == "prompt_embeds"


@pytest.mark.parametrize("payload", UNPARSABLE_PAYLOADS)
def test_the_error_body_stays_bounded(client: httpx.Client, payload: bytes) -> None:
    """vLLM test_prompt_embeds_payload_validation.py: test_the_error_body_stays_bounded."""
    padding = b"A" * 100_000
    error = refused(complete(client, b64(payload + padding)))
    assert len(error["message"]) < 500


def test_a_well_formed_payload_still_loads(client: httpx.Client, hidden: int) -> None:
    """vLLM test_prompt_embeds_payload_validation.py: test_a_well_formed_payload_still_loads."""
    tensor = torch.zeros(3, hidden, dtype=torch.float32)
    loaded(complete(client, b64(torch_save(tensor))), 3)


def test_a_payload_that_is_not_base64_is_still_a_client_error(client: httpx.Client) -> None:
    """vLLM test_prompt_embeds_payload_validation.py:
    test_a_payload_that_is_not_base64_is_still_a_client_error."""
    refused(complete(client, "!!!!not base64!!!!"))


# ---- test_sparse_tensor_concurrent_race.py --------------------------------------------------


def test_malicious_sparse_rejected_by_prompt_loader(client: httpx.Client, hidden: int) -> None:
    """vLLM TestNegativeControlWithoutRace: test_malicious_sparse_rejected_by_prompt_loader."""
    refused(complete(client, encode_embeds(_create_malicious_sparse_tensor(hidden))))


def test_forced_interleaving_still_rejects_invalid(client: httpx.Client, hidden: int) -> None:
    """vLLM TestConcurrentRaceProtection: test_forced_interleaving_still_rejects_invalid.

    vLLM forces a benign and a malicious load to overlap inside its invariant-check lock; here
    the two requests are released together and each still gets its own answer.
    """
    barrier = threading.Barrier(2, timeout=5)
    valid_encoded = encode_embeds(_create_valid_dense_tensor(hidden, seq_len=4))
    malicious_encoded = encode_embeds(_create_malicious_sparse_tensor(hidden))

    def send(payload: str) -> httpx.Response:
        barrier.wait()
        return complete(client, payload)

    benign, malicious = in_parallel([lambda: send(valid_encoded), lambda: send(malicious_encoded)])
    loaded(benign, 4)
    refused(malicious)


def test_concurrent_loads_all_reject_invalid(client: httpx.Client, hidden: int) -> None:
    """vLLM TestConcurrentRaceProtection: test_concurrent_loads_all_reject_invalid."""
    malicious_encoded = encode_embeds(_create_malicious_sparse_tensor(hidden))
    num_workers = 4
    responses = in_parallel([lambda: complete(client, malicious_encoded)] * num_workers)
    assert [r.status_code for r in responses] == [400] * num_workers


def test_concurrent_valid_loads_succeed(client: httpx.Client, hidden: int) -> None:
    """vLLM TestConcurrentRaceProtection: test_concurrent_valid_loads_succeed."""
    valid_encoded = encode_embeds(_create_valid_dense_tensor(hidden, seq_len=4))
    num_workers = 4
    for response in in_parallel([lambda: complete(client, valid_encoded)] * num_workers):
        loaded(response, 4)


# vLLM's TestGlobalFlagRestoration checks torch's process-wide invariant flag is restored; pe
# keeps no such flag, so what is checked is what a leak would break: the next answers.
def still_answers_alike(client: httpx.Client, hidden: int) -> None:
    loaded(complete(client, encode_embeds(_create_valid_dense_tensor(hidden, seq_len=4))), 4)
    refused(complete(client, encode_embeds(_create_malicious_sparse_tensor(hidden))))


def test_flag_restored_after_success(client: httpx.Client, hidden: int) -> None:
    """vLLM TestGlobalFlagRestoration: test_flag_restored_after_success."""
    loaded(complete(client, encode_embeds(_create_valid_dense_tensor(hidden, seq_len=4))), 4)
    still_answers_alike(client, hidden)


def test_flag_restored_after_exception(client: httpx.Client, hidden: int) -> None:
    """vLLM TestGlobalFlagRestoration: test_flag_restored_after_exception."""
    refused(complete(client, encode_embeds(_create_malicious_sparse_tensor(hidden))))
    still_answers_alike(client, hidden)


def test_flag_restored_after_concurrent_exceptions(client: httpx.Client, hidden: int) -> None:
    """vLLM TestGlobalFlagRestoration: test_flag_restored_after_concurrent_exceptions."""
    malicious_encoded = encode_embeds(_create_malicious_sparse_tensor(hidden))
    in_parallel([lambda: complete(client, malicious_encoded)] * 4)
    still_answers_alike(client, hidden)
