//! Pre-verified runbooks ("one-click changes"): HTTP calls named in the server's own
//! configuration (fail traffic over to a standby, switch a feature flag off), each with a
//! verification, a dry run that changes nothing, run on start and every
//! `verify_every_secs`, so that whether a runbook would work is known before anyone needs
//! it.
//!
//! - [`RunbookConfig`] (`[[runbooks]]` in the server's TOML) and [`validate`], which refuses
//!   a bad runbook at start-up with a message naming it.
//! - [`suggest`]: pure; the runbooks that address a fault type on a service, for incidents.
//! - [`last_verification`]: a runbook's latest verification result.
//! - The routes (`/api/v1/runbooks...`) and the verifier task ([`verify_periodically`]).
//!
//! Executing a runbook needs `RunbookExecute` and, while `runbook.execute` is under
//! four-eyes (the default; a runbook's `four_eyes` overrides it), a second person's
//! approval: the action's call is made only once that person approves. A runbook whose last
//! verification did not pass is refused unless the request says `force`. Every execution
//! is a run in the control store and an audit entry (`runbook.run`: requester, approver,
//! result). Nothing runs by itself: [`execute_automatically`] refuses every runbook that is
//! not configured `auto_execute = true`.
//!
//! The server calls only the URLs of its configuration and follows no redirect; header
//! values from `env` or `file` are read at call time and never logged, stored or shown.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use steadfast_store::control::{AuditRecord, RunbookRun};
use utoipa::ToSchema;

use crate::api::{append_audit, ApiError, AuditNote, Shared};
use crate::auth::Caller;
use crate::control_api::{needs_approval, request_approval, with_control};
use crate::pipeline::wall_ms;

/// The fault types a runbook can address: the root-cause analysis's vocabulary.
pub const FAULT_TYPES: [&str; 5] = [
    "latency",
    "errors",
    "saturation",
    "overload",
    "dependency_failure",
];
/// Most runbooks in one configuration.
pub const RUNBOOKS_MAX: usize = 256;
/// Longest runbook name (it is a path segment of the API).
pub const NAME_LEN_MAX: usize = 64;
/// Verifications running at once, scheduled and asked for together.
pub const VERIFY_CONCURRENCY_MAX: usize = 4;
/// The longest a runbook's call may take.
pub const TIMEOUT_SECS_MAX: u64 = 300;
/// The shortest period between scheduled verifications (0 turns them off).
pub const VERIFY_EVERY_SECS_MIN: u64 = 10;
/// Most bytes of an answer read; the rest is not waited for.
const RESPONSE_BYTES_MAX: usize = 64 * 1024;
/// Most characters of an answer kept in a run's message.
const ANSWER_CHARS_MAX: usize = 300;
/// How often the verifier looks for a runbook that is due.
const SCHEDULE_TICK_MS: u64 = 1_000;
/// Runs listed when the request does not say.
const RUNS_LIMIT_DEFAULT: usize = 50;
/// Who scheduled verifications are recorded as.
const SCHEDULER: &str = "server";
/// Headers whose value is a credential: never written in the configuration itself.
const SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
];

// ---- configuration --------------------------------------------------------------------

/// One runbook (`[[runbooks]]`): what it fixes, the change, and its dry run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunbookConfig {
    /// Unique; letters, digits, `.`, `_` and `-` (it is a path segment of the API).
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The faults it addresses, from [`FAULT_TYPES`].
    pub fault_types: Vec<String>,
    /// The services it addresses (their names in telemetry and incidents).
    pub services: Vec<String>,
    /// The change.
    pub action: HttpCall,
    /// The dry run: validates the change without making it (a GET of the current state, or
    /// the action's `dry_run` form). Never the action itself.
    pub verify: HttpCall,
    /// Seconds between scheduled verifications; 0: only on start and on request.
    #[serde(default = "verify_every_secs_default")]
    pub verify_every_secs: u64,
    /// A call not answered within this has failed.
    #[serde(default = "timeout_secs_default")]
    pub timeout_secs: u64,
    /// Whether an incident may execute it with no person involved (and no four-eyes).
    /// False unless set: nothing runs automatically otherwise.
    #[serde(default)]
    pub auto_execute: bool,
    /// Four-eyes for this runbook; when absent, whether `approvals.required` lists
    /// `runbook.execute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub four_eyes: Option<bool>,
}

fn verify_every_secs_default() -> u64 {
    3600
}

fn timeout_secs_default() -> u64 {
    10
}

impl RunbookConfig {
    /// A runbook with the default schedule, timeout and approval, executed by people only.
    pub fn new(
        name: &str,
        description: &str,
        fault_types: &[&str],
        services: &[&str],
        action: HttpCall,
        verify: HttpCall,
    ) -> RunbookConfig {
        RunbookConfig {
            name: name.into(),
            description: description.into(),
            fault_types: fault_types.iter().map(|t| t.to_string()).collect(),
            services: services.iter().map(|t| t.to_string()).collect(),
            action,
            verify,
            verify_every_secs: verify_every_secs_default(),
            timeout_secs: timeout_secs_default(),
            auto_execute: false,
            four_eyes: None,
        }
    }
}

