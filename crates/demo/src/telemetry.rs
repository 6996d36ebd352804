//! OpenTelemetry instrumentation of the platform's services: one tracer and one meter
//! provider per service, W3C `traceparent` propagation on every HTTP hop, a server span
//! per request, a client span per call and a database span per query.
//!
//! Export is OTLP over HTTP (protobuf) to `otlp.endpoint`, off by default: with export
//! off, spans are still created (trace ids are the correlation ids of fund records) and
//! then dropped.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::metrics::{Counter, Histogram, MeterProvider as _};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use serde::{Deserialize, Serialize};

/// Where telemetry goes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// Export traces and metrics over OTLP/HTTP.
    pub enabled: bool,
    /// The OTLP/HTTP base URL; `/v1/traces` and `/v1/metrics` are appended.
    pub endpoint: String,
    /// How often metrics are exported.
    pub metrics_interval_secs: u64,
    /// Sent as `authorization: Bearer ...` (an ingest token), never logged.
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
}

impl Default for OtlpConfig {
    fn default() -> OtlpConfig {
        OtlpConfig {
            enabled: false,
            endpoint: "http://127.0.0.1:7420".into(),
            metrics_interval_secs: 10,
            token: None,
        }
    }
}

/// The request context handlers receive: the server span of the request.
#[derive(Clone)]
pub struct Cx(pub Context);

impl Cx {
    /// The W3C trace id of the request, as 32 hex digits.
    pub fn trace_id(&self) -> String {
        self.0.span().span_context().trace_id().to_string()
    }
}

/// One service's instrumentation.
pub struct Telemetry {
    tracer: SdkTracer,
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
    propagator: TraceContextPropagator,
    requests: Counter<u64>,
    request_duration: Histogram<f64>,
    db_duration: Histogram<f64>,
}

impl Telemetry {
    pub fn new(service: &str, otlp: &OtlpConfig) -> anyhow::Result<Telemetry> {
        let resource = Resource::builder()
            .with_service_name(service.to_string())
            .with_attribute(KeyValue::new("service.namespace", "steadfast-demo"))
            .build();
        // With export off nothing would read the spans: they are not recorded, but they
        // still get trace and span ids and propagate, so records keep their trace ids.
        let sampler = if otlp.enabled {
            Sampler::ParentBased(Box::new(Sampler::AlwaysOn))
        } else {
            Sampler::AlwaysOff
        };
        let mut tracer_provider = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_sampler(sampler);
        let mut meter_provider = SdkMeterProvider::builder().with_resource(resource);
        if otlp.enabled {
            use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
            let base = otlp.endpoint.trim_end_matches('/');
            let headers: std::collections::HashMap<String, String> = otlp
                .token
                .iter()
                .map(|t| ("authorization".to_string(), format!("Bearer {t}")))
                .collect();
            let spans = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("{base}/v1/traces"))
                .with_headers(headers.clone())
                .build()?;
            // Spans go out every second (the SDK's default is five), bounded queue of
            // 8 192 spans: past it the SDK drops spans rather than the service slowing.
            let batch = opentelemetry_sdk::trace::BatchSpanProcessor::builder(spans)
                .with_batch_config(
                    opentelemetry_sdk::trace::BatchConfigBuilder::default()
                        .with_max_queue_size(8_192)
                        .with_scheduled_delay(std::time::Duration::from_secs(1))
                        .build(),
                )
                .build();
            tracer_provider = tracer_provider.with_span_processor(batch);
            let metrics = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_endpoint(format!("{base}/v1/metrics"))
                .with_headers(headers)
                .build()?;
            let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(metrics)
                .with_interval(std::time::Duration::from_secs(
                    otlp.metrics_interval_secs.max(1),
                ))
                .build();
            meter_provider = meter_provider.with_reader(reader);
        }
        let tracer_provider = tracer_provider.build();
        let meter_provider = meter_provider.build();
        let tracer = tracer_provider.tracer("steadfast-demo");
        let meter = meter_provider.meter("steadfast-demo");
        Ok(Telemetry {
            tracer,
            tracer_provider,
            propagator: TraceContextPropagator::new(),
            requests: meter
                .u64_counter("http.server.requests")
                .with_description("HTTP requests served")
                .build(),
            request_duration: meter
                .f64_histogram("http.server.request.duration")
                .with_unit("s")
                .build(),
            db_duration: meter
                .f64_histogram("db.client.operation.duration")
                .with_unit("s")
                .build(),
            meter_provider,
        })
    }

    /// Starts a span of `kind` under `parent`.
    pub fn span(
        &self,
        parent: &Context,
        name: String,
        kind: SpanKind,
        attrs: Vec<KeyValue>,
    ) -> Context {
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attrs)
            .start_with_context(&self.tracer, parent);
        parent.with_span(span)
    }

    /// Writes `cx`'s `traceparent` into outgoing headers.
    pub fn inject(&self, cx: &Context, headers: &mut axum::http::HeaderMap) {
        self.propagator
            .inject_context(cx, &mut HeaderInjector(headers));
    }

    /// Runs `f` as a database operation span under `cx` and records its duration.
    pub fn db_span<T>(&self, cx: &Context, statement: &str, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let span_cx = self.span(
            cx,
            format!("sqlite {statement}"),
            SpanKind::Client,
            vec![
                KeyValue::new("db.system.name", "sqlite"),
                KeyValue::new("db.operation.name", statement.to_string()),
            ],
        );
        let out = f();
        span_cx.span().end();
        self.db_duration.record(
            started.elapsed().as_secs_f64(),
            &[KeyValue::new("db.operation.name", statement.to_string())],
        );
        out
    }

    /// Flushes and stops the exporters.
    pub fn shutdown(&self) {
        let _ = self.tracer_provider.shutdown();
        let _ = self.meter_provider.shutdown();
    }
}

/// Axum middleware: the server span of a request, continued from its `traceparent`.
pub async fn server_span(
    State(t): State<std::sync::Arc<Telemetry>>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let parent = t.propagator.extract(&HeaderExtractor(req.headers()));
    let route = req.uri().path().to_string();
    let method = req.method().to_string();
    let cx = t.span(
        &parent,
        format!("{method} {route}"),
        SpanKind::Server,
        vec![
            KeyValue::new("http.request.method", method.clone()),
            KeyValue::new("url.path", route.clone()),
        ],
    );
    req.extensions_mut().insert(Cx(cx.clone()));
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let span = cx.span();
    span.set_attribute(KeyValue::new("http.response.status_code", status as i64));
    if status >= 500 {
        span.set_status(Status::error(format!("HTTP {status}")));
    }
    span.end();
    let attrs = [
        KeyValue::new("http.route", route),
        KeyValue::new("http.response.status_code", status as i64),
    ];
    t.requests.add(1, &attrs);
    t.request_duration
        .record(started.elapsed().as_secs_f64(), &attrs);
    resp
}
