"""When to retry a request and how long to wait first (openai-python's policy)."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 60.0  # a longer Retry-After is ignored in favour of the backoff

RETRYABLE_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))


def is_retryable_status(status_code: int) -> bool:
    """408, 429 and every 5xx are worth another try; any other 4xx never is."""
    return status_code in RETRYABLE_STATUSES


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds asked for by ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return float(millis) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    return email.utils.mktime_tz(parsed) - (time.time() if now is None else now)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, capped; honours the server's Retry-After when sane."""

    max_retries: int = 2
    initial_delay: float = INITIAL_RETRY_DELAY
    max_delay: float = MAX_RETRY_DELAY
    random: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def delay(self, num_retries_done: int, headers: Mapping[str, str] | None = None) -> float:
        """Seconds to sleep before retry number ``num_retries_done + 1``."""
        if headers is not None:
            retry_after = parse_retry_after(headers)
            if retry_after is not None and 0 <= retry_after <= MAX_RETRY_AFTER:
                return retry_after
        backoff = min(self.initial_delay * 2.0 ** min(num_retries_done, 32), self.max_delay)
        jitter = 1.0 - 0.25 * self.random()
        return max(backoff * jitter, 0.0)
