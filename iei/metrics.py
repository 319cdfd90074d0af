"""Prometheus metrics. Each engine owns its own registry (no global state), so several servers
or tests in one process never share counters.

With several HTTP front ends (`--http-workers`) this registry, in the engine's process, is still the only
one: front ends report each finished request over the engine link (`iei.messages.Observed`) and answer
`/metrics` with the engine's rendering, so a scrape of any front end sees the whole server (the role
prometheus-client's multiprocess mode plays elsewhere, without its files or its limits on gauges)."""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_SOURCE_BUCKETS = (1, 2, 3, 4, 6, 8, 16)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("iei_requests", "Requests by route and outcome (success or error type).",
                                ["route", "outcome"], registry=r)
        self.failures = Counter("iei_failures", "Failed requests by error type.", ["error_type"], registry=r)
        self.total_time = Histogram("iei_request_duration_seconds", "Whole request time.", buckets=_TIME_BUCKETS, registry=r)
        self.preprocess_time = Histogram("iei_preprocess_duration_seconds", "Decode and resize time per request.",
                                         buckets=_TIME_BUCKETS, registry=r)
        self.queue_time = Histogram("iei_queue_duration_seconds", "Time waiting for a batch per request.",
                                    buckets=_TIME_BUCKETS, registry=r)
        self.inference_time = Histogram("iei_inference_duration_seconds", "Model time of the request's batch.",
                                        buckets=_TIME_BUCKETS, registry=r)
        self.batch_size = Histogram("iei_batch_size", "Images per batch sent to the model.", buckets=_BATCH_BUCKETS,
                                    registry=r)
        self.batch_frontends = Histogram("iei_batch_frontends", "HTTP front ends whose images one batch held "
                                         "(above 1: the one batcher mixed front ends).", buckets=_SOURCE_BUCKETS,
                                         registry=r)
        self.frontend_requests = Counter("iei_frontend_requests", "Requests served, by HTTP front end (its index).",
                                         ["frontend"], registry=r)
        self.batch_failures = Counter("iei_batch_failures", "Batches the model failed on.", registry=r)
        self.images_embedded = Counter("iei_images_embedded", "Images embedded successfully.", registry=r)
        self.texts_embedded = Counter("iei_texts_embedded", "Texts embedded successfully (CLIP, SigLIP).", registry=r)
        self.queue_size = Gauge("iei_queue_size", "Images waiting for a batch.", registry=r)
        self.inflight = Gauge("iei_inflight_images", "Images admitted and not yet answered.", registry=r)

    def watch(self, *, queue_size: Callable[[], float], inflight: Callable[[], float]) -> None:
        """Gauges read at scrape time: nothing to update on the hot path."""
        self.queue_size.set_function(queue_size)
        self.inflight.set_function(inflight)

    def on_batch(self, size: int, inference_s: float, ok: bool) -> None:
        self.batch_size.observe(size)
        if not ok:
            self.batch_failures.inc()

    def on_batch_sources(self, sources: int) -> None:
        self.batch_frontends.observe(sources)

    def observe_request(self, route: str, outcome: str, total_s: float, stages: tuple[float, float, float] | None,
                        frontend: int = 0) -> None:
        self.requests.labels(route, outcome).inc()
        self.frontend_requests.labels(str(frontend)).inc()
        self.total_time.observe(total_s)
        if stages is None:
            self.failures.labels(outcome).inc()
            return
        preprocess_s, queue_s, inference_s = stages
        self.preprocess_time.observe(preprocess_s)
        self.queue_time.observe(queue_s)
        self.inference_time.observe(inference_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