/// One HTTP call of a runbook.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpCall {
    /// GET, POST, PUT, PATCH or DELETE.
    pub method: String,
    /// http or https.
    pub url: String,
    /// Header values: text, `{ env = "VAR" }` or `{ file = "PATH" }` (credentials must
    /// use one of the last two).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, HeaderSource>,
    /// Sent as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// A file holding a bearer token (read at each call, never logged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The answer that means success; any 2xx when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
}

impl HttpCall {
    pub fn new(method: &str, url: String) -> HttpCall {
        HttpCall {
            method: method.into(),
            url,
            headers: BTreeMap::new(),
            body: None,
            token_file: None,
            expect_status: None,
        }
    }
}

/// Where a header's value comes from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum HeaderSource {
    Text(String),
    Env(FromEnv),
    File(FromFile),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FromEnv {
    pub env: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FromFile {
    pub file: PathBuf,
}

/// Checks the runbooks at start-up; the error names the runbook and what is wrong with it.
pub fn validate(runbooks: &[RunbookConfig]) -> anyhow::Result<()> {
    if runbooks.len() > RUNBOOKS_MAX {
        anyhow::bail!(
            "runbooks: {} configured, at most {RUNBOOKS_MAX}",
            runbooks.len()
        );
    }
    let mut names = BTreeSet::new();
    for rb in runbooks {
        let name_ok = !rb.name.is_empty()
            && rb.name.len() <= NAME_LEN_MAX
            && rb
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !name_ok {
            anyhow::bail!(
                "runbooks: {:?} is not a runbook name (1 to {NAME_LEN_MAX} letters, digits, `.`, `_` and `-`)",
                rb.name
            );
        }
        if !names.insert(rb.name.as_str()) {
            anyhow::bail!("runbooks: {:?} is named twice", rb.name);
        }
        let bad = |what: String| anyhow::anyhow!("runbooks {:?}: {what}", rb.name);
        if rb.fault_types.is_empty() {
            return Err(bad(format!(
                "fault_types is empty; name the faults it addresses ({})",
                FAULT_TYPES.join(", ")
            )));
        }
        if let Some(t) = rb
            .fault_types
            .iter()
            .find(|t| !FAULT_TYPES.contains(&t.as_str()))
        {
            return Err(bad(format!(
                "unknown fault type {t:?} (one of: {})",
                FAULT_TYPES.join(", ")
            )));
        }
        if rb.services.is_empty() || rb.services.iter().any(|s| s.trim().is_empty()) {
            return Err(bad("services must name the services it addresses".into()));
        }
        if rb.timeout_secs == 0 || rb.timeout_secs > TIMEOUT_SECS_MAX {
            return Err(bad(format!(
                "timeout_secs is {}: 1 to {TIMEOUT_SECS_MAX}",
                rb.timeout_secs
            )));
        }
        if rb.verify_every_secs != 0 && rb.verify_every_secs < VERIFY_EVERY_SECS_MIN {
            return Err(bad(format!(
                "verify_every_secs is {}: at least {VERIFY_EVERY_SECS_MIN}, or 0 for no schedule",
                rb.verify_every_secs
            )));
        }
        if rb.auto_execute && rb.four_eyes == Some(true) {
            return Err(bad(
                "auto_execute runs it with no person involved, so it cannot also need four_eyes"
                    .into(),
            ));
        }
        validate_call(&rb.action).map_err(|e| bad(format!("action: {e}")))?;
        validate_call(&rb.verify).map_err(|e| bad(format!("verify: {e}")))?;
        let same = |a: &HttpCall, b: &HttpCall| {
            a.method.eq_ignore_ascii_case(&b.method) && a.url == b.url && a.body == b.body
        };
        if same(&rb.action, &rb.verify) {
            return Err(bad(
                "verify is the action itself; a verification must change nothing (a GET of the state, or the action's dry-run form)".into(),
            ));
        }
    }
    Ok(())
}

fn validate_call(c: &HttpCall) -> Result<(), String> {
    let method = c.method.to_ascii_uppercase();
    if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
        return Err(format!(
            "method {:?}: GET, POST, PUT, PATCH or DELETE",
            c.method
        ));
    }
    let url = reqwest::Url::parse(&c.url).map_err(|e| format!("url: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("url must be http or https, with a host".into());
    }
    if method == "GET" && c.body.is_some() {
        return Err("a GET sends no body".into());
    }
    if c.expect_status.is_some_and(|s| !(100..=599).contains(&s)) {
        return Err("expect_status must be an HTTP status, 100 to 599".into());
    }
    for (name, source) in &c.headers {
        axum::http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{name:?} is not a header name"))?;
        let secret = SECRET_HEADERS.contains(&name.to_ascii_lowercase().as_str());
        match source {
            HeaderSource::Text(_) if secret => {
                return Err(format!(
                    "header {name}: a credential takes its value from {{ env = \"VAR\" }} or {{ file = \"PATH\" }}, never from the configuration's text"
                ))
            }
            HeaderSource::Text(v) => {
                axum::http::HeaderValue::from_str(v)
                    .map_err(|_| format!("header {name}: its value is not a header value"))?;
            }
            HeaderSource::Env(e) => {
                if std::env::var_os(&e.env).is_none() {
                    return Err(format!(
                        "header {name}: environment variable {} is not set",
                        e.env
                    ));
                }
            }
            HeaderSource::File(f) => {
                if !f.file.is_file() {
                    return Err(format!(
                        "header {name}: {} is not a readable file",
                        f.file.display()
                    ));
                }
            }
        }
        if name.eq_ignore_ascii_case("authorization") && c.token_file.is_some() {
            return Err("token_file and an Authorization header are both given".into());
        }
    }
    if let Some(f) = &c.token_file {
        if !f.is_file() {
            return Err(format!("token_file {} is not a readable file", f.display()));
        }
    }
    Ok(())
}

// ---- the pure parts -------------------------------------------------------------------

/// The runbooks that address `fault_type` on `service`, in configuration order (the
/// operator's order of preference). The fault type is read loosely (`dependency failure`,
/// `Dependency-Failure` and `dependency_failure` are one), the service exactly.
pub fn suggest<'a>(
    runbooks: &'a [RunbookConfig],
    service: &str,
    fault_type: &str,
) -> Vec<&'a RunbookConfig> {
    let fault: String = fault_type
        .trim()
        .chars()
        .map(|c| match c {
            ' ' | '-' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    runbooks
        .iter()
        .filter(|rb| rb.services.iter().any(|s| s == service) && rb.fault_types.contains(&fault))
        .collect()
}

/// Whether a runbook may be executed given its last verification: it must have passed,
/// unless the execution is forced. The refusal says why and what to do.
pub fn readiness(name: &str, last: Option<&RunbookRun>, force: bool) -> Result<(), String> {
    if force {
        return Ok(());
    }
    match last {
        Some(v) if v.ok() => Ok(()),
        Some(v) => Err(format!(
            "runbook {name}'s last verification ({}) did not pass: {}; verify it again, or execute with force",
            v.outcome, v.message
        )),
        None => Err(format!(
            "runbook {name} has not been verified yet; verify it first, or execute with force"
        )),
    }
}

/// Why an incident may not run a runbook with no person involved, if it may not.
pub fn automatic_refusal(rb: &RunbookConfig, last: Option<&RunbookRun>) -> Option<String> {
    if !rb.auto_execute {
        return Some(format!(
            "runbook {} is not configured with auto_execute = true; a person executes it",
            rb.name
        ));
    }
    // An automatic run is never forced.
    readiness(&rb.name, last, false).err()
}

/// The URL as shown to readers: no credentials, no query (either may hold a secret).
fn shown_url(url: &str) -> String {
    let Ok(mut u) = reqwest::Url::parse(url) else {
        return String::new();
    };
    let had_query = u.query().is_some();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    let mut text = u.to_string();
    if had_query {
        text.push_str("?…");
    }
    text
}

// ---- state ----------------------------------------------------------------------------

/// The server's runbook state besides the store: the verification slots and the runbooks
/// being executed now (one execution of a runbook at a time).
pub struct Runbooks {
    verify_slots: tokio::sync::Semaphore,
    executing: Mutex<BTreeSet<String>>,
}

impl Default for Runbooks {
    fn default() -> Runbooks {
        Runbooks {
            verify_slots: tokio::sync::Semaphore::new(VERIFY_CONCURRENCY_MAX),
            executing: Mutex::new(BTreeSet::new()),
        }
    }
}

/// A runbook's execution slot, given back when dropped (also on error or cancellation).
struct Executing<'a> {
    set: &'a Mutex<BTreeSet<String>>,
    name: String,
}

