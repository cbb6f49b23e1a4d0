"""Admission control: a bound on concurrent requests and on bytes in flight, no queue, and an
optional bound on one caller's concurrent requests (a per-key quota)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Ticket:
    """One admitted request's reservation; give it back with :meth:`Admission.release`."""

    num_bytes: int
    tenant: str = ""
    is_released: bool = False


class Admission:
    """Admits a request only if a slot and its byte reservation are free right now.

    Everything runs on the event loop thread, so plain counters suffice. There is deliberately
    no waiting queue: a full server answers 503 at once and the client (or load balancer)
    retries elsewhere or later. With ``max_per_tenant``, one caller (an API key, or a client
    address when no key is configured) holds at most that many slots; beyond it, 429.
    """

    def __init__(
        self, max_requests: int, max_bytes: int, max_per_tenant: int | None = None
    ) -> None:
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.max_per_tenant = max_per_tenant
        self.num_requests = 0
        self.num_bytes = 0
        self.num_rejected = 0
        self.per_tenant: dict[str, int] = {}  # only tenants with requests in flight

    def is_over_quota(self, tenant: str) -> bool:
        return self.max_per_tenant is not None and (
            self.per_tenant.get(tenant, 0) >= self.max_per_tenant
        )

    def try_acquire(self, num_bytes: int, tenant: str = "") -> Ticket | None:
        """A ticket, or None when the request would exceed a server-wide bound."""
        num_bytes = min(num_bytes, self.max_bytes)  # one huge request may run alone
        if self.num_requests >= self.max_requests or self.num_bytes + num_bytes > self.max_bytes:
            self.num_rejected += 1
            return None
        self.num_requests += 1
        self.num_bytes += num_bytes
        self.per_tenant[tenant] = self.per_tenant.get(tenant, 0) + 1
        return Ticket(num_bytes, tenant)

    def release(self, ticket: Ticket) -> None:
        if ticket.is_released:
            return
        ticket.is_released = True
        self.num_requests -= 1
        self.num_bytes -= ticket.num_bytes
        left = self.per_tenant[ticket.tenant] - 1
        if left:
            self.per_tenant[ticket.tenant] = left
        else:
            del self.per_tenant[ticket.tenant]
        assert self.num_requests >= 0 and self.num_bytes >= 0
