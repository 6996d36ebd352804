//! The HTTP API. Every route is registered through [`Api::route`], which records it in
//! the route table that the OpenAPI test and access checks walk.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::{header, request::Parts, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use steadfast_model::wire::{parse_body, BodyError, RecordError};
use steadfast_store::control::AuditRecord;
use steadfast_store::{BreakFilter, BreakRow, ControlStore, HistoryRow, Status, StoreError};
use utoipa::{OpenApi, ToSchema};

use crate::auth::{Access, Auth, Caller, Denied, Permission, Scope};
use crate::control_api as ctl;
use crate::drills;
use crate::pipeline::{wall_ms, Pipeline, Refusal};
use crate::tls::ConnInfo;
use crate::view::{mask_row, BreakView};
use crate::Config;

pub struct AppState {
    pub pipeline: Arc<Pipeline>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub cfg: Config,
    pub control: Arc<Mutex<ControlStore>>,
    pub auth: Auth,
    /// Recent real records, to shape drill forgeries from.
    pub samples: crate::drills::Samples,
    /// The running drills' stop signals.
    pub drills: crate::drills::Registry,
    /// The fault-injection proxies and the lossy drills assigned to them.
    pub proxies: crate::lossy::ProxyHub,
    /// The data chain's store (spans, logs, metrics).
    pub chain: crate::chain_api::Chain,
    /// Baselines, alerts and incidents.
    pub insight: crate::insight::Insight,
    /// The service map, kept as spans are stored.
    pub graph: std::sync::Mutex<steadfast_chain::graph::ServiceGraph>,
    /// The users seen in spans, kept as spans are stored.
    pub users: std::sync::Mutex<steadfast_chain::users::UserBook>,
    /// Runbook verification slots and the runbooks being executed.
    pub runbooks: crate::runbooks::Runbooks,
}

pub(crate) type Shared = Arc<AppState>;

/// One registered route: what the OpenAPI document and the access table must cover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteInfo {
    pub method: &'static str,
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
}

impl RouteInfo {
    pub fn is_public(&self) -> bool {
        self.access == Access::Public
    }

    /// Changes state, so every call is written to the audit log. Ingest is the data
    /// plane: its own durable record is the write-ahead log.
    pub fn is_audited(&self) -> bool {
        !matches!(self.method, "get" | "options")
            && !matches!(
                self.access,
                Access::Need(Permission::Ingest | Permission::Beacon | Permission::ProxySync)
            )
    }
}

struct Api {
    router: Router<Shared>,
    routes: Vec<RouteInfo>,
}

impl Api {
    fn route(
        mut self,
        method: &'static str,
        path: &'static str,
        access: Access,
        handler: MethodRouter<Shared>,
    ) -> Api {
        self.routes.push(RouteInfo {
            method,
            path,
            access,
        });
        self.router = self.router.route(path, handler);
        self
    }
}