impl Drop for Executing<'_> {
    fn drop(&mut self) {
        self.set.lock().expect("runbooks lock").remove(&self.name);
    }
}

fn find<'a>(s: &'a Shared, name: &str) -> Result<&'a RunbookConfig, ApiError> {
    s.cfg
        .runbooks
        .iter()
        .find(|rb| rb.name == name)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("runbook {name:?} is not configured"),
            )
        })
}

/// Whether executing `rb` needs a second person.
fn four_eyes(s: &Shared, rb: &RunbookConfig) -> bool {
    rb.four_eyes
        .unwrap_or_else(|| needs_approval(s, "runbook.execute"))
}

// ---- calls ----------------------------------------------------------------------------

struct Outcome {
    ok: bool,
    status: Option<u16>,
    duration_ms: u64,
    message: String,
}

fn header_value(name: &str, source: &HeaderSource) -> Result<String, String> {
    match source {
        HeaderSource::Text(v) => Ok(v.clone()),
        HeaderSource::Env(e) => std::env::var(&e.env)
            .map_err(|_| format!("header {name}: environment variable {} is not set", e.env)),
        HeaderSource::File(f) => std::fs::read_to_string(&f.file)
            .map(|t| t.trim().to_string())
            .map_err(|e| format!("header {name}: {}: {e}", f.file.display())),
    }
}

