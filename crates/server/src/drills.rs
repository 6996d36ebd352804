//! Drills on the server: the routes that create, start, stop, list and report drills, and
//! the lossless runner, which forges drill-marked records (`steadfast_drill::forge`), feeds
//! them through the same pipeline as real records, and measures what verification found.
//!
//! The runner holds the drill's lease and checks it, with its own clock, before every
//! injection and while it waits for discoveries: a stop, the kill switch, a breached guard
//! or the TTL ends it. Drill breaks never reach webhooks (the outbox skips drill-marked
//! breaks) and are hidden from the default break listing.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use steadfast_drill::lease::{LeaseState, Stop};
use steadfast_drill::report::Observed;
use steadfast_drill::{DrillSpec, Injection, Lease, Mode, Planted, Report};
use steadfast_model::FundRecord;
use steadfast_store::control::DrillRow;
use steadfast_store::BreakFilter;
use utoipa::ToSchema;

use crate::api::{with_store, ApiError, AuditNote, ErrorBody, Shared};
use crate::auth::Caller;
use crate::control_api::with_control;
use crate::pipeline::wall_ms;

/// Record streams (source, kind) whose latest real record is kept to shape forgeries.
const SAMPLE_STREAMS_MAX: usize = 1024;
/// Drills running at once; starting more is refused until one ends.
pub const RUNNING_DRILLS_MAX: usize = 16;
/// Most forged pairs per drill.
pub const PAIRS_MAX: usize = 10_000;
/// How often a running drill looks at its lease, the kill switch and its breaks.
const POLL_MS: u64 = 100;
/// Time allowed past a rule's lateness budget for a fault to be discovered, when the
/// spec sets no `expect.within_ms`.
const DISCOVERY_GRACE_MS: i64 = 2_000;

/// Recent real (not drill-marked) records of each stream, for shaping forgeries. Several
/// per stream, so that a rule side with a filter (`channel = credit`) finds one.
#[derive(Default)]
pub struct Samples {
    recent: Mutex<HashMap<(String, String), std::collections::VecDeque<FundRecord>>>,
}

/// Records kept per stream.
const SAMPLES_PER_STREAM_MAX: usize = 32;
/// Records of one stream taken from one batch: a few clones per batch at most.
const SAMPLES_PER_BATCH_MAX: usize = 4;

impl Samples {
    pub fn observe(&self, records: &[FundRecord]) {
        let mut taken: Vec<((&str, &str), usize)> = Vec::new();
        let mut recent = self.recent.lock().expect("samples lock");
        for r in records.iter().rev().filter(|r| r.drill.is_none()) {
            let stream = (r.source.as_str(), r.kind.as_str());
            let i = match taken.iter().position(|(s, _)| *s == stream) {
                Some(i) => i,
                None if taken.len() < 16 => {
                    taken.push((stream, 0));
                    taken.len() - 1
                }
                None => continue,
            };
            if taken[i].1 >= SAMPLES_PER_BATCH_MAX {
                continue;
            }
            taken[i].1 += 1;
            let key = (r.source.clone(), r.kind.clone());
            if recent.len() >= SAMPLE_STREAMS_MAX && !recent.contains_key(&key) {
                continue;
            }
            let ring = recent.entry(key).or_default();
            if ring.len() >= SAMPLES_PER_STREAM_MAX {
                ring.pop_front();
            }
            ring.push_back(r.clone());
        }
    }

    /// Oldest first within each stream.
    pub fn all(&self) -> Vec<FundRecord> {
        self.recent
            .lock()
            .expect("samples lock")
            .values()
            .flatten()
            .cloned()
            .collect()
    }
}

/// Stop signals of the running drills.
#[derive(Default)]
pub struct Registry {
    pub(crate) running: Mutex<HashMap<String, tokio::sync::watch::Sender<bool>>>,
}

impl Registry {
    /// Tells every running drill to stop (the kill switch).
    pub fn stop_all(&self) {
        for tx in self.running.lock().expect("registry lock").values() {
            let _ = tx.send(true);
        }
    }

    pub(crate) fn stop(&self, id: &str) {
        if let Some(tx) = self.running.lock().expect("registry lock").get(id) {
            let _ = tx.send(true);
        }
    }
}

/// A drill as stored and shown.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Drill {
    pub id: String,
    pub spec: DrillSpec,
    pub pairs: usize,
    pub lease: Lease,
    pub created_by: String,
    pub created_at: i64,
    /// Faults planted on forged pairs (what was, or in a dry run would be, injected).
    pub planted: Vec<Planted>,
    /// Clean control pairs: they must raise nothing.
    pub controls: usize,
    pub injections: Vec<Injection>,
    pub report: Option<Report>,
    pub error: Option<String>,
    /// The drill's breaks resolved when it ended.
    #[serde(default)]
    pub breaks_closed: usize,
    /// Who started it (a lossy drill's correction request goes on this name).
    #[serde(default)]
    pub started_by: Option<String>,
    /// A lossy drill's hits as the proxies reported them, with their discovery and
    /// correction.
    #[serde(default)]
    pub hits: Vec<crate::lossy::HitState>,
    #[serde(default)]
    pub correction: Option<crate::lossy::CorrectionState>,
}