/// Every route with its handler and access decision; the one place routes are added.
fn api() -> Api {
    use axum::routing::{delete, get, post};
    use Access::{Need, Public};
    use Permission as P;
    Api {
        router: Router::new(),
        routes: Vec::new(),
    }
    .route("get", "/healthz", Public, get(health))
    .route("get", "/metrics", Public, get(metrics))
    .route("get", "/api/v1/openapi.json", Public, get(openapi))
    .route("post", "/api/v1/records", Need(P::Ingest), post(ingest))
    .route("get", "/api/v1/breaks", Need(P::Read), get(list_breaks))
    .route("get", "/api/v1/breaks/{id}", Need(P::Read), get(get_break))
    .route(
        "post",
        "/api/v1/breaks/{id}/status",
        Need(P::BreakWork),
        post(change_status),
    )
    .route(
        "post",
        "/v1/traces",
        Need(P::Ingest),
        post(crate::chain_api::traces),
    )
    .route(
        "post",
        "/v1/metrics",
        Need(P::Ingest),
        post(crate::chain_api::metrics),
    )
    .route(
        "post",
        "/v1/logs",
        Need(P::Ingest),
        post(crate::chain_api::logs),
    )
    .route(
        "post",
        "/v1/nginx",
        Need(P::Ingest),
        post(crate::npm::ingest),
    )
    .route("get", "/rum.js", Public, get(crate::rum_api::agent))
    .route(
        "options",
        "/v1/rum",
        Public,
        axum::routing::options(crate::rum_api::preflight),
    )
    .route(
        "post",
        "/v1/rum",
        Need(P::Beacon),
        post(crate::rum_api::beacon),
    )
    .route(
        "post",
        "/v1/app-events",
        Need(P::Ingest),
        post(crate::rum_api::app_events),
    )
    .route(
        "post",
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        Need(P::Ingest),
        post(crate::otlp_grpc::grpc_traces),
    )
    .route(
        "post",
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        Need(P::Ingest),
        post(crate::otlp_grpc::grpc_metrics),
    )
    .route(
        "post",
        "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
        Need(P::Ingest),
        post(crate::otlp_grpc::grpc_logs),
    )
    .route(
        "post",
        "/api/v1/query",
        Need(P::Read),
        post(crate::chain_api::query),
    )
    .route(
        "get",
        "/api/v1/traces/{trace_id}",
        Need(P::Read),
        get(crate::chain_api::trace),
    )
    .route(
        "get",
        "/api/v1/journeys",
        Need(P::Read),
        get(crate::chain_api::journey),
    )
    .route(
        "get",
        "/api/v1/journeys/users",
        Need(P::Read),
        get(crate::chain_api::journey_users),
    )
    .route(
        "get",
        "/api/v1/service-map",
        Need(P::Read),
        get(crate::chain_api::service_map),
    )
    .route("get", "/api/v1/rules", Need(P::Read), get(rules))
    .route("get", "/api/v1/status", Need(P::Read), get(status))
    .route("post", "/api/v1/sessions", Public, post(ctl::login))
    .route(
        "delete",
        "/api/v1/sessions",
        Need(P::Session),
        delete(ctl::logout),
    )
    .route("get", "/api/v1/whoami", Need(P::Session), get(ctl::whoami))
    .route(
        "get",
        "/api/v1/tokens",
        Need(P::Admin),
        get(ctl::list_tokens),
    )
    .route(
        "post",
        "/api/v1/tokens",
        Need(P::Admin),
        post(ctl::create_token),
    )
    .route(
        "delete",
        "/api/v1/tokens/{id}",
        Need(P::Admin),
        delete(ctl::revoke_token),
    )
    .route("get", "/api/v1/users", Need(P::Admin), get(ctl::list_users))
    .route(
        "post",
        "/api/v1/users",
        Need(P::Admin),
        post(ctl::create_user),
    )
    .route(
        "delete",
        "/api/v1/users/{name}",
        Need(P::Admin),
        delete(ctl::disable_user),
    )
    .route(
        "get",
        "/api/v1/approvals",
        Need(P::Read),
        get(ctl::list_approvals),
    )
    .route(
        "post",
        "/api/v1/approvals/{id}/approve",
        Need(P::Approve),
        post(ctl::approve),
    )
    .route(
        "post",
        "/api/v1/approvals/{id}/reject",
        Need(P::Approve),
        post(ctl::reject),
    )
    .route(
        "get",
        "/api/v1/killswitch",
        Need(P::Read),
        get(ctl::killswitch),
    )
    .route(
        "post",
        "/api/v1/killswitch",
        Need(P::KillSwitchPull),
        post(ctl::pull_killswitch),
    )
    .route(
        "delete",
        "/api/v1/killswitch",
        Need(P::KillSwitchRelease),
        delete(ctl::release_killswitch),
    )
    .route("get", "/api/v1/drills", Need(P::Read), get(drills::list))
    .route(
        "post",
        "/api/v1/drills",
        Need(P::DrillLossless),
        post(drills::create),
    )
    .route(
        "get",
        "/api/v1/drills/{id}",
        Need(P::Read),
        get(drills::get),
    )
    .route(
        "get",
        "/api/v1/drills/{id}/report",
        Need(P::Read),
        get(drills::report),
    )
    .route(
        "post",
        "/api/v1/drills/{id}/start",
        Need(P::DrillLossless),
        post(drills::start),
    )
    .route(
        "post",
        "/api/v1/drills/{id}/stop",
        Need(P::DrillLossless),
        post(drills::stop),
    )
    .route(
        "post",
        "/api/v1/drills/{id}/handover",
        Need(P::Correction),
        post(crate::lossy::handover),
    )
    .route(
        "post",
        "/api/v1/proxies/{name}/sync",
        Need(P::ProxySync),
        post(crate::lossy::sync),
    )
    .route(
        "get",
        "/api/v1/proxies",
        Need(P::Read),
        get(crate::lossy::list_proxies),
    )
    .route(
        "get",
        "/api/v1/drill-schedules",
        Need(P::Read),
        get(drills::list_schedules),
    )
    .route(
        "post",
        "/api/v1/drill-schedules",
        Need(P::DrillLossless),
        post(drills::create_schedule),
    )
    .route(
        "delete",
        "/api/v1/drill-schedules/{id}",
        Need(P::DrillLossless),
        delete(drills::delete_schedule),
    )
    .route(
        "get",
        "/api/v1/drill-blackouts",
        Need(P::Read),
        get(drills::list_blackouts),
    )
    .route(
        "post",
        "/api/v1/drill-blackouts",
        Need(P::DrillLossless),
        post(drills::create_blackout),
    )
    .route(
        "delete",
        "/api/v1/drill-blackouts/{id}",
        Need(P::DrillLossy),
        delete(drills::delete_blackout),
    )
    .route(
        "get",
        "/api/v1/alerts",
        Need(P::Read),
        get(crate::insight::list_alerts),
    )
    .route(
        "get",
        "/api/v1/incidents",
        Need(P::Read),
        get(crate::insight::list_incidents),
    )
    .route(
        "get",
        "/api/v1/incidents/{id}",
        Need(P::Read),
        get(crate::insight::get_incident),
    )
    .route(
        "get",
        "/api/v1/series",
        Need(P::Read),
        get(crate::insight::get_series),
    )
    .route(
        "get",
        "/api/v1/runbooks",
        Need(P::Read),
        get(crate::runbooks::list),
    )
    .route(
        "post",
        "/api/v1/runbooks/{name}/verify",
        Need(P::RunbookExecute),
        post(crate::runbooks::verify_now),
    )
    .route(
        "post",
        "/api/v1/runbooks/{name}/execute",
        Need(P::RunbookExecute),
        post(crate::runbooks::execute_now),
    )
    .route(
        "get",
        "/api/v1/runbooks/{name}/runs",
        Need(P::Read),
        get(crate::runbooks::runs),
    )
    .route("get", "/api/v1/audit", Need(P::Audit), get(ctl::list_audit))
    .route(
        "get",
        "/api/v1/audit/verify",
        Need(P::Audit),
        get(ctl::verify_audit),
    )
}