/// Builds the request; a failure names the header or file, never a value.
fn request(c: &HttpCall, timeout_secs: u64) -> Result<reqwest::RequestBuilder, String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(timeout_secs))
        // Only the configured address is ever called: a redirect is an answer, not a hop.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("the HTTP client could not be made: {e}"))?;
    let method = reqwest::Method::from_bytes(c.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("method {:?}", c.method))?;
    let mut req = http.request(method, &c.url);
    for (name, source) in &c.headers {
        let value = axum::http::HeaderValue::from_str(&header_value(name, source)?)
            .map_err(|_| format!("header {name}: its value is not a header value"))?;
        req = req.header(name.as_str(), value);
    }
    if let Some(f) = &c.token_file {
        let token =
            std::fs::read_to_string(f).map_err(|e| format!("token_file {}: {e}", f.display()))?;
        req = req.bearer_auth(token.trim());
    }
    if let Some(b) = &c.body {
        req = req.json(b);
    }
    Ok(req)
}

fn describe(e: reqwest::Error, timeout_secs: u64) -> String {
    if e.is_timeout() {
        return format!("no answer within {timeout_secs} s");
    }
    // The URL is left out: its query may hold a secret.
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text += &format!(": {s}");
        source = s.source();
    }
    text
}

/// Makes one call and says how it went; never fails.
async fn call(c: &HttpCall, timeout_secs: u64) -> Outcome {
    let started = Instant::now();
    let elapsed = |started: Instant| started.elapsed().as_millis() as u64;
    let req = match request(c, timeout_secs) {
        Ok(r) => r,
        Err(message) => {
            return Outcome {
                ok: false,
                status: None,
                duration_ms: 0,
                message: format!("not called: {message}"),
            }
        }
    };
    let mut resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            return Outcome {
                ok: false,
                status: None,
                duration_ms: elapsed(started),
                message: describe(e, timeout_secs),
            }
        }
    };
    let status = resp.status();
    let mut body = Vec::new();
    while body.len() < RESPONSE_BYTES_MAX {
        match resp.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    let duration_ms = elapsed(started);
    let answer: String = String::from_utf8_lossy(&body)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(ANSWER_CHARS_MAX)
        .collect();
    let ok = match c.expect_status {
        Some(want) => status.as_u16() == want,
        None => status.is_success(),
    };
    let mut message = match c.expect_status {
        Some(want) if !ok => format!("expected {want}, got {status}"),
        _ => status.to_string(),
    };
    if !answer.is_empty() {
        message += &format!(": {answer}");
    }
    Outcome {
        ok,
        status: Some(status.as_u16()),
        duration_ms,
        message,
    }
}

/// Records a run's start, makes the call, records how it ended.
async fn run(
    s: &Shared,
    rb: &RunbookConfig,
    mut row: RunbookRun,
    c: &HttpCall,
) -> Result<RunbookRun, ApiError> {
    row.started_at = wall_ms();
    row.outcome = "running".into();
    let stored = row.clone();
    let id = with_control(s, move |st| st.start_runbook_run(&stored)).await?;
    let o = call(c, rb.timeout_secs).await;
    let outcome = if o.ok { "ok" } else { "failed" };
    with_control(s, move |st| {
        st.finish_runbook_run(id, outcome, o.duration_ms, o.status, &o.message)
    })
    .await
}

fn blank_run(rb: &RunbookConfig, kind: &str, by: &str) -> RunbookRun {
    RunbookRun {
        id: 0,
        runbook: rb.name.clone(),
        kind: kind.into(),
        started_at: 0,
        outcome: String::new(),
        duration_ms: None,
        status: None,
        message: String::new(),
        requested_by: by.into(),
        approved_by: None,
        approval: None,
        reason: None,
        forced: false,
    }
}

/// Runs a runbook's verification (its dry run) now and stores the result.
async fn verify(s: &Shared, rb: &RunbookConfig, by: &str) -> Result<RunbookRun, ApiError> {
    let _slot = s
        .runbooks
        .verify_slots
        .acquire()
        .await
        .map_err(|e| ApiError::internal("the verification slots are closed", e))?;
    run(s, rb, blank_run(rb, "verify", by), &rb.verify).await
}

/// Who executes a runbook, and on whose say.
struct Execution {
    by: String,
    approver: Option<String>,
    approval: Option<u64>,
    reason: String,
    force: bool,
    /// Where the request came from, for the audit entry.
    source: String,
}

