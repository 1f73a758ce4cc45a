"""Prometheus metrics of one server, in a registry of its own so servers can share a process."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 64, 128)


class ServerMetrics:
    """Request, latency, token and scheduler metrics (names prefixed `kaito_`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "kaito_requests",
            "HTTP requests by path and status code.",
            ["path", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "kaito_request_latency_seconds",
            "Wall time from request received to response completed.",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "kaito_time_to_first_token_seconds",
            "Time from request received to the first generated token.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("kaito_prompt_tokens", "Prompt tokens processed.", registry=r)
        self.generation_tokens = Counter("kaito_generation_tokens", "Tokens generated.", registry=r)
        self.batch_size = Histogram(
            "kaito_batch_size",
            "Sequences decoded together per engine step.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "kaito_num_requests_waiting", "Requests waiting for a batch slot.", registry=r
        )
        self.running = Gauge(
            "kaito_num_requests_running", "Sequences in the running batch.", registry=r
        )
        self.rejected = Counter(
            "kaito_ratelimit_rejected", "Requests refused with 429 (queue full).", registry=r
        )
        self.ready = Gauge("kaito_model_ready", "1 once the model serves requests.", registry=r)

    def watch_engine(self, waiting: Callable[[], float], running: Callable[[], float]) -> None:
        self.queue_depth.set_function(waiting)
        self.running.set_function(running)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