/// The route table, for checks that walk every route.
pub fn route_table() -> Vec<RouteInfo> {
    api().routes
}

/// Builds the router. Every request to a route passes [`guard`], which applies the route's
/// access decision and writes the audit entry of state-changing calls.
pub fn router(state: Shared) -> Router {
    let body_max = state.cfg.limits.body_bytes_max;
    let api = api();
    let table: HashMap<(&'static str, &'static str), RouteInfo> = api
        .routes
        .iter()
        .map(|r| ((r.method, r.path), r.clone()))
        .collect();
    let guard_state = Arc::new(GuardState {
        app: state.clone(),
        table,
    });
    let secure = state.cfg.tls.cert.is_some();
    let api: Router = api
        .router
        .layer(axum::middleware::from_fn_with_state(guard_state, guard))
        .layer(axum::extract::DefaultBodyLimit::max(body_max))
        .layer(axum::middleware::from_fn(crate::otlp_grpc::as_grpc_status))
        .with_state(state);
    let not_found = || async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") };
    // The dashboard calls the API in-process, through the same guard; it is not itself
    // an API route (its pages answer HTML and authenticate by cookie).
    let ui = crate::dashboard::router(api.clone().fallback(not_found), secure);
    api.merge(ui).fallback(not_found)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Steadfast API", description = "Real-time fund verification: ingest fund records, read and work breaks."),
    paths(health, metrics, openapi, ingest, list_breaks, get_break, change_status, rules, status,
        ctl::login, ctl::logout, ctl::whoami, ctl::list_tokens, ctl::create_token, ctl::revoke_token,
        ctl::list_users, ctl::create_user, ctl::disable_user, ctl::list_approvals, ctl::approve, ctl::reject,
        ctl::killswitch, ctl::pull_killswitch, ctl::release_killswitch, ctl::list_audit, ctl::verify_audit,
        drills::list, drills::create, drills::get, drills::report, drills::start, drills::stop,
        drills::list_schedules, drills::create_schedule, drills::delete_schedule,
        drills::list_blackouts, drills::create_blackout, drills::delete_blackout,
        crate::lossy::handover, crate::lossy::sync, crate::lossy::list_proxies,
        crate::chain_api::traces, crate::chain_api::metrics, crate::chain_api::logs,
        crate::otlp_grpc::grpc_traces, crate::otlp_grpc::grpc_metrics, crate::otlp_grpc::grpc_logs,
        crate::chain_api::journey, crate::chain_api::journey_users, crate::chain_api::service_map, crate::npm::ingest,
        crate::rum_api::agent, crate::rum_api::preflight, crate::rum_api::beacon, crate::rum_api::app_events,
        crate::chain_api::query, crate::chain_api::trace,
        crate::runbooks::list, crate::runbooks::verify_now, crate::runbooks::execute_now, crate::runbooks::runs,
        crate::insight::list_alerts, crate::insight::list_incidents, crate::insight::get_incident,
        crate::insight::get_series),
    components(schemas(IngestAck, ErrorBody, StatusChange, RecordErrorDoc, crate::auth::TokenSpec,
        ctl::Login, ctl::NewUser, ctl::Reason, drills::NewDrill, drills::NewSchedule,
        crate::lossy::Handover, crate::lossy::ProxySeen, crate::chain_api::Query,
        crate::runbooks::ExecuteRequest)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

// ---- errors ------------------------------------------------------------------------

/// The body of every error answer: a stable code, a message for people, and for refused
/// ingest batches the list of bad records.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    #[schema(value_type = Vec<RecordErrorDoc>)]
    pub errors: Vec<RecordError>,
}

/// One refused record.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct RecordErrorDoc {
    index: usize,
    record_id: Option<String>,
    message: String,
}