/// Executes a runbook's action once it may run: checks its last verification (unless
/// forced), makes the call, records the run and its audit entry (`runbook.run`).
async fn execute(s: &Shared, rb: &RunbookConfig, e: Execution) -> Result<RunbookRun, ApiError> {
    let _slot = {
        let mut set = s.runbooks.executing.lock().expect("runbooks lock");
        if !set.insert(rb.name.clone()) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "runbook_running",
                format!("runbook {} is being executed already", rb.name),
            ));
        }
        Executing {
            set: &s.runbooks.executing,
            name: rb.name.clone(),
        }
    };
    let last = last_verification(s, &rb.name).await;
    readiness(&rb.name, last.as_ref(), e.force)
        .map_err(|why| ApiError::new(StatusCode::CONFLICT, "not_verified", why))?;
    let mut row = blank_run(rb, "execute", &e.by);
    row.approved_by = e.approver.clone();
    row.approval = e.approval;
    row.reason = Some(e.reason.clone());
    row.forced = e.force;
    let done = run(s, rb, row, &rb.action).await?;
    append_audit(
        s,
        AuditRecord {
            at: wall_ms(),
            actor: e.by,
            action: "runbook.run".into(),
            target: format!("runbook {}", rb.name),
            source: e.source,
            result: done.outcome.clone(),
            approver: e.approver,
            detail: json!({
                "run": done.id, "call": format!("{} {}", rb.action.method.to_ascii_uppercase(), shown_url(&rb.action.url)),
                "status": done.status, "duration_ms": done.duration_ms, "message": done.message,
                "reason": e.reason, "forced": e.force, "approval": e.approval,
            })
            .to_string(),
        },
    )
    .await?;
    Ok(done)
}

/// A finished execution as an answer: the run, or 502 when its action failed.
fn answer(done: RunbookRun) -> Result<Value, ApiError> {
    if done.ok() {
        return Ok(serde_json::to_value(done).expect("runs serialize"));
    }
    Err(ApiError::new(
        StatusCode::BAD_GATEWAY,
        "runbook_failed",
        format!(
            "runbook {}'s action failed: {} (run {})",
            done.runbook, done.message, done.id
        ),
    ))
}

/// The approved action (`runbook.execute` under four-eyes): executes the runbook named in
/// the approval's parameters.
pub(crate) async fn execute_approved(
    s: &Shared,
    params: &Value,
    by: &str,
    approver: Option<&str>,
    approval: Option<u64>,
    reason: &str,
) -> Result<Value, ApiError> {
    let name = params["runbook"]
        .as_str()
        .ok_or_else(|| ApiError::internal("an approval names no runbook", params.to_string()))?;
    let rb = find(s, name).map_err(|_| {
        ApiError::new(
            StatusCode::CONFLICT,
            "not_configured",
            format!("runbook {name:?} is no longer configured; nothing was called"),
        )
    })?;
    let done = execute(
        s,
        rb,
        Execution {
            by: by.into(),
            approver: approver.map(String::from),
            approval,
            reason: reason.into(),
            force: params["force"].as_bool().unwrap_or(false),
            source: "local".into(),
        },
    )
    .await?;
    answer(done)
}

/// For incidents: executes a runbook with no person involved, only when it is configured
/// `auto_execute = true` and its last verification passed. Recorded like any execution,
/// on the incident's name.
pub async fn execute_automatically(
    s: &Shared,
    name: &str,
    incident: &str,
) -> Result<RunbookRun, ApiError> {
    let rb = find(s, name)?;
    let last = last_verification(s, name).await;
    if let Some(why) = automatic_refusal(rb, last.as_ref()) {
        return Err(ApiError::new(StatusCode::CONFLICT, "not_automatic", why));
    }
    execute(
        s,
        rb,
        Execution {
            by: format!("incident:{incident}"),
            approver: None,
            approval: None,
            reason: format!("automatic, for incident {incident}"),
            force: false,
            source: "local".into(),
        },
    )
    .await
}

/// A runbook's latest finished verification, if it has one (a store failure is logged and
/// answers none).
pub async fn last_verification(s: &Shared, name: &str) -> Option<RunbookRun> {
    let key = name.to_string();
    match with_control(s, move |c| c.last_runbook_run(&key, "verify")).await {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(runbook = %name, error = ?e, "the last verification could not be read");
            None
        }
    }
}

/// Verifies every runbook on start, then each again every `verify_every_secs`, at most
/// [`VERIFY_CONCURRENCY_MAX`] at a time, until `stop`.
pub async fn verify_periodically(s: Shared, mut stop: tokio::sync::watch::Receiver<bool>) {
    if s.cfg.runbooks.is_empty() {
        return;
    }
    match with_control(&s, |c| c.end_unfinished_runbook_runs()).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            runs = n,
            "runbook runs were cut off by the last stop; their outcome is unknown"
        ),
        Err(e) => tracing::error!(error = ?e, "unfinished runbook runs could not be closed"),
    }
    let start = Instant::now();
    let mut due: Vec<Option<Instant>> = vec![Some(start); s.cfg.runbooks.len()];
    let verifying: Arc<Mutex<BTreeSet<usize>>> = Arc::default();
    // Dropped at the stop: verifications still going are aborted, which changes nothing.
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(SCHEDULE_TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(_) = tasks.join_next() => continue,
            _ = stop.changed() => return,
        }
        let now = Instant::now();
        for (i, rb) in s.cfg.runbooks.iter().enumerate() {
            if due[i].is_none_or(|at| at > now) || !verifying.lock().expect("lock").insert(i) {
                continue;
            }
            due[i] =
                (rb.verify_every_secs > 0).then(|| now + Duration::from_secs(rb.verify_every_secs));
            let (s, set) = (s.clone(), verifying.clone());
            tasks.spawn(async move {
                let _done = Claimed { set, i };
                let rb = &s.cfg.runbooks[i];
                match verify(&s, rb, SCHEDULER).await {
                    Ok(r) if !r.ok() => tracing::warn!(runbook = %rb.name, message = %r.message, "a runbook's verification failed"),
                    Ok(_) => {}
                    Err(e) => tracing::error!(runbook = %rb.name, error = ?e, "a runbook could not be verified"),
                }
            });
        }
    }
}