impl Drill {
    pub(crate) fn state(&self) -> String {
        if let (LeaseState::Ended(_), Some(c)) = (self.lease.state, &self.correction) {
            if !c.finished() {
                return "correcting".into();
            }
        }
        match self.lease.state {
            LeaseState::Pending => "pending".into(),
            LeaseState::Running => "running".into(),
            LeaseState::Ended(stop) => match stop {
                Stop::Completed => "completed",
                Stop::Stopped => "stopped",
                Stop::KillSwitch => "killed",
                Stop::GuardBreached => "aborted",
                Stop::Expired => "expired",
                Stop::InjectionFailed => "failed",
            }
            .into(),
        }
    }

    fn row(&self) -> DrillRow {
        DrillRow {
            id: self.id.clone(),
            created_at: self.created_at,
            created_by: self.created_by.clone(),
            state: self.state(),
            body: serde_json::to_value(self).expect("drills serialize"),
        }
    }

    fn view(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("drills serialize");
        v["state"] = self.state().into();
        v
    }

    /// The drill as `caller` may see it: account-like values masked as in breaks
    /// (`[masking]`), unless the caller's role is configured to see them in full.
    pub(crate) fn shown_to(mut self, s: &Shared, caller: &Caller) -> Drill {
        let m = &s.cfg.masking;
        if !m.enabled || crate::api::sees_unmasked(s, caller) {
            return self;
        }
        let rules = &s.pipeline.rules;
        let mut names: Vec<&str> = self.spec.rules.iter().map(String::as_str).collect();
        names.extend(self.spec.expect.rules.iter().map(String::as_str));
        if let Some(link) = &self.spec.link {
            names.extend(
                rules
                    .rules
                    .iter()
                    .filter(|r| r.link.as_deref() == Some(link.as_str()))
                    .map(|r| r.name.as_str()),
            );
        }
        crate::view::mask_drill(
            crate::view::DrillParts {
                planted: &mut self.planted,
                injections: &mut self.injections,
                hits: self.hits.iter_mut().map(|h| &mut h.hit.hit).collect(),
                report: self.report.as_mut(),
            },
            &m.fields,
            rules,
            &names,
        );
        self
    }
}

pub(crate) async fn save(s: &Shared, d: &Drill) -> Result<(), ApiError> {
    let row = d.row();
    with_control(s, move |c| c.put_drill(&row)).await
}

pub(crate) async fn load(s: &Shared, id: &str) -> Result<Drill, ApiError> {
    let key = id.to_string();
    let row = with_control(s, move |c| c.drill(&key))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("drill {id} does not exist"),
            )
        })?;
    serde_json::from_value(row.body)
        .map_err(|e| ApiError::internal("a stored drill is unreadable", e))
}

pub(crate) async fn killswitch_engaged(s: &Shared) -> bool {
    let control = s.control.clone();
    tokio::task::spawn_blocking(move || {
        crate::control_api::killswitch_state(&control.lock().expect("control store lock"))
            .map(|k| k.engaged)
            // Unknown is engaged: a drill never runs on a guess.
            .unwrap_or(true)
    })
    .await
    .unwrap_or(true)
}

/// Ends drills a previous run of the server left running: their injector is gone, so
/// their lease is over.
pub fn end_orphans(control: &mut steadfast_store::ControlStore, now: i64) {
    let Ok(rows) = control.drills(steadfast_store::control::CONTROL_PAGE_MAX) else {
        return;
    };
    for row in rows.into_iter().filter(|r| r.state == "running") {
        if let Ok(mut d) = serde_json::from_value::<Drill>(row.body) {
            d.lease.end(now, Stop::Expired);
            d.error = Some("the server stopped while the drill ran".into());
            let _ = control.put_drill(&d.row());
        }
    }
}

// ---- routes --------------------------------------------------------------------------

/// A drill to create: its spec (TOML or JSON text, or a JSON object) and how many pairs to
/// forge per target rule.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDrill {
    #[schema(value_type = Object)]
    pub spec: Value,
    /// Forged pairs per rule; default: the sum of the faults' `hits_max` (at most 10 000).
    pub pairs: Option<usize>,
}

/// Creates a drill (pending until started).
#[utoipa::path(post, path = "/api/v1/drills", request_body = NewDrill,
    responses((status = 201, description = "created"), (status = 400, body = ErrorBody)), security(("token" = [])))]
pub async fn create(
    State(s): State<Shared>,
    caller: Caller,
    b: Result<Json<NewDrill>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(nd) =
        b.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text()))?;
    let d = new_drill(&s, &spec_text(&nd.spec), nd.pairs, &caller.subject)?;
    may_run(&caller, &d)?;
    save(&s, &d).await?;
    let (id, pairs) = (d.id.clone(), d.pairs);
    Ok(AuditNote {
        action: Some("drill.create".into()),
        target: Some(format!("drill {id}")),
        detail: json!({ "name": d.spec.name, "mode": d.spec.mode, "pairs": pairs, "dry_run": d.spec.dry_run }),
        approver: None,
    }
    .attach((StatusCode::CREATED, Json(d.shown_to(&s, &caller).view())).into_response()))
}