#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) body: ErrorBody,
    retry_after_secs: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                code: code.into(),
                message: message.into(),
                errors: vec![],
            },
            retry_after_secs: None,
        }
    }

    pub(crate) fn retry(mut self, secs: u64) -> ApiError {
        self.retry_after_secs = Some(secs);
        self
    }

    pub(crate) fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
        // The detail goes to the log, never to the client.
        tracing::error!(error = %e, "{what}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{what}; see the server log"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = ErrorCode(self.body.code.clone());
        let mut resp = (self.status, Json(self.body)).into_response();
        resp.extensions_mut().insert(code);
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound(id) => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("break {id} does not exist"),
            ),
            StoreError::BadTransition { .. } => {
                ApiError::new(StatusCode::CONFLICT, "bad_transition", e.to_string())
            }
            StoreError::Sql(e) => ApiError::internal("the break store failed", e),
        }
    }
}

// ---- access and audit -------------------------------------------------------------

/// The error code of an answer, kept for the audit entry.
#[derive(Clone)]
struct ErrorCode(String);

/// What a handler adds to the audit entry of its call: a more telling action name and
/// target than the route's, the detail (what changed, the reason), and the approver.
#[derive(Clone, Default)]
pub(crate) struct AuditNote {
    pub action: Option<String>,
    pub target: Option<String>,
    pub detail: serde_json::Value,
    pub approver: Option<String>,
}

impl AuditNote {
    pub(crate) fn attach(self, mut resp: Response) -> Response {
        resp.extensions_mut().insert(self);
        resp
    }
}

struct GuardState {
    app: Shared,
    table: HashMap<(&'static str, &'static str), RouteInfo>,
}

impl FromRequestParts<Shared> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &Shared) -> Result<Caller, ApiError> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::internal(
                "a route took a caller without an access decision",
                "no caller",
            )
        })
    }
}

/// The peer address of a request, for public routes that record where they were called from.
#[derive(Clone)]
pub(crate) struct Source(pub String);

impl FromRequestParts<Shared> for Source {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &Shared) -> Result<Source, ApiError> {
        Ok(parts
            .extensions
            .get::<Source>()
            .cloned()
            .unwrap_or(Source("unknown".into())))
    }
}

pub(crate) async fn append_audit(s: &Shared, rec: AuditRecord) -> Result<(), ApiError> {
    let control = s.control.clone();
    tokio::task::spawn_blocking(move || {
        control
            .lock()
            .expect("control store lock")
            .append_audit(rec)
    })
    .await
    .map_err(|e| ApiError::internal("the audit task failed", e))?
    .map(|_| ())
    .map_err(|e| ApiError::internal("the audit log could not be written", e))
}

fn bearer(parts: &axum::http::HeaderMap) -> &str {
    parts
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .trim()
}