/// A scheduled verification in flight, forgotten when dropped (finished or aborted).
struct Claimed {
    set: Arc<Mutex<BTreeSet<usize>>>,
    i: usize,
}

impl Drop for Claimed {
    fn drop(&mut self) {
        self.set.lock().expect("lock").remove(&self.i);
    }
}

// ---- routes ---------------------------------------------------------------------------

/// One call as readers see it: header names, never values; the URL without its query.
#[derive(Serialize)]
struct CallView {
    method: String,
    url: String,
    headers: Vec<String>,
    bearer_token: bool,
    body: Option<Value>,
    expect_status: Option<u16>,
}

impl CallView {
    fn of(c: &HttpCall) -> CallView {
        CallView {
            method: c.method.to_ascii_uppercase(),
            url: shown_url(&c.url),
            headers: c.headers.keys().cloned().collect(),
            bearer_token: c.token_file.is_some(),
            body: c.body.clone(),
            expect_status: c.expect_status,
        }
    }
}

#[derive(Serialize)]
struct RunbookView {
    name: String,
    description: String,
    fault_types: Vec<String>,
    services: Vec<String>,
    action: CallView,
    verify: CallView,
    verify_every_secs: u64,
    timeout_secs: u64,
    auto_execute: bool,
    /// Whether executing it needs a second person's approval.
    four_eyes: bool,
    executing: bool,
    last_verification: Option<RunbookRun>,
    last_execution: Option<RunbookRun>,
}

/// The configured runbooks with their last verification and execution.
#[utoipa::path(get, path = "/api/v1/runbooks",
    responses((status = 200, description = "runbooks, in configuration order, with their last verification (when, ok or failed, status, duration, message) and execution")),
    security(("token" = [])))]
pub async fn list(State(s): State<Shared>) -> Result<Json<Vec<Value>>, ApiError> {
    let names: Vec<String> = s.cfg.runbooks.iter().map(|rb| rb.name.clone()).collect();
    let lasts = with_control(&s, move |c| {
        names
            .iter()
            .map(|n| {
                Ok((
                    c.last_runbook_run(n, "verify")?,
                    c.last_runbook_run(n, "execute")?,
                ))
            })
            .collect::<Result<Vec<_>, steadfast_store::ControlError>>()
    })
    .await?;
    let executing = s.runbooks.executing.lock().expect("runbooks lock").clone();
    let views = s
        .cfg
        .runbooks
        .iter()
        .zip(lasts)
        .map(|(rb, (v, x))| {
            serde_json::to_value(RunbookView {
                name: rb.name.clone(),
                description: rb.description.clone(),
                fault_types: rb.fault_types.clone(),
                services: rb.services.clone(),
                action: CallView::of(&rb.action),
                verify: CallView::of(&rb.verify),
                verify_every_secs: rb.verify_every_secs,
                timeout_secs: rb.timeout_secs,
                auto_execute: rb.auto_execute,
                four_eyes: four_eyes(&s, rb),
                executing: executing.contains(&rb.name),
                last_verification: v,
                last_execution: x,
            })
            .expect("runbook views serialize")
        })
        .collect();
    Ok(Json(views))
}

/// Runs a runbook's verification (its dry run) now; answers the result, passed or not.
#[utoipa::path(post, path = "/api/v1/runbooks/{name}/verify", params(("name" = String, Path)),
    responses((status = 200, description = "the verification run; `outcome` is ok or failed"), (status = 404, body = crate::api::ErrorBody)),
    security(("token" = [])))]
pub async fn verify_now(
    State(s): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let rb = find(&s, &name)?;
    let done = verify(&s, rb, &caller.subject).await?;
    Ok(AuditNote {
        action: Some("runbook.verify".into()),
        target: Some(format!("runbook {name}")),
        detail: json!({ "run": done.id, "outcome": done.outcome, "status": done.status, "message": done.message }),
        approver: None,
    }
    .attach(Json(done).into_response()))
}

/// An execution request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    /// Why; recorded with the run and in the audit log.
    pub reason: String,
    /// Execute although the last verification did not pass (or there is none).
    #[serde(default)]
    pub force: bool,
}

