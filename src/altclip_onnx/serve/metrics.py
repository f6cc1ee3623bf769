"""Prometheus metrics of one service (prometheus-client, in a registry of its own: two apps in one
process, as in the tests, do not share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Requests (by route, method and status), their latency, the model's batches (inputs and requests per
    call, seconds per call), the inputs waiting, the requests in flight and the inputs embedded."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("altclip_requests", "HTTP requests answered, by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("altclip_request_seconds", "Time to answer a request, by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("altclip_requests_in_flight", "Requests being answered", registry=r)
        self.batch_size = Histogram("altclip_batch_size", "Inputs per model call, by tower", ["tower"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_jobs = Histogram("altclip_batch_requests", "Request parts coalesced into one model call, by tower",
                                    ["tower"], buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("altclip_batch_seconds", "Time of one model call, by tower", ["tower"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("altclip_queue_depth", "Inputs waiting for the model, by tower", ["tower"],
                                 registry=r)
        self.inputs = Counter("altclip_inputs", "Inputs embedded, by kind (text, image)", ["kind"], registry=r)
        self.model = Gauge("altclip_model_info", "The model served (always 1)",
                           ["variant", "embedding_dim", "visual_precision", "textual_precision"], registry=r)

    # BatchObserver (see batcher.py)
    def batch(self, name: str, size: int, jobs: int, seconds: float) -> None:
        self.batch_size.labels(name).observe(size)
        self.batch_jobs.labels(name).observe(jobs)
        self.batch_seconds.labels(name).observe(seconds)

    def queued(self, name: str, depth: int) -> None:
        self.queue_depth.labels(name).set(depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)