/// Applies the route's access decision: public routes pass; others need a live token
/// whose role holds the route's permission, within its rate. State-changing calls are
/// written to the audit log with their result, refusals of authenticated callers too.
async fn guard(State(g): State<Arc<GuardState>>, mut req: Request, next: Next) -> Response {
    let Some(path) = req.extensions().get::<MatchedPath>().cloned() else {
        return next.run(req).await; // no route matched: the fallback answers 404
    };
    // axum answers HEAD with the GET handler, so HEAD is decided as GET.
    let method = match *req.method() {
        axum::http::Method::HEAD => "get".to_string(),
        ref m => m.as_str().to_ascii_lowercase(),
    };
    let Some(route) = g.table.get(&(method.as_str(), path.as_str())).cloned() else {
        // A method the route does not have: never reach a handler without a decision.
        return ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} is not a method of {}", req.method(), path.as_str()),
        )
        .into_response();
    };
    let conn = req
        .extensions()
        .get::<ConnectInfo<ConnInfo>>()
        .map(|c| c.0.clone());
    let source = conn
        .as_ref()
        .map(|c| c.peer.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    let Access::Need(perm) = route.access else {
        req.extensions_mut().insert(Source(source));
        return next.run(req).await;
    };
    let s = &g.app;
    let now = wall_ms();
    let (row, role) = match s.auth.verify(&s.control, bearer(req.headers()), now) {
        Ok(v) => v,
        Err(Denied::Unauthenticated(why)) => {
            s.metrics.auth_denied("unauthorized");
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("{why}; send `Authorization: Bearer <token>` (create one with `steadfast token create`)"),
            )
            .into_response();
        }
        Err(Denied::RateLimited(secs)) => {
            s.metrics.auth_denied("rate_limited");
            return ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "this token is over its request rate",
            )
            .retry(secs)
            .into_response();
        }
    };
    let body_bytes_max = row.body_bytes_max.map_or(s.cfg.limits.body_bytes_max, |b| {
        (b.min(usize::MAX as u64) as usize).min(s.cfg.limits.body_bytes_max)
    });
    if body_bytes_max < s.cfg.limits.body_bytes_max {
        // A token with a smaller limit: the body extractors answer 413 past it.
        req = req.map(|b| axum::body::Body::new(http_body_util::Limited::new(b, body_bytes_max)));
    }
    let caller = Caller {
        subject: row.subject,
        token_id: row.id,
        role,
        scope: Scope {
            links: row.links,
            services: row.services,
        },
        site: row.site,
        body_bytes_max,
        source,
    };
    let action = format!("{} {}", method.to_ascii_uppercase(), path.as_str());
    let target = req.uri().path().to_string();
    let refusal = if !role.permits(perm) {
        Some(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "the {} role may not do this (it needs {perm:?})",
                role.as_str()
            ),
        ))
    } else if perm == Permission::Ingest
        && s.cfg.tls.ingest_requires_client_cert
        && !conn.as_ref().is_some_and(|c| c.client_cert)
    {
        Some(ApiError::new(
            StatusCode::FORBIDDEN,
            "client_cert_required",
            "ingest on this server needs a client certificate signed by its client CA",
        ))
    } else {
        None
    };
    let mut resp = match refusal {
        Some(err) => {
            s.metrics.auth_denied(&err.body.code);
            err.into_response()
        }
        None => {
            req.extensions_mut().insert(caller.clone());
            next.run(req).await
        }
    };
    if route.is_audited() {
        let note = resp
            .extensions_mut()
            .remove::<AuditNote>()
            .unwrap_or_default();
        let code = resp.extensions().get::<ErrorCode>().map(|c| c.0.clone());
        let mut detail = match note.detail {
            serde_json::Value::Object(m) => m,
            serde_json::Value::Null => serde_json::Map::new(),
            other => [("detail".to_string(), other)].into_iter().collect(),
        };
        detail.insert("route".into(), action.clone().into());
        detail.insert("token".into(), caller.token_id.clone().into());
        detail.insert("role".into(), role.as_str().into());
        let rec = AuditRecord {
            at: now,
            actor: caller.subject.clone(),
            action: note.action.unwrap_or(action),
            target: note.target.unwrap_or(target),
            source: caller.source.clone(),
            result: match code {
                Some(c) => format!("{} {c}", resp.status().as_u16()),
                None => resp.status().as_u16().to_string(),
            },
            approver: note.approver,
            detail: serde_json::Value::Object(detail).to_string(),
        };
        if let Err(e) = append_audit(s, rec).await {
            // The action happened but is not on record: say so rather than answer 2xx.
            return e.into_response();
        }
    }
    resp
}

// ---- handlers ----------------------------------------------------------------------

/// Liveness: 200 while the write-ahead log accepts writes.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "healthy"), (status = 503, description = "the write-ahead log failed")))]
async fn health(State(s): State<Shared>) -> Response {
    if s.pipeline.healthy() {
        Json(serde_json::json!({ "status": "ok" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "wal_failed" })),
        )
            .into_response()
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "metrics", content_type = "text/plain")))]
async fn metrics(State(s): State<Shared>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.encode(),
    )
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", responses((status = 200, description = "OpenAPI 3.1 document")))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// Acknowledgement of a durable batch.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct IngestAck {
    /// Records in the batch (retries of known record ids included: they have no effect).
    pub accepted: usize,
    /// The batch's write-ahead-log sequence number.
    pub wal_seq: u64,
}

/// Ingests fund records: a JSON array or NDJSON.
///
/// All or nothing: when any record is invalid, the whole batch is refused with 422 and
/// every bad record is listed; nothing is written. A batch is acknowledged only once it
/// is fsynced in the write-ahead log.
#[utoipa::path(post, path = "/api/v1/records",
    request_body(content = String, description = "JSON array or NDJSON of fund records", content_type = "application/json"),
    responses(
        (status = 200, body = IngestAck, description = "durable"),
        (status = 400, body = ErrorBody, description = "malformed body"),
        (status = 401, body = ErrorBody, description = "no or bad token"),
        (status = 413, body = ErrorBody, description = "body or batch too large"),
        (status = 422, body = ErrorBody, description = "invalid records, listed; nothing written"),
        (status = 429, body = ErrorBody, description = "write queue full; retry after Retry-After"),
        (status = 503, body = ErrorBody, description = "open state at its bound or log unavailable; retry after Retry-After"),
    ),
    security(("token" = [])))]