/// Lossy drills tamper with real traffic: they need the drill-admin's permission, not
/// only the lossless one the route asks for.
fn may_run(caller: &Caller, d: &Drill) -> Result<(), ApiError> {
    if d.spec.mode == Mode::Lossy && !caller.role.permits(crate::auth::Permission::DrillLossy) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("the {} role may not run lossy drills", caller.role.as_str()),
        ));
    }
    Ok(())
}

/// A spec as given in a request: TOML or JSON text, or a JSON object.
fn spec_text(spec: &Value) -> String {
    match spec {
        Value::String(t) => t.clone(),
        other => other.to_string(),
    }
}

/// Checks a spec and makes a pending drill of it.
fn new_drill(s: &Shared, text: &str, pairs: Option<usize>, by: &str) -> Result<Drill, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_spec", m);
    let spec = steadfast_drill::parse_spec(text).map_err(|e| bad(e.to_string()))?;
    if spec.guards.error_rate_percent_max.is_some() && spec.mode == Mode::Lossless {
        return Err(bad(
            "guards.error_rate_percent_max watches the requests a proxy carries; a lossless drill carries none (use guards.real_breaks_max)".into(),
        ));
    }
    if let Some(t) = &spec.correction.target {
        if !s.cfg.drills.corrections.iter().any(|c| &c.name == t) {
            return Err(bad(format!(
                "drill spec: correction.target: no correction target {t:?} is configured ([[drills.corrections]])"
            )));
        }
    }
    steadfast_drill::forge::target_rules(&spec, &s.pipeline.rules)
        .map_err(|e| bad(e.to_string()))?;
    let pairs = pairs
        .unwrap_or_else(|| spec.faults.iter().map(|f| f.limits.hits_max as usize).sum())
        .clamp(1, PAIRS_MAX);
    Ok(Drill {
        id: format!(
            "drill-{}",
            crate::auth::mint(crate::auth::TokenKind::Api).id
        ),
        lease: Lease::new(spec.ttl_secs),
        spec,
        pairs,
        created_by: by.into(),
        created_at: wall_ms(),
        planted: vec![],
        controls: 0,
        injections: vec![],
        report: None,
        error: None,
        breaks_closed: 0,
        started_by: None,
        hits: vec![],
        correction: None,
    })
}

/// Drills, newest first.
#[utoipa::path(get, path = "/api/v1/drills", responses((status = 200, description = "drills")), security(("token" = [])))]
pub async fn list(State(s): State<Shared>) -> Result<Json<Vec<Value>>, ApiError> {
    let rows = with_control(&s, |c| c.drills(100)).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| {
                json!({ "id": r.id, "state": r.state, "created_at": r.created_at, "created_by": r.created_by,
                        "name": r.body["spec"]["name"], "mode": r.body["spec"]["mode"],
                        "started_by": r.body["started_by"], "started_at": r.body["lease"]["started_at"],
                        "report": r.body["report"] })
            })
            .collect(),
    ))
}

/// One drill: spec, lease, planted faults, report.
#[utoipa::path(get, path = "/api/v1/drills/{id}", params(("id" = String, Path)),
    responses((status = 200, description = "the drill"), (status = 404, body = ErrorBody)), security(("token" = [])))]
pub async fn get(
    State(s): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(load(&s, &id).await?.shown_to(&s, &caller).view()))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    /// `json` (default) or `markdown`.
    format: Option<String>,
}

/// The drill's report, as JSON or Markdown.
#[utoipa::path(get, path = "/api/v1/drills/{id}/report", params(("id" = String, Path), ReportQuery),
    responses((status = 200, description = "the report"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("token" = [])))]
pub async fn report(
    State(s): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<ReportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let d = load(&s, &id).await?.shown_to(&s, &caller);
    let r = d.report.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "no_report",
            format!("drill {id} is {}; it has no report yet", d.state()),
        )
    })?;
    match q.format.as_deref() {
        None | Some("json") => Ok(Json(r).into_response()),
        Some("markdown") => Ok((
            [(header::CONTENT_TYPE, "text/markdown; charset=utf-8")],
            r.markdown(&d.spec.name),
        )
            .into_response()),
        Some(f) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("unknown format {f:?} (json or markdown)"),
        )),
    }
}

/// Starts a drill: refused while the kill switch is engaged.
#[utoipa::path(post, path = "/api/v1/drills/{id}/start", params(("id" = String, Path)),
    responses((status = 202, description = "running"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("token" = [])))]
