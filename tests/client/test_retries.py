"""Backoff arithmetic and Retry-After parsing (no network)."""

from __future__ import annotations

import email.utils

import pytest

from pe_client.retries import RetryPolicy, is_retryable_status, parse_retry_after


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_retryable_statuses(status: int) -> None:
    assert is_retryable_status(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422])
def test_other_4xx_are_never_retried(status: int) -> None:
    assert not is_retryable_status(status)


def test_backoff_doubles_up_to_the_cap_without_jitter() -> None:
    policy = RetryPolicy(max_retries=10, random=lambda: 0.0)
    assert [policy.delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


def test_jitter_shortens_by_at_most_a_quarter() -> None:
    policy = RetryPolicy(random=lambda: 1.0)
    assert policy.delay(0) == pytest.approx(0.375)
    assert policy.delay(3) == pytest.approx(3.0)


def test_real_jitter_stays_in_range() -> None:
    policy = RetryPolicy()
    delays = [policy.delay(1) for _ in range(200)]
    assert all(0.75 <= d <= 1.0 for d in delays)
    assert len(set(delays)) > 1


def test_retry_after_seconds_wins_over_backoff() -> None:
    policy = RetryPolicy(random=lambda: 0.0)
    assert policy.delay(3, {"retry-after": "1.5"}) == 1.5
    assert policy.delay(3, {"retry-after": "0"}) == 0.0


def test_retry_after_ms_wins_over_retry_after() -> None:
    headers = {"retry-after-ms": "250", "retry-after": "9"}
    assert RetryPolicy().delay(0, headers) == 0.25


def test_absurd_or_broken_retry_after_falls_back_to_backoff() -> None:
    policy = RetryPolicy(random=lambda: 0.0)
    assert policy.delay(1, {"retry-after": "3600"}) == 1.0
    assert policy.delay(1, {"retry-after": "-5"}) == 1.0
    assert policy.delay(1, {"retry-after": "soon"}) == 1.0


def test_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after({"retry-after": header}, now=now) == pytest.approx(30.0)
    assert parse_retry_after({}) is None