async fn ingest(
    State(s): State<Shared>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<IngestAck>, ApiError> {
    let refuse = |code: &str| {
        s.metrics
            .batches_refused
            .get_or_create(&crate::metrics::RefusalLabels { code: code.into() })
            .inc()
    };
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            refuse("body_too_large");
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "request body is larger than {} bytes; split the batch",
                    caller.body_bytes_max
                ),
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text())
        }
    })?;
    let parsed = parse_body(&body, s.cfg.limits.batch_records_max).map_err(|e| {
        let (status, code) = match e {
            BodyError::TooManyRecords { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_many_records"),
            BodyError::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed"),
            BodyError::Empty => (StatusCode::BAD_REQUEST, "empty"),
        };
        refuse(code);
        ApiError::new(status, code, e.to_string())
    })?;
    let mut records = Vec::with_capacity(parsed.len());
    let mut errors = Vec::new();
    for r in parsed {
        match r {
            Ok(rec) => records.push(rec),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        refuse("invalid_records");
        let mut err = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_records",
            format!(
                "{} of {} records are invalid; nothing was written",
                errors.len(),
                errors.len() + records.len()
            ),
        );
        err.body.errors = errors;
        return Err(err);
    }
    if !caller.scope.is_unscoped() {
        let outside: Vec<RecordError> = records
            .iter()
            .enumerate()
            .filter(|(_, r)| !caller.scope.allows_source(&r.source, &s.pipeline.rules))
            .map(|(index, r)| RecordError {
                index,
                record_id: Some(r.record_id.to_string()),
                message: format!("source {:?} is outside this token's scope", r.source),
            })
            .collect();
        if !outside.is_empty() {
            refuse("out_of_scope");
            let mut err = ApiError::new(
                StatusCode::FORBIDDEN,
                "out_of_scope",
                format!(
                    "{} of {} records come from sources this token may not write; nothing was written",
                    outside.len(),
                    records.len()
                ),
            );
            err.body.errors = outside;
            return Err(err);
        }
    }
    let n = records.len();
    s.samples.observe(&records);
    let copies = crate::chain_api::fund_rows(&records);
    match s.pipeline.submit(wall_ms(), records).await {
        Ok(seq) => {
            crate::chain_api::copy_funds(&s, copies).await;
            Ok(Json(IngestAck {
                accepted: n,
                wal_seq: seq,
            }))
        }
        Err(Refusal::Capacity) => {
            refuse("capacity");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "capacity",
                "open state is at its bound until pending records are matched or expire",
            )
            .retry(5))
        }
        Err(Refusal::Overloaded) => {
            refuse("overloaded");
            Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                "the write queue is full",
            )
            .retry(1))
        }
        Err(Refusal::Unavailable(why)) => {
            refuse("unavailable");
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why).retry(30))
        }
    }
}

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BreakQuery {
    rule: Option<String>,
    link: Option<String>,
    kind: Option<String>,
    status: Option<String>,
    owner: Option<String>,
    /// Only breaks detected at least this many seconds ago.
    min_age_secs: Option<u64>,
    /// RFC 3339 bounds on emission time.
    since: Option<String>,
    until: Option<String>,
    /// `exclude` (default), `include`, or a drill id.
    drill: Option<String>,
    after_id: Option<u64>,
    /// `oldest` first (default, for paging with `after_id`) or `newest` first.
    order: Option<String>,
    limit: Option<usize>,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

/// A list's `order` parameter: `oldest` first (the default, for cursor paging) or
/// `newest` first.
pub(crate) fn newest_first(order: Option<&str>) -> Result<bool, ApiError> {
    match order {
        None | Some("oldest") => Ok(false),
        Some("newest") => Ok(true),
        Some(o) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("unknown order {o:?} (oldest or newest)"),
        )),
    }
}

fn parse_time(field: &str, v: &Option<String>) -> Result<Option<i64>, ApiError> {
    v.as_ref()
        .map(|t| {
            steadfast_model::parse_millis(t).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_query",
                    format!("`{field}` {t:?} is not RFC 3339"),
                )
            })
        })
        .transpose()
}