pub async fn start(
    State(s): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let d = load(&s, &id).await?;
    may_run(&caller, &d)?;
    if d.spec.mode == Mode::Lossy && crate::control_api::needs_approval(&s, "drill.lossy") {
        if d.lease.state != LeaseState::Pending {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "cannot_start",
                format!("drill {id} is {}", d.state()),
            ));
        }
        return crate::control_api::request_approval(
            &s,
            &caller,
            "drill.lossy",
            &format!("drill {id}"),
            json!({ "drill": id }),
            format!("lossy drill {:?}", d.spec.name),
        )
        .await;
    }
    let d = start_drill(&s, &id, &caller.subject).await?;
    Ok(AuditNote {
        action: Some("drill.start".into()),
        target: Some(format!("drill {id}")),
        ..Default::default()
    }
    .attach((StatusCode::ACCEPTED, Json(d.shown_to(&s, &caller).view())).into_response()))
}

/// Starts a lossy drill a second person approved. A lossy drill has no hits yet when it
/// starts, so its answer carries no value to mask.
pub(crate) async fn start_approved(s: &Shared, id: &str, by: &str) -> Result<Value, ApiError> {
    Ok(start_drill(s, id, by).await?.view())
}

/// Starts a stored drill: refused under the kill switch, past the running bound, or when
/// it is not pending.
async fn start_drill(s: &Shared, id: &str, by: &str) -> Result<Drill, ApiError> {
    let mut d = load(s, id).await?;
    d.started_by = Some(by.into());
    let engaged = killswitch_engaged(s).await;
    let (tx, rx) = tokio::sync::watch::channel(false);
    {
        let mut running = s.drills.running.lock().expect("registry lock");
        if running.len() >= RUNNING_DRILLS_MAX {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_drills",
                format!("{RUNNING_DRILLS_MAX} drills are running; wait for one to end"),
            )
            .retry(10));
        }
        d.lease
            .start(wall_ms(), engaged)
            .map_err(|m| ApiError::new(StatusCode::CONFLICT, "cannot_start", m))?;
        running.insert(id.to_string(), tx);
    }
    save(s, &d).await?;
    match d.spec.mode {
        Mode::Lossless => tokio::spawn(run(s.clone(), d.clone(), rx)),
        Mode::Lossy => tokio::spawn(crate::lossy::run(s.clone(), d.clone(), rx)),
    };
    Ok(d)
}

/// Stops a drill; stopping an ended drill changes nothing.
#[utoipa::path(post, path = "/api/v1/drills/{id}/stop", params(("id" = String, Path)),
    responses((status = 200, description = "stopped (or already ended)"), (status = 404, body = ErrorBody)), security(("token" = [])))]
pub async fn stop(
    State(s): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let mut d = load(&s, &id).await?;
    s.drills.stop(&id);
    if d.lease.state == LeaseState::Pending {
        d.lease.end(wall_ms(), Stop::Stopped);
        save(&s, &d).await?;
    }
    Ok(AuditNote {
        action: Some("drill.stop".into()),
        target: Some(format!("drill {id}")),
        ..Default::default()
    }
    .attach(Json(d.shown_to(&s, &caller).view()).into_response()))
}

// ---- the lossless runner -------------------------------------------------------------

async fn run(s: Shared, mut d: Drill, mut stop: tokio::sync::watch::Receiver<bool>) {
    let id = d.id.clone();
    if let Err(e) = drive(&s, &mut d, &mut stop).await {
        d.error = Some(format!("{e:?}"));
        d.lease.end(wall_ms(), Stop::InjectionFailed);
    }
    if d.lease.state == LeaseState::Running {
        d.lease.end(wall_ms(), Stop::Completed);
    }
    // Measured; now nothing of the drill stays open in the break store.
    match close_drill_breaks(&s, &id).await {
        Ok(n) => d.breaks_closed = n,
        Err(e) => tracing::error!(drill = %id, error = ?e, "a drill's breaks could not be closed"),
    }
    if d.lease.state != LeaseState::Ended(Stop::Completed) {
        sweep_later(&s, &d);
    }
    if let Err(e) = save(&s, &d).await {
        tracing::error!(drill = %id, error = ?e, "a drill's result could not be stored");
    }
    s.drills.running.lock().expect("registry lock").remove(&id);
    audit_end(&s, &d).await;
}

/// Every drill's end is in the audit log with how it ended: completed, stopped, killed,
/// aborted by a guard (with the breach), expired or failed.
pub(crate) async fn audit_end(s: &Shared, d: &Drill) {
    let state = d.state();
    let action = if state == "aborted" {
        "drill.abort"
    } else {
        "drill.end"
    };
    let rec = steadfast_store::control::AuditRecord {
        at: wall_ms(),
        actor: "drill".into(),
        action: action.into(),
        target: format!("drill {}", d.id),
        source: "local".into(),
        result: state.clone(),
        approver: None,
        detail: json!({ "error": d.error, "report": d.report.as_ref().map(|r| json!({
            "injected": r.injected, "discovered": r.discovered, "passed": r.passed })) })
        .to_string(),
    };
    if let Err(e) = crate::api::append_audit(s, rec).await {
        tracing::error!(drill = %d.id, error = ?e, "a drill's end could not be audited");
    }
}