/// Executes a runbook's action. Under four-eyes (the default) this records a request that
/// a second person approves, and the action's call is made only then; otherwise it runs at
/// once. Refused while the last verification has not passed, unless `force`.
#[utoipa::path(post, path = "/api/v1/runbooks/{name}/execute", params(("name" = String, Path)), request_body = ExecuteRequest,
    responses((status = 200, description = "executed: the run"), (status = 202, description = "approval requested"),
        (status = 400, body = crate::api::ErrorBody), (status = 404, body = crate::api::ErrorBody),
        (status = 409, body = crate::api::ErrorBody, description = "not verified, or being executed already"),
        (status = 502, body = crate::api::ErrorBody, description = "the action's call failed; the run is recorded")),
    security(("token" = [])))]
pub async fn execute_now(
    State(s): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
    b: Result<Json<ExecuteRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let rb = find(&s, &name)?;
    let Json(req) =
        b.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text()))?;
    if req.reason.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            "`reason` must say why",
        ));
    }
    // Refused before anyone is asked to approve; checked again when it runs.
    let last = last_verification(&s, &name).await;
    readiness(&name, last.as_ref(), req.force)
        .map_err(|why| ApiError::new(StatusCode::CONFLICT, "not_verified", why))?;
    if four_eyes(&s, rb) {
        return request_approval(
            &s,
            &caller,
            "runbook.execute",
            &format!("runbook {name}"),
            json!({ "runbook": name, "force": req.force }),
            req.reason,
        )
        .await;
    }
    let done = execute(
        &s,
        rb,
        Execution {
            by: caller.subject.clone(),
            approver: None,
            approval: None,
            reason: req.reason.clone(),
            force: req.force,
            source: caller.source.clone(),
        },
    )
    .await?;
    let note = AuditNote {
        action: Some("runbook.execute".into()),
        target: Some(format!("runbook {name}")),
        detail: json!({ "reason": req.reason, "force": req.force, "run": done.id, "outcome": done.outcome }),
        approver: None,
    };
    let resp = match answer(done) {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    };
    Ok(note.attach(resp))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    /// `execute` (default) or `verify`.
    kind: Option<String>,
    /// At most this many, newest first (default 50).
    limit: Option<usize>,
}

/// A runbook's executions (or, with `kind=verify`, its verifications), newest first.
#[utoipa::path(get, path = "/api/v1/runbooks/{name}/runs", params(("name" = String, Path), RunsQuery),
    responses((status = 200, description = "runs: who, when, approver, reason, outcome, status, duration, message"), (status = 400, body = crate::api::ErrorBody), (status = 404, body = crate::api::ErrorBody)),
    security(("token" = [])))]
