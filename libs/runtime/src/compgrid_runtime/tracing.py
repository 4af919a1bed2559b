"""OpenTelemetry tracing with W3C ``traceparent`` carried in message headers.

The context current when an event is added to the outbox is stored with the row, published as
message headers, and restored by the consumer, so one request is one trace across services.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

tracer = trace.get_tracer("compgrid")
_provider: TracerProvider | None = None


def configure_tracing(service_name: str, otlp_endpoint: str | None = None) -> TracerProvider:
    """Install the process's tracer provider once; export over OTLP/HTTP when configured."""
    global _provider
    if _provider is None:
        _provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        trace.set_tracer_provider(_provider)
        if otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=f"{otlp_endpoint.rstrip('/')}/v1/traces")
            _provider.add_span_processor(BatchSpanProcessor(exporter))
    return _provider


def add_span_processor(processor: SpanProcessor) -> None:
    """Attach a span processor (tests attach an in-memory exporter)."""
    configure_tracing("compgrid").add_span_processor(processor)


def inject_headers() -> dict[str, str]:
    """Return the W3C trace headers of the current context (empty when none)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def extract_context(headers: Mapping[str, str] | None) -> otel_context.Context:
    """Return the trace context carried by message headers."""
    return propagate.extract(dict(headers or {}))


def current_trace_id() -> str | None:
    """Return the current trace id as 32 hex digits, or None outside a span."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