/// A drill ended early may leave forged records pending in the engine; they raise their
/// breaks once their lateness budget runs out. Those are closed then too, so nothing of
/// the drill stays open.
fn sweep_later(s: &Shared, d: &Drill) {
    let lateness = lateness_of(s, &d.spec);
    // Records held back and not yet sent when it ended are never sent: what is pending
    // was sent by then, and breaks within its budget from now.
    let wait = (lateness + DISCOVERY_GRACE_MS).max(0) as u64;
    let (s, id) = (s.clone(), d.id.clone());
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(wait)).await;
        match close_drill_breaks(&s, &id).await {
            Ok(0) => {}
            Ok(n) => {
                if let Ok(mut d) = load(&s, &id).await {
                    d.breaks_closed += n;
                    let _ = save(&s, &d).await;
                }
            }
            Err(e) => {
                tracing::error!(drill = %id, error = ?e, "a drill's late breaks could not be closed")
            }
        }
    });
}

/// Whether the drill may go on: not stopped, kill switch not pulled, lease not expired.
pub(crate) async fn may_go_on(
    s: &Shared,
    d: &mut Drill,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> bool {
    let now = wall_ms();
    if *stop.borrow() {
        let engaged = killswitch_engaged(s).await;
        d.lease.end(
            now,
            if engaged {
                Stop::KillSwitch
            } else {
                Stop::Stopped
            },
        );
        return false;
    }
    if let Some(max) = d.spec.guards.real_breaks_max {
        let since = d.lease.started_at.unwrap_or(now);
        // A lossy drill's own hits raise real breaks: those are its findings, not a
        // breach.
        let own: BTreeSet<String> = d.hits.iter().map(|h| h.hit.hit.key.clone()).collect();
        let breached = match real_breaks_since(s, since, max, &own).await {
            Ok(n) if n > max => Some(format!(
                "guard breached: {n} real breaks since the drill started (at most {max})"
            )),
            Ok(_) => None,
            // A guard that cannot be read is a guard that does not hold.
            Err(e) => Some(format!("guard could not be checked: {e:?}")),
        };
        if let Some(why) = breached {
            d.error = Some(why);
            d.lease.end(now, Stop::GuardBreached);
            return false;
        }
    }
    let engaged = killswitch_engaged(s).await;
    d.lease.may_inject(now, engaged)
}

/// Production (non-drill) breaks detected since `since` on keys other than `own`, counted
/// up to `max + 1`.
async fn real_breaks_since(
    s: &Shared,
    since: i64,
    max: u64,
    own: &BTreeSet<String>,
) -> Result<u64, ApiError> {
    let limit = (max as usize)
        .saturating_add(1)
        .saturating_add(own.len())
        .min(steadfast_store::PAGE_MAX);
    let filter = BreakFilter {
        detected_since: Some(since),
        limit,
        ..Default::default()
    };
    let own = own.clone();
    with_store(s, move |st| {
        Ok(st
            .list(&filter)?
            .iter()
            .filter(|r| !own.contains(&r.brk.key))
            .count() as u64)
    })
    .await
}

async fn drive(
    s: &Shared,
    d: &mut Drill,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), ApiError> {
    let started = wall_ms();
    let rules = s.pipeline.rules.clone();
    let plan = steadfast_drill::forge(&d.id, &d.spec, &rules, &s.samples.all(), d.pairs, started)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "cannot_forge", e.to_string()))?;
    d.planted = plan.planted.clone();
    d.controls = plan.controls.len();
    save(s, d).await?;
    if d.spec.dry_run {
        // What would be injected is in `planted`; nothing is sent.
        d.report = Some(Report::new(&[], &[], &[], None));
        return Ok(());
    }
    let batch_max = s.cfg.limits.batch_records_max;
    let mut pending = plan.records.as_slice();
    let mut injected_at: Option<i64> = None;
    while !pending.is_empty() {
        let delay = pending[0].delay_ms;
        let n = pending
            .iter()
            .take_while(|f| f.delay_ms == delay)
            .count()
            .min(batch_max);
        let wait = (started + delay as i64 - wall_ms()).max(0) as u64;
        if wait > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                _ = stop.changed() => {}
            }
        }
        if !may_go_on(s, d, stop).await {
            break;
        }
        let batch: Vec<FundRecord> = pending[..n].iter().map(|f| f.record.clone()).collect();
        // The fault exists from the moment it is sent: the engine may raise its break
        // before `submit` returns (the break is stored while the WAL commit is awaited),
        // so the clock is read before, never after.
        let sent_at = wall_ms();
        s.pipeline.submit(sent_at, batch).await.map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "injection_failed",
                format!("{e:?}"),
            )
        })?;
        injected_at.get_or_insert(sent_at);
        pending = &pending[n..];
    }
    let Some(at) = injected_at else {
        return Ok(());
    };
    d.injections = d
        .planted
        .iter()
        .map(|p| Injection {
            key: p.key.clone(),
            at_ms: at,
            corrected_at_ms: None,
        })
        .collect();
    let targets = steadfast_drill::forge::target_rules(&d.spec, &rules)
        .map_err(|e| ApiError::internal("the drill's rules vanished", e))?;
    let lateness = targets
        .iter()
        .flat_map(|r| r.sides())
        .map(|side| side.lateness_ms)
        .max()
        .unwrap_or(0);
    let longest_delay = plan.records.last().map_or(0, |f| f.delay_ms as i64);
    let deadline = at
        + longest_delay
        + d.spec
            .expect
            .within_ms
            .map_or(lateness + DISCOVERY_GRACE_MS, |w| w as i64);
    let wanted: BTreeSet<String> = d.planted.iter().map(|p| p.key.clone()).collect();
    let observed = loop {
        let observed = drill_breaks(s, &d.id).await?;
        let found: BTreeSet<&str> = observed.iter().map(|o| o.key.as_str()).collect();
        // Done when every fault is found and the controls had their chance to break.
        let all_found = wanted.iter().all(|k| found.contains(k.as_str()));
        if (all_found && wall_ms() >= at + lateness)
            || wall_ms() >= deadline
            || !may_go_on(s, d, stop).await
        {
            break observed;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(POLL_MS)) => {}
            _ = stop.changed() => {}
        }
    };
    let expect: Vec<String> = if d.spec.expect.rules.is_empty() {
        targets.iter().map(|r| r.name.clone()).collect()
    } else {
        d.spec.expect.rules.clone()
    };
    d.report = Some(Report::new(
        &d.injections,
        &observed,
        &expect,
        d.spec.expect.within_ms,
    ));
    Ok(())
}