pub async fn runs(
    State(s): State<Shared>,
    Path(name): Path<String>,
    q: Result<Query<RunsQuery>, QueryRejection>,
) -> Result<Json<Vec<RunbookRun>>, ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    find(&s, &name)?;
    let kind = match q.kind.as_deref() {
        None | Some("execute") => "execute",
        Some("verify") => "verify",
        Some(k) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_query",
                format!("unknown kind {k:?} (execute or verify)"),
            ))
        }
    };
    let limit = q.limit.unwrap_or(RUNS_LIMIT_DEFAULT);
    Ok(Json(
        with_control(&s, move |c| c.runbook_runs(&name, kind, limit)).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rb(name: &str, faults: &[&str], services: &[&str]) -> RunbookConfig {
        RunbookConfig::new(
            name,
            "",
            faults,
            services,
            HttpCall::new("POST", "http://127.0.0.1:9/admin/route".into()),
            HttpCall::new("GET", "http://127.0.0.1:9/admin/route".into()),
        )
    }

    #[test]
    fn suggestions_match_service_and_fault_type_in_configuration_order() {
        let books = [
            rb("failover", &["latency", "errors"], &["payment-core"]),
            rb("flags", &["overload"], &["notification", "payment-core"]),
            rb("shed", &["latency"], &["payment-core", "gateway"]),
            rb("standby-db", &["dependency_failure"], &["billing"]),
        ];
        let names = |service, fault| -> Vec<&str> {
            suggest(&books, service, fault)
                .iter()
                .map(|r| r.name.as_str())
                .collect()
        };
        assert_eq!(names("payment-core", "latency"), ["failover", "shed"]);
        assert_eq!(names("payment-core", "overload"), ["flags"]);
        assert_eq!(names("gateway", "latency"), ["shed"]);
        assert_eq!(names("payment-core", "Latency"), ["failover", "shed"]);
        assert!(names("gateway", "errors").is_empty());
        assert!(names("billing", "latency").is_empty());
        for spelling in [
            "dependency_failure",
            "dependency failure",
            "Dependency-Failure",
        ] {
            assert_eq!(names("billing", spelling), ["standby-db"], "{spelling}");
        }
    }

    fn run_with(outcome: &str) -> RunbookRun {
        let mut r = blank_run(
            &rb("failover", &["errors"], &["payment-core"]),
            "verify",
            "x",
        );
        r.outcome = outcome.into();
        r.message = "503 Service Unavailable".into();
        r
    }

    #[test]
    fn only_a_passed_verification_lets_a_runbook_run_unforced() {
        assert!(readiness("failover", Some(&run_with("ok")), false).is_ok());
        let failed = readiness("failover", Some(&run_with("failed")), false).unwrap_err();
        assert!(failed.contains("did not pass: 503"), "{failed}");
        assert!(readiness("failover", Some(&run_with("unknown")), false).is_err());
        let never = readiness("failover", None, false).unwrap_err();
        assert!(never.contains("not been verified"), "{never}");
        assert!(readiness("failover", None, true).is_ok());
    }

    #[test]
    fn nothing_runs_automatically_unless_configured_and_verified() {
        let mut book = rb("failover", &["errors"], &["payment-core"]);
        let passed = run_with("ok");
        assert!(automatic_refusal(&book, Some(&passed))
            .unwrap()
            .contains("auto_execute"));
        book.auto_execute = true;
        assert_eq!(automatic_refusal(&book, Some(&passed)), None);
        assert!(automatic_refusal(&book, Some(&run_with("failed"))).is_some());
        assert!(automatic_refusal(&book, None).is_some());
    }

    /// One change that makes a good runbook bad.
    type Spoil = dyn Fn(&mut RunbookConfig);

    #[test]
    fn bad_runbooks_are_refused_with_their_name() {
        let good = rb("failover", &["errors"], &["payment-core"]);
        validate(std::slice::from_ref(&good)).unwrap();
        let refused = |change: &Spoil| {
            let mut b = good.clone();
            change(&mut b);
            validate(&[b]).unwrap_err().to_string()
        };
        let cases: [(&Spoil, &str); 14] = [
            (&|b| b.name = "a b".into(), "not a runbook name"),
            (
                &|b| b.fault_types = vec!["slowness".into()],
                "unknown fault type \"slowness\"",
            ),
            (&|b| b.fault_types.clear(), "fault_types is empty"),
            (&|b| b.services.clear(), "services must name"),
            (
                &|b| b.action.url = "ftp://host/x".into(),
                "action: url must be http or https",
            ),
            (&|b| b.verify.url = "not a url".into(), "verify: url:"),
            (&|b| b.action.method = "FETCH".into(), "action: method"),
            (
                &|b| b.verify.body = Some(json!({"a": 1})),
                "a GET sends no body",
            ),
            (&|b| b.timeout_secs = 0, "timeout_secs is 0"),
            (&|b| b.verify_every_secs = 5, "verify_every_secs is 5"),
            (
                &|b| b.verify = b.action.clone(),
                "verify is the action itself",
            ),
            (
                &|b| {
                    b.action.headers.insert(
                        "Authorization".into(),
                        HeaderSource::Text("Bearer x".into()),
                    );
                },
                "a credential takes its value from",
            ),
            (
                &|b| {
                    b.action.headers.insert(
                        "X-Key".into(),
                        HeaderSource::Env(FromEnv {
                            env: "STEADFAST_TEST_SURELY_UNSET".into(),
                        }),
                    );
                },
                "environment variable STEADFAST_TEST_SURELY_UNSET is not set",
            ),
            (
                &|b| {
                    b.auto_execute = true;
                    b.four_eyes = Some(true);
                },
                "cannot also need four_eyes",
            ),
        ];
        for (change, want) in cases {
            let err = refused(change);
            assert!(err.contains(want), "{err} should say {want}");
            assert!(err.starts_with("runbooks"), "{err}");
        }
        let err = validate(&[good.clone(), good]).unwrap_err().to_string();
        assert_eq!(err, "runbooks: \"failover\" is named twice");
    }

    #[test]
    fn urls_are_shown_without_credentials_or_query() {
        assert_eq!(
            shown_url("https://ops:secret@gw.example/admin/route?key=abc"),
            "https://gw.example/admin/route?…"
        );
        assert_eq!(
            shown_url("http://127.0.0.1:7430/admin/flags"),
            "http://127.0.0.1:7430/admin/flags"
        );
    }

    #[test]
    fn the_toml_form_reads_header_sources() {
        let text = r#"
            name = "failover"
            fault_types = ["errors"]
            services = ["payment-core"]
            [action]
            method = "POST"
            url = "http://127.0.0.1:7430/admin/route"
            body = { payment_core = "standby" }
            headers = { "X-Key" = { env = "GW_KEY" }, "X-Trace" = "runbook" }
            [verify]
            method = "POST"
            url = "http://127.0.0.1:7430/admin/route?dry_run=true"
            body = { payment_core = "standby" }
            expect_status = 200
        "#;
        let b: RunbookConfig = toml::from_str(text).unwrap();
        assert_eq!(
            b.action.headers["X-Key"],
            HeaderSource::Env(FromEnv {
                env: "GW_KEY".into()
            })
        );
        assert_eq!(
            b.action.headers["X-Trace"],
            HeaderSource::Text("runbook".into())
        );
        assert_eq!((b.verify_every_secs, b.auto_execute), (3600, false));
        assert!(toml::from_str::<RunbookConfig>(&text.replace("fault_types", "faults")).is_err());
    }
}
