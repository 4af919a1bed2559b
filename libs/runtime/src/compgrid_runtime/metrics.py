"""Prometheus metrics shared by every service process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter(
    "compgrid_messages_total",
    "Messages handled by consumers, by outcome: acked, duplicate, retried, dead_lettered, skipped.",
    ["consumer", "outcome"],
)
HANDLER_SECONDS = Histogram(
    "compgrid_handler_seconds", "Time spent handling one message.", ["consumer"]
)
OUTBOX_PUBLISHED = Counter(
    "compgrid_outbox_published_total", "Outbox rows published to JetStream.", ["schema"]
)
OUTBOX_PENDING = Gauge(
    "compgrid_outbox_pending", "Outbox rows seen unpublished at the last relay pass.", ["schema"]
)
IN_FLIGHT = Gauge("compgrid_messages_in_flight", "Messages being handled now.", ["consumer"])