/// Every break `filter` selects, oldest first, page by page (bounded: a drill forges at
/// most `PAIRS_MAX` groups per rule, each raising a few breaks).
pub(crate) fn all_breaks(
    st: &steadfast_store::BreakStore,
    filter: BreakFilter,
) -> Result<Vec<steadfast_store::BreakRow>, steadfast_store::StoreError> {
    let mut out = Vec::new();
    let mut after = None;
    while out.len() < PAIRS_MAX * 8 {
        let page = st.list(&BreakFilter {
            after_id: after,
            limit: steadfast_store::PAGE_MAX,
            ..filter.clone()
        })?;
        let Some(last) = page.last() else { break };
        after = Some(last.brk.id);
        out.extend(page);
    }
    Ok(out)
}

/// Every break of a drill, oldest first.
fn drill_rows(
    st: &steadfast_store::BreakStore,
    drill: &str,
) -> Result<Vec<steadfast_store::BreakRow>, steadfast_store::StoreError> {
    all_breaks(
        st,
        BreakFilter {
            drill: Some(Some(drill.to_string())),
            ..Default::default()
        },
    )
}

/// The longest lateness budget of a spec's target rules (0 when they cannot be found).
pub(crate) fn lateness_of(s: &Shared, spec: &DrillSpec) -> i64 {
    steadfast_drill::forge::target_rules(spec, &s.pipeline.rules)
        .map(|rules| {
            rules
                .iter()
                .flat_map(|r| r.sides())
                .map(|side| side.lateness_ms)
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Resolves the drill's breaks that are still open or acknowledged, with the reason; they
/// stay listed under the drill.
async fn close_drill_breaks(s: &Shared, id: &str) -> Result<usize, ApiError> {
    let drill = id.to_string();
    with_store(s, move |st| {
        let reason = format!("drill {drill} ended");
        let mut closed = 0;
        for r in drill_rows(st, &drill)?
            .iter()
            .filter(|r| r.status != steadfast_store::Status::Resolved)
        {
            st.transition(
                r.brk.id,
                Some(steadfast_store::Status::Resolved),
                None,
                "drill",
                Some(&reason),
                wall_ms(),
            )?;
            closed += 1;
        }
        Ok(closed)
    })
    .await
}

async fn drill_breaks(s: &Shared, id: &str) -> Result<Vec<Observed>, ApiError> {
    let drill = id.to_string();
    with_store(s, move |st| {
        Ok(drill_rows(st, &drill)?
            .into_iter()
            .map(|r| Observed {
                rule: r.brk.rule,
                key: r.brk.key,
                kind: r.brk.kind.as_str().into(),
                detected_at_ms: r.detected_at,
            })
            .collect())
    })
    .await
}

// ---- schedules and blackouts ---------------------------------------------------------

const SCHEDULES_KEY: &str = "drill.schedules";
const BLACKOUTS_KEY: &str = "drill.blackouts";
/// Most drill schedules, and most blackout windows.
pub const SCHEDULES_MAX: usize = 100;
/// Firings kept in a schedule's history, newest last.
pub const SCHEDULE_HISTORY_MAX: usize = 50;

/// One firing of a schedule: started (with the drill) or skipped (with why).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FiringRecord {
    pub at: i64,
    #[serde(flatten)]
    pub firing: steadfast_drill::schedule::Firing,
    pub drill: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DrillSchedule {
    pub id: String,
    pub name: String,
    /// `sec min hour day month weekday`, UTC.
    pub cron: String,
    /// The drill spec, TOML or JSON text.
    pub spec: String,
    pub pairs: Option<usize>,
    pub created_by: String,
    pub created_at: i64,
    /// Cron times up to this have been handled.
    pub checked_to: i64,
    pub history: Vec<FiringRecord>,
}

/// A schedule to create.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSchedule {
    pub name: String,
    pub cron: String,
    #[schema(value_type = Object)]
    pub spec: Value,
    pub pairs: Option<usize>,
}

fn read_list<T: serde::de::DeserializeOwned>(
    c: &steadfast_store::ControlStore,
    key: &str,
) -> Result<Vec<T>, steadfast_store::ControlError> {
    Ok(c.setting(key)?
        .and_then(|v| serde_json::from_str(&v).ok())
        .unwrap_or_default())
}

fn write_list<T: Serialize>(
    c: &mut steadfast_store::ControlStore,
    key: &str,
    list: &[T],
) -> Result<(), ApiError> {
    c.set_setting(key, &serde_json::to_string(list).expect("lists serialize"))
        .map_err(ApiError::from)
}

/// Drill schedules with their history.
#[utoipa::path(get, path = "/api/v1/drill-schedules", responses((status = 200, description = "schedules")), security(("token" = [])))]
pub async fn list_schedules(State(s): State<Shared>) -> Result<Json<Vec<DrillSchedule>>, ApiError> {
    Ok(Json(
        with_control(&s, |c| read_list::<DrillSchedule>(c, SCHEDULES_KEY)).await?,
    ))
}

/// Creates a schedule; its spec is checked now, so a routine drill never fails on a typo.
#[utoipa::path(post, path = "/api/v1/drill-schedules", request_body = NewSchedule,
    responses((status = 201, description = "created"), (status = 400, body = ErrorBody)), security(("token" = [])))]
