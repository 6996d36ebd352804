"""Exports traces, metrics and logs with the OpenTelemetry Python SDK, as an application
would, over OTLP/HTTP or OTLP/gRPC, then flushes and exits.

Usage: otel_export.py http|grpc ENDPOINT TOKEN RUN_ID

The spans carry `enduser.id` (the old semantic-convention name) and `http.method`, so
the server's normalisation is exercised by a real SDK, not only by hand-made payloads.
"""

import logging
import sys

from opentelemetry import metrics, trace
from opentelemetry._logs import set_logger_provider
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

protocol, endpoint, token, run = sys.argv[1:5]
headers = {"authorization": f"Bearer {token}"}

if protocol == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    kw = {"endpoint": endpoint, "insecure": True, "headers": headers}
    spans, points, logs = OTLPSpanExporter(**kw), OTLPMetricExporter(**kw), OTLPLogExporter(**kw)
else:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    spans = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", headers=headers)
    points = OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics", headers=headers)
    logs = OTLPLogExporter(endpoint=f"{endpoint}/v1/logs", headers=headers)

resource = Resource.create({"service.name": f"py-{protocol}-{run}"})

tracer_provider = TracerProvider(resource=resource)
tracer_provider.add_span_processor(BatchSpanProcessor(spans))
trace.set_tracer_provider(tracer_provider)
tracer = trace.get_tracer("steadfast-test")

meter_provider = MeterProvider(
    resource=resource,
    metric_readers=[PeriodicExportingMetricReader(points, export_interval_millis=60_000)],
)
metrics.set_meter_provider(meter_provider)
counter = metrics.get_meter("steadfast-test").create_counter("checkout.count")

logger_provider = LoggerProvider(resource=resource)
logger_provider.add_log_record_processor(BatchLogRecordProcessor(logs))
set_logger_provider(logger_provider)
log = logging.getLogger(f"py-{protocol}")
log.addHandler(LoggingHandler(logger_provider=logger_provider))
log.setLevel(logging.INFO)

for i in range(10):
    with tracer.start_as_current_span(
        "checkout", attributes={"enduser.id": f"py-user-{run}", "http.method": "POST"}
    ):
        with tracer.start_as_current_span("charge card"):
            counter.add(1, {"step": "charge"})
            log.warning("card charged %d", i)

tracer_provider.force_flush()
meter_provider.force_flush()
logger_provider.force_flush()
tracer_provider.shutdown()
meter_provider.shutdown()
logger_provider.shutdown()
