"""Small units: API-key checks, admission accounting."""

from __future__ import annotations

import ast
from pathlib import Path

import pe_server.auth
from pe_server.admission import Admission
from pe_server.auth import ApiKeyAuth


def test_auth_accepts_only_configured_bearer_keys() -> None:
    auth = ApiKeyAuth(["alpha", "beta"])
    assert auth.is_enabled
    assert auth.is_authorized("Bearer alpha")
    assert auth.is_authorized("bearer beta")
    for header in (None, "", "Bearer", "Bearer ", "Bearer alph", "Bearer alphax", "alpha",
                   "Basic alpha", "Bearer  gamma"):  # fmt: skip
        assert not auth.is_authorized(header), header


def test_auth_disabled_without_keys() -> None:
    auth = ApiKeyAuth([])
    assert not auth.is_enabled
    assert auth.is_authorized(None)


def test_auth_compares_digests_in_constant_time() -> None:
    """Static check: the only comparison of secrets is hmac.compare_digest on digests."""
    tree = ast.parse(Path(pe_server.auth.__file__).read_text())
    calls = {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    assert "compare_digest" in calls
    secrets = {"token", "presented", "known", "key", "keys"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            assert not names & secrets, ast.unparse(node)


def test_admission_bounds_requests_and_bytes() -> None:
    admission = Admission(max_requests=2, max_bytes=100)
    a = admission.try_acquire(60)
    assert a is not None
    assert admission.try_acquire(50) is None  # bytes
    b = admission.try_acquire(40)
    assert b is not None
    assert admission.try_acquire(0) is None  # slots
    assert admission.num_rejected == 2
    admission.release(a)
    admission.release(a)  # idempotent
    assert admission.num_requests == 1 and admission.num_bytes == 40
    admission.release(b)
    assert admission.num_requests == 0 and admission.num_bytes == 0


def test_admission_lets_one_oversized_request_run_alone() -> None:
    admission = Admission(max_requests=4, max_bytes=100)
    big = admission.try_acquire(10_000)
    assert big is not None and admission.num_bytes == 100
    assert admission.try_acquire(1) is None
    admission.release(big)
    assert admission.try_acquire(1) is not None


def test_admission_quota_per_tenant() -> None:
    admission = Admission(max_requests=10, max_bytes=1000, max_per_tenant=2)
    a1, a2 = admission.try_acquire(10, "a"), admission.try_acquire(10, "a")
    assert a1 is not None and a2 is not None
    assert admission.is_over_quota("a") and not admission.is_over_quota("b")
    admission.release(a1)
    admission.release(a1)  # twice is harmless
    assert not admission.is_over_quota("a")
    admission.release(a2)
    assert admission.per_tenant == {} and admission.num_requests == 0