pub async fn create_schedule(
    State(s): State<Shared>,
    caller: Caller,
    b: Result<Json<NewSchedule>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(ns) =
        b.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text()))?;
    let spec = spec_text(&ns.spec);
    new_drill(&s, &spec, ns.pairs, &caller.subject)?;
    steadfast_drill::schedule::check_cron(&ns.cron)
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "bad_cron", m))?;
    let now = wall_ms();
    let sch = DrillSchedule {
        id: format!(
            "schedule-{}",
            crate::auth::mint(crate::auth::TokenKind::Api).id
        ),
        name: ns.name,
        cron: ns.cron,
        spec,
        pairs: ns.pairs,
        created_by: caller.subject.clone(),
        created_at: now,
        checked_to: now,
        history: vec![],
    };
    append(&s, SCHEDULES_KEY, sch.clone(), "schedules").await?;
    Ok(AuditNote {
        action: Some("drill.schedule.create".into()),
        target: Some(format!("schedule {}", sch.id)),
        detail: json!({ "name": sch.name, "cron": sch.cron }),
        approver: None,
    }
    .attach((StatusCode::CREATED, Json(sch)).into_response()))
}

/// Appends to a stored list, refused past `SCHEDULES_MAX` entries.
async fn append<T: Serialize + serde::de::DeserializeOwned + Send + 'static>(
    s: &Shared,
    key: &'static str,
    item: T,
    what: &'static str,
) -> Result<(), ApiError> {
    with_control(s, move |c| {
        let mut list: Vec<T> = read_list(c, key)?;
        if list.len() >= SCHEDULES_MAX {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "limit_reached",
                format!("{SCHEDULES_MAX} {what} exist already"),
            ));
        }
        list.push(item);
        write_list(c, key, &list)
    })
    .await
}

async fn remove<T: Serialize + serde::de::DeserializeOwned + Send + 'static>(
    s: &Shared,
    key: &'static str,
    id: String,
    id_of: fn(&T) -> &str,
) -> Result<(), ApiError> {
    with_control(s, move |c| {
        let mut list: Vec<T> = read_list(c, key)?;
        let before = list.len();
        list.retain(|x| id_of(x) != id);
        if list.len() == before {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{id} does not exist"),
            ));
        }
        write_list(c, key, &list)
    })
    .await
}

/// Deletes a schedule.
#[utoipa::path(delete, path = "/api/v1/drill-schedules/{id}", params(("id" = String, Path)),
    responses((status = 200, description = "deleted"), (status = 404, body = ErrorBody)), security(("token" = [])))]
pub async fn delete_schedule(
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    remove::<DrillSchedule>(&s, SCHEDULES_KEY, id.clone(), |x| &x.id).await?;
    Ok(AuditNote {
        action: Some("drill.schedule.delete".into()),
        target: Some(format!("schedule {id}")),
        ..Default::default()
    }
    .attach(Json(json!({ "deleted": id })).into_response()))
}

/// Blackout windows: no drill starts inside one.
#[utoipa::path(get, path = "/api/v1/drill-blackouts", responses((status = 200, description = "windows")), security(("token" = [])))]
pub async fn list_blackouts(
    State(s): State<Shared>,
) -> Result<Json<Vec<steadfast_drill::schedule::Blackout>>, ApiError> {
    Ok(Json(
        with_control(&s, |c| {
            read_list::<steadfast_drill::schedule::Blackout>(c, BLACKOUTS_KEY)
        })
        .await?,
    ))
}

