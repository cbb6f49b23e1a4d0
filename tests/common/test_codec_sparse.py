"""Sparse torch.save payloads (COO, CSR, CSC): accepted as vLLM accepts them, but densified only
after the declared size and every index are checked (vLLM's CVE-2025-62164 and its densify bomb).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from archive_payloads import b64, torch_save  # noqa: E402
from pe_common.codec import (  # noqa: E402
    EmbedsLimits,
    PromptEmbedsError,
    decode_prompt_embeds,
    decode_prompt_embeds_numpy,
    validate_prompt_embeds_tensor,
)

H = 16
MAX_SECONDS = 0.5

warnings.filterwarnings("ignore", message=".*[Ss]parse.*")


def dense_example(rows: int, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, H, generator=gen)
    x[0, 3:9] = 0
    x[rows // 2, :] = 0
    return x.to(dtype)


def to_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    return {"coo": x.to_sparse, "csr": x.to_sparse_csr, "csc": x.to_sparse_csc}[layout]()


@pytest.mark.parametrize("rows", [2, 10])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["coo", "csr", "csc"])
def test_sparse_equals_dense(layout: str, dtype: torch.dtype, rows: int) -> None:
    """The cases of vLLM's payload tests: every layout and dtype, same tensor as dense."""
    dense = dense_example(rows, dtype)
    sparse = to_layout(dense, layout)
    for target in (torch.float32, torch.bfloat16):
        got = decode_prompt_embeds(b64(torch_save(sparse)), hidden_size=H, dtype=target)
        want = decode_prompt_embeds(b64(torch_save(dense)), hidden_size=H, dtype=target)
        assert torch.equal(got, want)
    array = decode_prompt_embeds_numpy(torch_save(sparse), hidden_size=H)
    np.testing.assert_array_equal(array, dense.float().numpy())
    in_memory = validate_prompt_embeds_tensor(sparse, hidden_size=H, dtype=torch.float32)
    assert torch.equal(in_memory, dense.float())


def test_sparse_variants() -> None:
    dense = dense_example(4, torch.float32)
    cases = {
        "hybrid coo (sparse rows, dense columns)": dense.to_sparse(1),
        "batch dimension of 1": dense[None].to_sparse(),
        "uncoalesced, duplicates add up": torch.sparse_coo_tensor(
            torch.tensor([[0, 0, 1], [2, 2, 5]]), torch.tensor([1.0, 2.0, 4.0]), (4, H)
        ),
        "all zeros": torch.zeros(4, H).to_sparse(),
        "int32 CSR indices": torch.sparse_csr_tensor(
            torch.tensor([0, 1, 1, 1, 2], dtype=torch.int32),
            torch.tensor([0, 3], dtype=torch.int32),
            torch.tensor([1.0, 2.0]),
            (4, H),
        ),
        "float64 values": dense.double().to_sparse(),
    }
    for name, sparse in cases.items():
        got = decode_prompt_embeds(b64(torch_save(sparse)), hidden_size=H, dtype=torch.float32)
        assert torch.equal(got, sparse.to_dense().float().reshape(4, H)), name


def coo(indices: list[list[int]], values: list[float], size: tuple[int, ...]) -> torch.Tensor:
    return torch.sparse_coo_tensor(
        torch.tensor(indices), torch.tensor(values), size, check_invariants=False
    )


def csr(crow: list[int], col: list[int], values: list[float], size=(3, H)) -> torch.Tensor:
    return torch.sparse_csr_tensor(
        torch.tensor(crow), torch.tensor(col), torch.tensor(values), size, check_invariants=False
    )


def csc(ccol: list[int], row: list[int], values: list[float], size=(3, H)) -> torch.Tensor:
    return torch.sparse_csc_tensor(
        torch.tensor(ccol), torch.tensor(row), torch.tensor(values), size, check_invariants=False
    )