/// Lists breaks, oldest first (or `order=newest`), with filters and cursor paging (`after_id`).
#[utoipa::path(get, path = "/api/v1/breaks", params(BreakQuery),
    responses((status = 200, description = "breaks (JSON array, or CSV with format=csv)"), (status = 400, body = ErrorBody)),
    security(("token" = [])))]
async fn list_breaks(
    State(s): State<Shared>,
    caller: Caller,
    query: Result<Query<BreakQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let status = q
        .status
        .as_deref()
        .map(|t| parse_status(t, "bad_query"))
        .transpose()?;
    if let Some(k) = &q.kind {
        if steadfast_verify::BreakKind::parse(k).is_none() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_query",
                format!("unknown break kind {k:?}"),
            ));
        }
    }
    let now = wall_ms();
    let filter = BreakFilter {
        rule: q.rule.clone(),
        link: q.link.clone(),
        rules_in: caller.scope.visible_rules(&s.pipeline.rules),
        kind: q.kind.clone(),
        status,
        owner: q.owner.clone(),
        since: parse_time("since", &q.since)?,
        until: parse_time("until", &q.until)?,
        min_age_ms: q.min_age_secs.map(|a| (now, a as i64 * 1000)),
        detected_since: None,
        drill: match q.drill.as_deref() {
            None | Some("exclude") => None,
            Some("include") => Some(None),
            Some(d) => Some(Some(d.to_string())),
        },
        after_id: q.after_id,
        newest_first: newest_first(q.order.as_deref())?,
        limit: q.limit.unwrap_or(100),
    };
    let rows = with_store(&s, move |st| st.list(&filter)).await?;
    let unmasked = sees_unmasked(&s, &caller);
    let views: Vec<BreakView> = rows
        .into_iter()
        .map(|r| view(&s, r, now, unmasked))
        .collect();
    match q.format.as_deref() {
        None | Some("json") => Ok(Json(views).into_response()),
        Some("csv") => {
            let csv = crate::view::to_csv(&views)
                .map_err(|e| ApiError::internal("CSV export failed", e))?;
            Ok(([(header::CONTENT_TYPE, "text/csv")], csv).into_response())
        }
        Some(f) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("unknown format {f:?} (json or csv)"),
        )),
    }
}

fn parse_status(text: &str, code: &str) -> Result<Status, ApiError> {
    Status::parse(text).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            code,
            format!("unknown status {text:?} (open, acknowledged or resolved)"),
        )
    })
}

/// Whether the caller's role is configured to see account-like values in full.
pub(crate) fn sees_unmasked(s: &AppState, caller: &Caller) -> bool {
    s.cfg
        .masking
        .unmasked_roles
        .iter()
        .any(|r| r == caller.role.as_str())
}

/// A stored break as every output shows it: masked as configured, with age and SLA.
pub(crate) fn view(s: &AppState, row: BreakRow, now: i64, unmasked: bool) -> BreakView {
    let sla = s
        .pipeline
        .rules
        .rules
        .iter()
        .find(|r| r.name == row.brk.rule)
        .and_then(|r| r.sla_secs);
    let row = if s.cfg.masking.enabled && !unmasked {
        mask_row(row, &s.cfg.masking.fields, &s.pipeline.rules)
    } else {
        row
    };
    BreakView::new(row, sla, now)
}

/// Runs `f` on the break store on a blocking thread.
pub(crate) async fn with_store<T: Send + 'static>(
    s: &Shared,
    f: impl FnOnce(&mut steadfast_store::BreakStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = s.pipeline.store.clone();
    tokio::task::spawn_blocking(move || f(&mut store.lock().expect("store lock")))
        .await
        .map_err(|e| ApiError::internal("the break store task failed", e))?
        .map_err(ApiError::from)
}

fn in_scope(s: &AppState, caller: &Caller, rule: &str) -> bool {
    caller
        .scope
        .visible_rules(&s.pipeline.rules)
        .is_none_or(|rules| rules.iter().any(|r| r == rule))
}

#[derive(Serialize)]
struct BreakDetail {
    #[serde(flatten)]
    brk: BreakView,
    history: Vec<HistoryRow>,
}

/// One break with its workflow history.
#[utoipa::path(get, path = "/api/v1/breaks/{id}", params(("id" = u64, Path)),
    responses((status = 200, description = "the break"), (status = 404, body = ErrorBody)),
    security(("token" = [])))]
async fn get_break(
    State(s): State<Shared>,
    caller: Caller,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    let (row, history) = with_store(&s, move |st| Ok((st.get(id)?, st.history(id)?))).await?;
    // A break outside the caller's scope is answered as if it did not exist.
    let row = row
        .filter(|r| in_scope(&s, &caller, &r.brk.rule))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("break {id} does not exist"),
            )
        })?;
    Ok(Json(BreakDetail {
        brk: view(&s, row, wall_ms(), sees_unmasked(&s, &caller)),
        history,
    })
    .into_response())
}

