"""Prometheus metrics of the server: every series is defined and recorded here (the contract is in
docs/architecture.md), the serving layer and the batch queues call the methods below.

Base units; labels are `model` (dataset), `sampler` (ddgan/ddpm) and `status` (HTTP code), plus the info
gauge, the async jobs' `state` and `reason` and the registry reloads' `result`; pages merged from several replicas
(`render_replicas`, the Ray engine) add `replica`. Each app owns its own `CollectorRegistry`, so several apps
(tests) never collide.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

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
# The label naming the process a series came from when several replicas' series are merged into one page.
REPLICA_LABEL = "replica"

Snapshot = list[Metric]  # one process's metric families with their samples (plain, picklable data)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        model = ["model", "sampler"]
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
            model,
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
            "ddgan_batch_size_images", "Images per batch", model, buckets=BATCH_SIZE_BUCKETS, registry=registry
        )
        self.images_generated = Counter("ddgan_images_generated", "Images generated", model, registry=registry)
        self.requests = Counter(
            "ddgan_requests", "/generate requests by HTTP status", [*model, "status"], registry=registry
        )
        self.in_flight = Gauge("ddgan_requests_in_flight", "/generate requests being served", model, registry=registry)
        self.queued_images = Gauge("ddgan_queued_images", "Images waiting for a batch", model, registry=registry)
        self.image_requests = Counter(
            "ddgan_image_requests",
            "GET /v1/images requests by HTTP status (304: the client's copy is current)",
            [*model, "status"],
            registry=registry,
        )
        self.png_cache_hits_total = Counter(
            "ddgan_png_cache_hits", "Images answered from the PNG cache (no sampler time)", model, registry=registry
        )
        self.png_cache_misses_total = Counter(
            "ddgan_png_cache_misses", "Images not in the PNG cache (generated)", model, registry=registry
        )
        self.png_cache_evictions = Counter(
            "ddgan_png_cache_evictions", "PNGs evicted to stay within the byte budget", model, registry=registry
        )
        self.png_cache_bytes = Gauge("ddgan_png_cache_bytes", "Bytes of PNGs held by the cache", registry=registry)
        self.png_cache_entries = Gauge("ddgan_png_cache_entries", "PNGs held by the cache", registry=registry)
        self.model_info = Gauge(
            "ddgan_model_info",
            "Served models (=1): backend, device, the dtype it computes in and whether the weights are real or random",
            [*model, "backend", "device", "dtype", "weights"],
            registry=registry,
        )

        self._model_info_labels: dict[tuple[str, str], tuple[str, ...]] = {}
        self.reloads = Counter(
            "ddgan_registry_reloads", "Registry reloads (SIGHUP, POST /admin/reload) by result", ["result"],
            registry=registry,
        )  # fmt: skip
        # Async jobs (server/jobs.py): `state` is a job state, `reason` why a job was dropped before a client did.
        self.jobs_submitted = Counter("ddgan_jobs_submitted", "Async jobs accepted", model, registry=registry)
        self.jobs_finished = Counter(
            "ddgan_jobs_finished", "Async jobs that reached a terminal state", [*model, "state"], registry=registry
        )
        self.jobs_rejected = Counter(
            "ddgan_jobs_rejected", "Async jobs refused because every held job was live", registry=registry
        )
        self.jobs_evicted = Counter(
            "ddgan_jobs_evicted", "Finished jobs dropped: expired, bytes or capacity", ["reason"], registry=registry
        )
        self.jobs_held = Gauge("ddgan_jobs", "Async jobs held, by state", ["state"], registry=registry)
        self.job_result_bytes = Gauge("ddgan_job_result_bytes", "Bytes of finished job results held", registry=registry)

    def observe_request(self, model: str, sampler: str, status: int, seconds: float) -> None:
        self.request_latency.labels(model, sampler, str(status)).observe(seconds)
        self.requests.labels(model, sampler, str(status)).inc()

    def in_flight_changed(self, model: str, sampler: str, delta: int) -> None:
        self.in_flight.labels(model, sampler).inc(delta)

    def observe_png_encode(self, model: str, sampler: str, seconds: float) -> None:
        self.png_encode.labels(model, sampler).observe(seconds)

    def observe_image_request(self, model: str, sampler: str, status: int) -> None:
        self.image_requests.labels(model, sampler, str(status)).inc()

    # ----- the PNG cache (server.png_cache.CacheObserver) -----
    def png_cache_hits(self, model: str, sampler: str, count: int) -> None:
        self.png_cache_hits_total.labels(model, sampler).inc(count)

    def png_cache_misses(self, model: str, sampler: str, count: int) -> None:
        self.png_cache_misses_total.labels(model, sampler).inc(count)

    def png_cache_evicted(self, model: str, sampler: str) -> None:
        self.png_cache_evictions.labels(model, sampler).inc()

    def png_cache_size(self, entries: int, size_bytes: int) -> None:
        self.png_cache_entries.set(entries)
        self.png_cache_bytes.set(size_bytes)

    def queue_observer(self, model: str, sampler: str) -> QueueMetrics:
        return QueueMetrics(self, model, sampler)

    def set_model_info(
        self, model: str, sampler: str, backend: str, device: str, dtype: str, random_weights: bool
    ) -> None:
        labels = (model, sampler, backend, device, dtype, "random" if random_weights else "real")
        self.forget_model_info(model, sampler)  # a reloaded model may run elsewhere now: one series per model
        self.model_info.labels(*labels).set(1)
        self._model_info_labels[(model, sampler)] = labels
        # Series exported at 0 from the start: rate() cannot see the increase of a series whose first sample is
        # already non-zero, so a first burst of 503s would otherwise never reach the dashboard's error panel.
        for status in PREINITIALISED_STATUSES:
            self.requests.labels(model, sampler, status)
        self.in_flight.labels(model, sampler)
        for series in (self.png_cache_hits_total, self.png_cache_misses_total, self.png_cache_evictions):
            series.labels(model, sampler)

    def job_submitted(self, model: str, sampler: str) -> None:
        self.jobs_submitted.labels(model, sampler).inc()

    def job_finished(self, model: str, sampler: str, state: str) -> None:
        self.jobs_finished.labels(model, sampler, state).inc()

    def job_rejected(self) -> None:
        self.jobs_rejected.inc()

    def job_evicted(self, reason: str) -> None:
        self.jobs_evicted.labels(reason).inc()

    def set_jobs(self, counts: dict[str, int], result_bytes: int) -> None:
        for state, count in counts.items():
            self.jobs_held.labels(state).set(count)
        self.job_result_bytes.set(result_bytes)

    def forget_model_info(self, model: str, sampler: str) -> None:
        """A model left the registry (hot reload): it no longer counts as served."""
        labels = self._model_info_labels.pop((model, sampler), None)
        if labels is not None:
            self.model_info.remove(*labels)

    def registry_reload(self, result: str) -> None:
        self.reloads.labels(result).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class QueueMetrics:
    """One model's batch-queue events (`server.batching.BatchObserver`) as its labelled series."""

    def __init__(self, metrics: ServerMetrics, model: str, sampler: str) -> None:
        self._inference = metrics.batch_inference.labels(model, sampler)
        self._batch_size = metrics.batch_size.labels(model, sampler)
        self._images = metrics.images_generated.labels(model, sampler)
        self._queue_wait = metrics.queue_wait.labels(model, sampler)
        self._queued = metrics.queued_images.labels(model, sampler)

    def batch_done(self, units: int, seconds: float) -> None:
        self._inference.observe(seconds)
        self._batch_size.observe(units)
        self._images.inc(units)

    def queue_wait(self, seconds: float) -> None:
        self._queue_wait.observe(seconds)

    def queued(self, units: int) -> None:
        self._queued.set(units)


def snapshot(metrics: ServerMetrics) -> Snapshot:
    """This process's series now, to be exported by another process (`render_replicas`)."""
    return list(metrics.registry.collect())


class _ReplicaSeries(Collector):
    def __init__(self, snapshots: Mapping[str, Snapshot]) -> None:
        self.snapshots = snapshots

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for replica, families in sorted(self.snapshots.items()):
            for family in families:
                target = merged.get(family.name)
                if target is None:
                    target = Metric(family.name, family.documentation, family.type, family.unit)
                    merged[family.name] = target
                for sample in family.samples:
                    target.samples.append(sample._replace(labels={REPLICA_LABEL: replica, **sample.labels}))
        yield from merged.values()


def render_replicas(snapshots: Mapping[str, Snapshot]) -> bytes:
    """One Prometheus page of several processes' series, each sample labelled `replica="<its process>"`:
    the same names as one server's page, so dashboards that sum by (model, sampler) add the replicas up."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ReplicaSeries(snapshots))
    return generate_latest(registry)