HOSTILE = {
    "coo row past the end": (coo([[3], [0]], [1.0], (3, H)), "invalid_sparse"),
    "coo column past the end": (coo([[0], [H]], [1.0], (3, H)), "invalid_sparse"),
    "coo negative index": (coo([[0], [-1]], [1.0], (3, H)), "invalid_sparse"),
    "coo index 2**62": (coo([[2**62], [0]], [1.0], (3, H)), "invalid_sparse"),
    "csr column past the end": (csr([0, 1, 1, 1], [H], [1.0]), "invalid_sparse"),
    "csr negative column": (csr([0, 1, 1, 1], [-5], [1.0]), "invalid_sparse"),
    "csr crow not from 0": (csr([1, 1, 1, 1], [0], [1.0]), "invalid_sparse"),
    "csr crow falls": (csr([0, 2, 1, 2], [0, 1], [1.0, 2.0]), "invalid_sparse"),
    "csr crow past nnz": (csr([0, 1, 1, 5], [0], [1.0]), "invalid_sparse"),
    "csr crow too short": (csr([0, 1], [0], [1.0]), "invalid_sparse"),
    "csr unsorted columns": (csr([0, 2, 2, 2], [3, 1], [1.0, 2.0]), "invalid_sparse"),
    "csr duplicate columns": (csr([0, 2, 2, 2], [1, 1], [1.0, 2.0]), "invalid_sparse"),
    "csc row past the end": (csc([0] + [1] * H, [3], [1.0]), "invalid_sparse"),
    "csc duplicate rows": (csc([0, 2] + [2] * (H - 1), [0, 0], [1.0, 2.0]), "invalid_sparse"),
    "wrong width": (coo([[0], [0]], [1.0], (3, H + 1)), "hidden_size_mismatch"),
    "non-finite value": (coo([[0], [0]], [float("nan")], (3, H)), "non_finite_values"),
    "3-D with a batch of 2": (coo([[0], [0], [0]], [1.0], (2, 3, H)), "invalid_shape"),
    "integer values": (
        torch.sparse_coo_tensor(torch.tensor([[0], [0]]), torch.tensor([1]), (3, H)),
        "unsupported_dtype",
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_sparse_is_a_400(name: str) -> None:
    tensor, code = HOSTILE[name]
    payload = b64(torch_save(tensor))
    start = time.perf_counter()
    with pytest.raises(PromptEmbedsError) as info:
        decode_prompt_embeds(payload, hidden_size=H, dtype=torch.float32)
    assert time.perf_counter() - start < MAX_SECONDS
    assert info.value.code == code, info.value.message
    assert info.value.param == "prompt_embeds"
    with pytest.raises(PromptEmbedsError) as info:
        decode_prompt_embeds_numpy(payload, hidden_size=H)
    assert info.value.code == code


def test_densify_bomb_is_refused_before_allocating() -> None:
    """vLLM's PR #54632 case: ~1.5 KB declaring (2**20, 2**20), 4 TiB once dense."""
    bomb = torch.sparse_coo_tensor(torch.tensor([[0], [0]]), torch.tensor([1.0]), (2**20, 2**20))
    payload = torch_save(bomb)
    assert len(payload) < 2048
    start = time.perf_counter()
    with pytest.raises(PromptEmbedsError) as info:
        decode_prompt_embeds(b64(payload), hidden_size=2**20, dtype=torch.float32)
    assert time.perf_counter() - start < MAX_SECONDS
    assert info.value.code == "too_large"
    assert "once densified" in info.value.message
    with pytest.raises(PromptEmbedsError) as info:
        validate_prompt_embeds_tensor(bomb, hidden_size=2**20, dtype=torch.float32)
    assert info.value.code == "too_large"


def test_dense_budget_counts_the_float32_buffer() -> None:
    """The densified buffer is float32 whatever the payload dtype; the budget counts that."""
    x = torch.ones(16, H, dtype=torch.bfloat16).to_sparse()
    limits = EmbedsLimits(max_bytes=16 * H * 4)
    decode_prompt_embeds(b64(torch_save(x)), hidden_size=H, dtype=torch.bfloat16, limits=limits)
    limits = EmbedsLimits(max_bytes=16 * H * 4 - 1)
    with pytest.raises(PromptEmbedsError) as info:
        decode_prompt_embeds(b64(torch_save(x)), hidden_size=H, dtype=torch.bfloat16, limits=limits)
    assert info.value.code == "too_large"


def test_in_memory_hostile_sparse() -> None:
    tensor, code = HOSTILE["csr unsorted columns"]
    with pytest.raises(PromptEmbedsError) as info:
        validate_prompt_embeds_tensor(tensor, hidden_size=H, dtype=torch.float32)
    assert info.value.code == code