/// A workflow step: a new status and/or owner, and why.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusChange {
    /// `acknowledged` or `resolved`.
    status: Option<String>,
    owner: Option<String>,
    reason: String,
}

/// Moves a break through open → acknowledged → resolved, recording who and why.
#[utoipa::path(post, path = "/api/v1/breaks/{id}/status", params(("id" = u64, Path)), request_body = StatusChange,
    responses((status = 200, description = "the updated break"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("token" = [])))]
async fn change_status(
    State(s): State<Shared>,
    caller: Caller,
    Path(id): Path<u64>,
    body: Result<Json<StatusChange>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(change) =
        body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text()))?;
    let to = change
        .status
        .as_deref()
        .map(|t| parse_status(t, "bad_body"))
        .transpose()?;
    if to.is_none() && change.owner.is_none() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            "give a `status`, an `owner`, or both",
        ));
    }
    if change.reason.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            "`reason` must say why",
        ));
    }
    let now = wall_ms();
    let visible = with_store(&s, move |st| st.get(id)).await?;
    if !visible.is_some_and(|r| in_scope(&s, &caller, &r.brk.rule)) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("break {id} does not exist"),
        ));
    }
    let note = AuditNote {
        action: Some("break.status".into()),
        target: Some(format!("break {id}")),
        detail: serde_json::json!({ "status": change.status, "owner": change.owner, "reason": change.reason }),
        approver: None,
    };
    let actor = caller.subject.clone();
    let row = with_store(&s, move |st| {
        st.transition(
            id,
            to,
            change.owner.as_deref(),
            &actor,
            Some(&change.reason),
            now,
        )
    })
    .await?;
    let unmasked = sees_unmasked(&s, &caller);
    Ok(note.attach(Json(view(&s, row, now, unmasked)).into_response()))
}

/// The rule set in force and its version; a scoped token sees its rules, links and
/// sources only.
#[utoipa::path(get, path = "/api/v1/rules", responses((status = 200, description = "rules")), security(("token" = [])))]
async fn rules(State(s): State<Shared>, caller: Caller) -> Json<steadfast_verify::RuleSet> {
    Json(caller.scope.narrow(&s.pipeline.rules))
}

/// Engine state: open records per rule, the last applied WAL entry, break counts. A
/// scoped token's open records and break counts are those of its rules; the engine-wide
/// figures (rates, records seen, WAL position) name no fund link and are shown to all.
#[utoipa::path(get, path = "/api/v1/status", responses((status = 200, description = "status")), security(("token" = [])))]
async fn status(
    State(s): State<Shared>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (stats, seq) = s.pipeline.stats();
    let visible = caller.scope.visible_rules(&s.pipeline.rules);
    let shown = |rule: &str| visible.as_ref().is_none_or(|v| v.iter().any(|r| r == rule));
    let (by_rule, unresolved) = with_store(&s, |st| {
        Ok((st.counts_by_rule()?, st.unresolved_by_rule()?))
    })
    .await?;
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    for (status, rule, n) in by_rule {
        if shown(&rule) {
            *counts.entry(status).or_default() += n;
        }
    }
    let unresolved: std::collections::BTreeMap<String, u64> =
        unresolved.into_iter().filter(|(r, _)| shown(r)).collect();
    let open: serde_json::Map<String, serde_json::Value> = s
        .pipeline
        .rules
        .rules
        .iter()
        .zip(stats.open_per_rule.iter())
        .filter(|(r, _)| shown(&r.name))
        .map(|(r, n)| (r.name.clone(), (*n).into()))
        .collect();
    let open_total: u64 = open.values().filter_map(|v| v.as_u64()).sum();
    let (p50, p99, max, n) = s.metrics.recent_detection();
    let now = wall_ms();
    let records_per_sec = s
        .metrics
        .records_rate
        .lock()
        .expect("metrics lock")
        .per_sec(now);
    let chain_rows_per_sec = s
        .metrics
        .chain_rows_rate
        .lock()
        .expect("metrics lock")
        .per_sec(now);
    Ok(Json(serde_json::json!({
        "records_per_sec": records_per_sec,
        "chain_rows_per_sec": chain_rows_per_sec,
        "rules_version": s.pipeline.rules.version,
        "open_records_total": open_total,
        "detection_latency_ms": { "breaks": n, "p50": p50, "p99": p99, "max": max },
        "wal_seq_applied": seq,
        "records_seen": stats.records_seen,
        "retries_ignored": stats.retries_ignored,
        "record_ids_evicted": stats.record_ids_evicted,
        "open_records": open,
        "breaks": counts,
        "unresolved_by_rule": unresolved,
    })))
}
