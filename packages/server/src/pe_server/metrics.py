"""Prometheus metrics, one CollectorRegistry per app (tests can run several apps)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pe_server.backends.base import BackendStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
DECODE_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class BackendCollector(Collector):
    """Reads the backend's live state at scrape time."""

    def __init__(self, stats: Callable[[], BackendStats], admitted: Callable[[], int]) -> None:
        self._stats = stats
        self._admitted = admitted

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        yield GaugeMetricFamily(
            "pe_num_requests_running", "Engine requests being scheduled.", s.num_running
        )
        yield GaugeMetricFamily(
            "pe_num_requests_waiting", "Engine requests waiting to be scheduled.", s.num_waiting
        )
        yield GaugeMetricFamily("pe_kv_free_blocks", "Free KV-cache blocks.", s.num_free_blocks)
        yield GaugeMetricFamily("pe_kv_total_blocks", "Total KV-cache blocks.", s.num_total_blocks)
        used = s.num_total_blocks - s.num_free_blocks
        yield GaugeMetricFamily(
            "pe_kv_cache_usage_perc",
            "Fraction of KV-cache blocks in use (1 = full).",
            used / s.num_total_blocks if s.num_total_blocks else 0.0,
        )
        yield CounterMetricFamily(
            "pe_prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
            s.prefix_cache_queries,
        )  # fmt: skip
        yield CounterMetricFamily(
            "pe_prefix_cache_hits", "Prompt tokens found in the prefix cache.",
            s.prefix_cache_hits,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "pe_http_requests_admitted", "HTTP requests holding an admission slot.",
            self._admitted(),
        )  # fmt: skip


class EmbedsStoreCollector(Collector):
    """The embeds store's objects, bytes and traffic, read at scrape time."""

    def __init__(self, stats: Callable[[], Any]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        yield GaugeMetricFamily("pe_embeds_store_objects", "Stored embeds objects.", s.objects)
        yield GaugeMetricFamily("pe_embeds_store_bytes", "Bytes of stored embeds.", s.bytes)
        for name, value, text in (
            ("uploads", s.uploads, "Embeds objects uploaded."),
            ("hits", s.hits, "References to stored embeds that were found."),
            ("misses", s.misses, "References to unknown, expired or deleted embeds."),
            ("evictions", s.evictions, "Objects evicted to make room (least recently used)."),
            ("expirations", s.expirations, "Objects dropped a TTL after their last use."),
        ):
            yield CounterMetricFamily(f"pe_embeds_store_{name}", text, value)


class ServerMetrics:
    """All server-side metrics; :meth:`render` gives the text exposition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter(
            "pe_http_requests", "HTTP requests by endpoint and status.",
            ["endpoint", "status"], registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            "pe_prompt_tokens", "Prompt tokens processed (embeds rows count as tokens).",
            registry=r,
        )  # fmt: skip
        self.generation_tokens = Counter("pe_generation_tokens", "Tokens generated.", registry=r)
        self.ttft = Histogram(
            "pe_time_to_first_token_seconds", "Time to first token.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.tpot = Histogram(
            "pe_time_per_output_token_seconds", "Mean time per output token after the first.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.e2e = Histogram(
            "pe_e2e_request_latency_seconds", "End-to-end generation latency.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.embeds_bytes = Counter(
            "pe_embeds_decoded_bytes", "Bytes of prompt-embeds tensors decoded.", registry=r
        )
        self.embeds_decode = Histogram(
            "pe_embeds_decode_seconds", "Seconds spent decoding one request's tensors.",
            buckets=DECODE_BUCKETS, registry=r,
        )  # fmt: skip
        self.aborts = Counter(
            "pe_request_aborts", "Engine requests aborted, by reason.", ["reason"], registry=r
        )
        self.rejections = Counter(
            "pe_admission_rejections", "Requests refused by admission control (503, 429: quota), and connections closed for a slow request head (header_timeout).",
            ["reason"], registry=r,
        )  # fmt: skip

    def attach_backend(
        self, stats: Callable[[], BackendStats], admitted: Callable[[], int]
    ) -> None:
        self.registry.register(BackendCollector(stats, admitted))

    def attach_embeds_store(self, stats: Callable[[], Any]) -> None:
        self.registry.register(EmbedsStoreCollector(stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)
