"""Prometheus metrics of the server: every series is defined and recorded here (the contract is in
docs/architecture.md), the serving layer and the batch queues call the methods below.

Base units; labels are `model` (dataset), `sampler` (ddgan/ddpm), `status` (HTTP code), `device` (the worker
that ran a batch) and `reason` (why work was dropped) only, plus the info gauge.
Each app owns its own `CollectorRegistry`, so several apps (tests) never collide.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# 1 ms ... 300 s: a 4-step DDGAN batch and a 1000-step DDPM request both land inside the buckets.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 300.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# Requests rejected before they name a served model (bad JSON, unknown dataset) are counted under these labels.
UNKNOWN = "unknown"
# Statuses a served model's request counter exports from start-up (success, failed batch, overload, deadline).
PREINITIALISED_STATUSES = ("200", "500", "503", "504")
# Why queued or running work was dropped (server.batching): the client's DELETE, a hang-up, a deadline, shutdown.
DROP_REASONS = ("cancelled", "disconnected", "deadline", "shutdown")


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        model = ["model", "sampler"]
        worker = [*model, "device"]
        registry = self.registry
        self.request_latency = Histogram(
            "ddgan_request_latency_seconds",
            "End-to-end /generate latency (queue, inference, PNG encoding, response)",
            [*model, "status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "ddgan_queue_wait_seconds",
            "Time a request waits before its first batch starts",
            model,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_inference = Histogram(
            "ddgan_batch_inference_seconds",
            "Sampler time of one batch",
            worker,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.png_encode = Histogram(
            "ddgan_png_encode_seconds",
            "PNG encoding time of one request",
            model,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "ddgan_batch_size_images", "Images per batch", worker, buckets=BATCH_SIZE_BUCKETS, registry=registry
        )
        self.images_generated = Counter("ddgan_images_generated", "Images generated", worker, registry=registry)
        self.requests = Counter(
            "ddgan_requests", "/generate requests by HTTP status", [*model, "status"], registry=registry
        )
        self.in_flight = Gauge("ddgan_requests_in_flight", "/generate requests being served", model, registry=registry)
        self.queued_images = Gauge("ddgan_queued_images", "Images waiting for a batch", model, registry=registry)
        self.queued_work = Gauge(
            "ddgan_queued_work_image_steps", "Work waiting for a batch (images x steps)", model, registry=registry
        )
        self.dropped_work = Counter(
            "ddgan_dropped_work_image_steps",
            "Work (images x steps) not computed because nobody waited for it any more",
            [*model, "reason"],
            registry=registry,
        )
        self.model_info = Gauge(
            "ddgan_model_info",
            "Served models (=1): backend, device and whether the weights are real or random",
            [*model, "backend", "device", "weights"],
            registry=registry,
        )

    def observe_request(self, model: str, sampler: str, status: int, seconds: float) -> None:
        self.request_latency.labels(model, sampler, str(status)).observe(seconds)
        self.requests.labels(model, sampler, str(status)).inc()

    def in_flight_changed(self, model: str, sampler: str, delta: int) -> None:
        self.in_flight.labels(model, sampler).inc(delta)

    def observe_png_encode(self, model: str, sampler: str, seconds: float) -> None:
        self.png_encode.labels(model, sampler).observe(seconds)

    def queue_observer(self, model: str, sampler: str) -> QueueMetrics:
        return QueueMetrics(self, model, sampler)

    def set_model_info(self, model: str, sampler: str, backend: str, device: str, random_weights: bool) -> None:
        self.model_info.labels(model, sampler, backend, device, "random" if random_weights else "real").set(1)
        # Series exported at 0 from the start: rate() cannot see the increase of a series whose first sample is
        # already non-zero, so a first burst of 503s would otherwise never reach the dashboard's error panel.
        for status in PREINITIALISED_STATUSES:
            self.requests.labels(model, sampler, status)
        for reason in DROP_REASONS:
            self.dropped_work.labels(model, sampler, reason)
        self.in_flight.labels(model, sampler)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class QueueMetrics:
    """One model's batch-queue events (`server.batching.BatchObserver`) as its labelled series."""

    def __init__(self, metrics: ServerMetrics, model: str, sampler: str) -> None:
        self._metrics = metrics
        self._model = (model, sampler)
        self._queue_wait = metrics.queue_wait.labels(model, sampler)
        self._queued = metrics.queued_images.labels(model, sampler)
        self._queued_work = metrics.queued_work.labels(model, sampler)

    def batch_done(self, device: str, units: int, seconds: float) -> None:
        metrics, labels = self._metrics, (*self._model, device)
        metrics.batch_inference.labels(*labels).observe(seconds)
        metrics.batch_size.labels(*labels).observe(units)
        metrics.images_generated.labels(*labels).inc(units)

    def queue_wait(self, seconds: float) -> None:
        self._queue_wait.observe(seconds)

    def queued(self, units: int, work: float) -> None:
        self._queued.set(units)
        self._queued_work.set(work)

    def dropped(self, work: float, reason: str) -> None:
        if work > 0:
            self._metrics.dropped_work.labels(*self._model, reason).inc(work)