/// Adds a blackout window (`from`/`to` RFC 3339, or `cron` + `duration_secs`).
#[utoipa::path(post, path = "/api/v1/drill-blackouts", request_body = Object,
    responses((status = 201, description = "added"), (status = 400, body = ErrorBody)), security(("token" = [])))]
pub async fn create_blackout(
    State(s): State<Shared>,
    b: Result<Json<steadfast_drill::schedule::Blackout>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(mut bo) =
        b.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text()))?;
    bo.validate()
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "bad_blackout", m))?;
    bo.id = format!(
        "blackout-{}",
        crate::auth::mint(crate::auth::TokenKind::Api).id
    );
    append(&s, BLACKOUTS_KEY, bo.clone(), "blackout windows").await?;
    Ok(AuditNote {
        action: Some("drill.blackout.create".into()),
        target: Some(format!("blackout {}", bo.id)),
        detail: json!({ "reason": bo.reason }),
        approver: None,
    }
    .attach((StatusCode::CREATED, Json(bo)).into_response()))
}

/// Removes a blackout window (a safety measure: drill admins only).
#[utoipa::path(delete, path = "/api/v1/drill-blackouts/{id}", params(("id" = String, Path)),
    responses((status = 200, description = "removed"), (status = 404, body = ErrorBody)), security(("token" = [])))]
pub async fn delete_blackout(
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    remove::<steadfast_drill::schedule::Blackout>(&s, BLACKOUTS_KEY, id.clone(), |x| &x.id).await?;
    Ok(AuditNote {
        action: Some("drill.blackout.delete".into()),
        target: Some(format!("blackout {id}")),
        ..Default::default()
    }
    .attach(Json(json!({ "deleted": id })).into_response()))
}

/// Fires the schedules that came due since they were last checked: at most one firing per
/// schedule per call, so a server that was down does not replay missed drills in a burst.
pub async fn tick_schedules(s: &Shared) {
    let now = wall_ms();
    let loaded = with_control(s, |c| {
        let schedules: Vec<DrillSchedule> = read_list(c, SCHEDULES_KEY)?;
        let blackouts: Vec<steadfast_drill::schedule::Blackout> = read_list(c, BLACKOUTS_KEY)?;
        let engaged = crate::control_api::killswitch_state(c)?.engaged;
        Ok::<_, ApiError>((schedules, blackouts, engaged))
    })
    .await;
    let Ok((mut schedules, blackouts, engaged)) = loaded else {
        tracing::error!("drill schedules could not be read");
        return;
    };
    let mut fired = Vec::new();
    for sch in schedules.iter_mut() {
        let due = matches!(steadfast_drill::schedule::next_fire(&sch.cron, sch.checked_to), Ok(Some(t)) if t <= now);
        sch.checked_to = now;
        if !due {
            continue;
        }
        let mut firing = steadfast_drill::schedule::decide(&blackouts, now, engaged);
        let mut drill = None;
        if firing == steadfast_drill::schedule::Firing::Start {
            let by = format!("schedule:{}", sch.created_by);
            let started = match new_drill(s, &sch.spec, sch.pairs, &by) {
                Ok(d) if d.spec.mode == Mode::Lossy => Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_spec",
                    "a schedule runs lossless drills only; a lossy drill needs a person to start it",
                )),
                Ok(d) => match save(s, &d).await {
                    Ok(()) => start_drill(s, &d.id, &by).await.map(|d| d.id),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            match started {
                Ok(id) => drill = Some(id),
                Err(e) => {
                    firing = steadfast_drill::schedule::Firing::Skip {
                        reason: format!("{e:?}"),
                    }
                }
            }
        }
        sch.history.push(FiringRecord {
            at: now,
            firing: firing.clone(),
            drill: drill.clone(),
        });
        let excess = sch.history.len().saturating_sub(SCHEDULE_HISTORY_MAX);
        sch.history.drain(..excess);
        fired.push((sch.id.clone(), firing, drill));
    }
    for (id, firing, drill) in fired {
        let result = match &firing {
            steadfast_drill::schedule::Firing::Start => "started".to_string(),
            steadfast_drill::schedule::Firing::Skip { reason } => format!("skipped: {reason}"),
        };
        let _ = crate::api::append_audit(
            s,
            steadfast_store::control::AuditRecord {
                at: now,
                actor: "scheduler".into(),
                action: "drill.schedule.fire".into(),
                target: format!("schedule {id}"),
                source: "local".into(),
                result,
                approver: None,
                detail: json!({ "drill": drill }).to_string(),
            },
        )
        .await;
    }
    // Written back whole: schedules created or deleted meanwhile are merged by id.
    let _ = with_control(s, move |c| {
        let current: Vec<DrillSchedule> = read_list(c, SCHEDULES_KEY)?;
        let merged: Vec<DrillSchedule> = current
            .into_iter()
            .map(|cur| {
                schedules
                    .iter()
                    .find(|x| x.id == cur.id)
                    .cloned()
                    .unwrap_or(cur)
            })
            .collect();
        write_list(c, SCHEDULES_KEY, &merged)
    })
    .await;
}
