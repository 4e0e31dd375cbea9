"""Prometheus metrics of one server, in a registry of its own (several apps may live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("fsql_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.latency = Histogram("fsql_request_seconds", "Request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("fsql_batch_size", "Requests scored per model call", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.model_latency = Histogram("fsql_model_seconds", "Model call latency", ["model"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.online_errors = Counter("fsql_online_store_errors", "Failed online-store reads", registry=r)
        self.log_dropped = Counter("fsql_log_dropped_rows", "Served-feature log rows dropped (queue full)",
                                   ["model"], registry=r)
        self.log_written = Counter("fsql_log_written_rows", "Served-feature log rows written", ["model"],
                                   registry=r)
        self.reloads = Counter("fsql_plan_reloads", "Serving plans loaded", registry=r)
        self.plan_version = Gauge("fsql_plan_loaded", "1 once a serving plan is loaded", registry=r)

    def export(self) -> bytes:
        return generate_latest(self.registry)
