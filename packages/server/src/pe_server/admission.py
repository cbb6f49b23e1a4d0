"""Admission control: a bound on concurrent requests and on bytes in flight, no queue."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Ticket:
    """One admitted request's reservation; give it back with :meth:`Admission.release`."""

    num_bytes: int
    is_released: bool = False


class Admission:
    """Admits a request only if a slot and its byte reservation are free right now.

    Everything runs on the event loop thread, so plain counters suffice. There is deliberately
    no waiting queue: a full server answers 503 at once and the client (or load balancer)
    retries elsewhere or later.
    """

    def __init__(self, max_requests: int, max_bytes: int) -> None:
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.num_requests = 0
        self.num_bytes = 0
        self.num_rejected = 0

    def try_acquire(self, num_bytes: int) -> Ticket | None:
        """A ticket, or None when the request would exceed a bound."""
        num_bytes = min(num_bytes, self.max_bytes)  # one huge request may run alone
        if self.num_requests >= self.max_requests or self.num_bytes + num_bytes > self.max_bytes:
            self.num_rejected += 1
            return None
        self.num_requests += 1
        self.num_bytes += num_bytes
        return Ticket(num_bytes)

    def release(self, ticket: Ticket) -> None:
        if ticket.is_released:
            return
        ticket.is_released = True
        self.num_requests -= 1
        self.num_bytes -= ticket.num_bytes
        assert self.num_requests >= 0 and self.num_bytes >= 0
