//! Lossy drills on the server: the hub the fault-injection proxies sync with, the runner
//! that measures what verification found of the proxies' hits, and the corrections that
//! put the tampered data right afterwards.
//!
//! A lossy drill is assigned to every proxy while it runs; the proxies enforce its TTL
//! themselves and report each hit with the original value. Its breaks are real breaks
//! (the data really is wrong), so they go through the normal alert path; the drill claims
//! those on its hit keys as discoveries, and its `real_breaks_max` guard counts only the
//! others. When injection ends, the hits are corrected through the configured correction
//! target (after a second person's approval when `correction` is under four-eyes), the
//! downstream reports the amending records, and the breaks resolve by themselves. The
//! drill is finished only when every hit has recovered or was handed to a person.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use steadfast_drill::lease::{LeaseState, Stop};
use steadfast_drill::proxy::{
    correctable, fill_correction, Assignment, ProxyHit, SyncRequest, SyncResponse,
    HITS_PER_SYNC_MAX,
};
use steadfast_drill::report::Observed;
use steadfast_drill::{DrillSpec, Injection, Report};
use steadfast_store::BreakFilter;
use utoipa::ToSchema;

use crate::api::{append_audit, with_store, ApiError, AuditNote, Shared};
use crate::auth::Caller;
use crate::control_api::with_control;
use crate::drills::{load, save, Drill};
use crate::pipeline::wall_ms;

/// The kill switch waits this long for every live proxy to confirm it stopped.
pub const KILL_ACK_WAIT_MS: u64 = 2_000;
/// A proxy not heard from for this long is not waited for.
pub const PROXY_FRESH_MS: i64 = 60_000;
/// Proxies remembered; a new name past this is refused.
pub const PROXIES_MAX: usize = 256;
/// The longest a sync is held open waiting for a change.
pub const SYNC_WAIT_MAX_MS: u64 = 25_000;
/// How often the runner looks at hits, breaks, guards and the lease.
const POLL_MS: u64 = 100;
/// Time past a rule's lateness budget for a hit to be discovered, or for a corrected hit's
/// break to resolve.
const GRACE_MS: i64 = 5_000;
/// A correction call that has not answered by then failed.
const CORRECTION_TIMEOUT_MS: u64 = 10_000;

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ProxySeen {
    pub name: String,
    pub last_seen_ms: i64,
    /// The assignment version it has applied.
    pub applied: u64,
    pub requests: u64,
    pub errors: u64,
}

struct Assigned {
    drill: String,
    spec: DrillSpec,
    ends_at: i64,
}

/// What the proxies are told, and what they said.
pub struct ProxyHub {
    version: tokio::sync::watch::Sender<u64>,
    assigned: Mutex<Vec<Assigned>>,
    seen: Mutex<BTreeMap<String, ProxySeen>>,
    aborts: Mutex<HashMap<String, String>>,
}

impl Default for ProxyHub {
    fn default() -> ProxyHub {
        ProxyHub {
            version: tokio::sync::watch::channel(1).0,
            assigned: Mutex::new(vec![]),
            seen: Mutex::new(BTreeMap::new()),
            aborts: Mutex::new(HashMap::new()),
        }
    }
}

/// One proxy's answer to a kill switch.
#[derive(Clone, Debug, Serialize)]
pub struct Ack {
    pub proxy: String,
    pub stopped: bool,
}

impl ProxyHub {
    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }

    /// A new assignment version; proxies waiting on a sync get it at once.
    pub fn bump(&self) -> u64 {
        self.version.send_modify(|v| *v += 1);
        self.version()
    }

    fn assign(&self, drill: &str, spec: &DrillSpec, ends_at: i64) {
        self.assigned.lock().expect("hub lock").push(Assigned {
            drill: drill.into(),
            spec: spec.clone(),
            ends_at,
        });
        self.bump();
    }

    fn unassign(&self, drill: &str) -> u64 {
        self.assigned
            .lock()
            .expect("hub lock")
            .retain(|a| a.drill != drill);
        self.bump()
    }

    fn take_abort(&self, drill: &str) -> Option<String> {
        self.aborts.lock().expect("hub lock").remove(drill)
    }

    pub fn proxies(&self) -> Vec<ProxySeen> {
        self.seen
            .lock()
            .expect("hub lock")
            .values()
            .cloned()
            .collect()
    }

    /// Waits until every proxy heard from recently has applied version `v`, at most
    /// `within`; says which did and which did not.
    pub async fn wait_applied(&self, v: u64, within: Duration) -> Vec<Ack> {
        let until = tokio::time::Instant::now() + within;
        loop {
            let now = wall_ms();
            let acks: Vec<Ack> = self
                .seen
                .lock()
                .expect("hub lock")
                .values()
                .filter(|p| now - p.last_seen_ms <= PROXY_FRESH_MS)
                .map(|p| Ack {
                    proxy: p.name.clone(),
                    stopped: p.applied >= v,
                })
                .collect();
            if acks.iter().all(|a| a.stopped) || tokio::time::Instant::now() >= until {
                return acks;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

// ---- the proxy sync route -------------------------------------------------------------

/// A proxy's sync: hands in hits and aborts, and gets the drills it must run (held open up
/// to `wait_ms` until they change).
#[utoipa::path(post, path = "/api/v1/proxies/{name}/sync", params(("name" = String, Path)), request_body = Object,
    responses((status = 200, description = "the assignment"), (status = 400, body = crate::api::ErrorBody)), security(("token" = [])))]
pub async fn sync(
    State(s): State<Shared>,
    Path(name): Path<String>,
    b: Result<Json<SyncRequest>, JsonRejection>,
) -> Result<Json<SyncResponse>, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_sync", m);
    let Json(req) = b.map_err(|e| bad(e.body_text()))?;
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(bad(format!("{name:?} is not a proxy name")));
    }
    if req.hits.len() > HITS_PER_SYNC_MAX {
        return Err(bad(format!("at most {HITS_PER_SYNC_MAX} hits per sync")));
    }
    if let Some(h) = req.hits.iter().find(|h| h.proxy != name) {
        return Err(bad(format!("hit {} is not this proxy's", h.id)));
    }
    // Durable before acknowledged.
    let rows: Vec<(String, String, Value)> = req
        .hits
        .iter()
        .map(|h| {
            (
                h.id.clone(),
                h.drill.clone(),
                serde_json::to_value(h).expect("hits serialize"),
            )
        })
        .collect();
    let acked: Vec<String> = req.hits.iter().map(|h| h.id.clone()).collect();
    if !rows.is_empty() {
        with_control(&s, move |c| c.insert_hits(&rows)).await?;
    }
    {
        let mut aborts = s.proxies.aborts.lock().expect("hub lock");
        for a in &req.aborts {
            if aborts.len() < PROXIES_MAX * 16 {
                aborts.insert(a.drill.clone(), format!("proxy {name}: {}", a.reason));
            }
        }
    }
    {
        let mut seen = s.proxies.seen.lock().expect("hub lock");
        if seen.len() >= PROXIES_MAX && !seen.contains_key(&name) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_proxies",
                format!("{PROXIES_MAX} proxies are known already"),
            ));
        }
        seen.insert(
            name.clone(),
            ProxySeen {
                name: name.clone(),
                last_seen_ms: wall_ms(),
                applied: req.applied,
                requests: req.requests,
                errors: req.errors,
            },
        );
    }
    let mut rx = s.proxies.version.subscribe();
    if req.wait_ms > 0 && acked.is_empty() && *rx.borrow_and_update() == req.applied {
        let wait = Duration::from_millis(req.wait_ms.min(SYNC_WAIT_MAX_MS));
        let _ = tokio::time::timeout(wait, rx.changed()).await;
    }
    let version = s.proxies.version();
    let killswitch = crate::drills::killswitch_engaged(&s).await;
    let now = wall_ms();
    let drills = s
        .proxies
        .assigned
        .lock()
        .expect("hub lock")
        .iter()
        .filter(|a| a.ends_at > now)
        .map(|a| Assignment {
            drill: a.drill.clone(),
            spec: a.spec.clone(),
            remaining_ms: (a.ends_at - now) as u64,
        })
        .collect();
    Ok(Json(SyncResponse {
        version,
        killswitch,
        drills,
        acked,
    }))
}

/// The proxies that synced, with the version they applied and their traffic.
#[utoipa::path(get, path = "/api/v1/proxies", responses((status = 200, description = "proxies", body = [ProxySeen])), security(("token" = [])))]
pub async fn list_proxies(State(s): State<Shared>) -> Json<Vec<ProxySeen>> {
    Json(s.proxies.proxies())
}

// ---- hits and their correction --------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FixState {
    /// Not corrected yet.
    Pending,
    /// The correction API accepted the correcting entry; waiting for the break to resolve.
    Booked,
    /// The break resolved: the data is right again.
    Recovered,
    /// Not correctable automatically, or the correction failed: a person must look.
    NeedsPerson,
    /// A person took it over.
    HandedOver,
    /// A dry run's hit: nothing was changed, nothing to correct.
    Untouched,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HitState {
    pub hit: ProxyHit,
    pub discovered_at_ms: Option<i64>,
    pub state: FixState,
    pub booked_at_ms: Option<i64>,
    pub recovered_at_ms: Option<i64>,
    pub note: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CorrectionState {
    /// `awaiting_approval`, `booking`, `awaiting_recovery`, `needs_person` or `done`.
    pub state: String,
    pub approval: Option<u64>,
    pub approved_by: Option<String>,
}

impl CorrectionState {
    pub fn finished(&self) -> bool {
        self.state == "done"
    }
}

fn settle(d: &mut Drill) {
    let Some(c) = d.correction.as_mut() else {
        return;
    };
    let all_done = d.hits.iter().all(|h| {
        matches!(
            h.state,
            FixState::Recovered | FixState::HandedOver | FixState::Untouched
        )
    });
    if all_done {
        c.state = "done".into();
    } else if d.hits.iter().any(|h| h.state == FixState::NeedsPerson)
        && !d
            .hits
            .iter()
            .any(|h| matches!(h.state, FixState::Booked | FixState::Pending))
    {
        c.state = "needs_person".into();
    }
}

async fn load_hits(s: &Shared, drill: &str) -> Result<Vec<ProxyHit>, ApiError> {
    let id = drill.to_string();
    let rows = with_control(s, move |c| c.drill_hits(&id)).await?;
    Ok(rows
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect())
}

/// Merges newly stored hits into the drill, in arrival order.
fn merge(d: &mut Drill, hits: Vec<ProxyHit>) {
    let known: BTreeSet<String> = d.hits.iter().map(|h| h.hit.id.clone()).collect();
    for h in hits.into_iter().filter(|h| !known.contains(&h.id)) {
        d.hits.push(HitState {
            hit: h,
            discovered_at_ms: None,
            state: FixState::Pending,
            booked_at_ms: None,
            recovered_at_ms: None,
            note: None,
        });
    }
}

/// Production breaks of `rules` detected since `since`, every status, oldest first.
async fn breaks_since(
    s: &Shared,
    rules: Vec<String>,
    since: i64,
) -> Result<Vec<steadfast_store::BreakRow>, ApiError> {
    with_store(s, move |st| {
        crate::drills::all_breaks(
            st,
            BreakFilter {
                rules_in: Some(rules),
                detected_since: Some(since),
                ..Default::default()
            },
        )
    })
    .await
}

fn target_rules(s: &Shared, d: &Drill) -> Result<(Vec<String>, i64), ApiError> {
    let rules = steadfast_drill::forge::target_rules(&d.spec, &s.pipeline.rules)
        .map_err(|e| ApiError::internal("the drill's rules vanished", e))?;
    Ok((
        rules.iter().map(|r| r.name.clone()).collect(),
        crate::drills::lateness_of(s, &d.spec),
    ))
}

/// Marks discoveries: the first break of a target rule on a hit's key, at or after it.
fn discover(d: &mut Drill, breaks: &[steadfast_store::BreakRow]) {
    for h in d.hits.iter_mut().filter(|h| h.discovered_at_ms.is_none()) {
        h.discovered_at_ms = breaks
            .iter()
            .filter(|b| b.brk.key == h.hit.hit.key && b.detected_at >= h.hit.hit.at_ms)
            .map(|b| b.detected_at)
            .min();
    }
}

fn exhausted(d: &Drill) -> bool {
    d.spec.faults.iter().enumerate().all(|(i, f)| {
        d.hits.iter().filter(|h| h.hit.hit.fault == i).count() as u64 >= f.limits.hits_max
    })
}

// ---- the runner -----------------------------------------------------------------------

pub async fn run(s: Shared, mut d: Drill, mut stop: tokio::sync::watch::Receiver<bool>) {
    let id = d.id.clone();
    let ends_at = d.lease.expires_at.unwrap_or_else(wall_ms);
    s.proxies.assign(&id, &d.spec, ends_at);
    let watched = watch(&s, &mut d, &mut stop).await;
    // No proxy tampers for this drill any more once they have applied this.
    let v = s.proxies.unassign(&id);
    let _ = s
        .proxies
        .wait_applied(v, Duration::from_millis(KILL_ACK_WAIT_MS))
        .await;
    if let Err(e) = watched {
        d.error = Some(format!("{e:?}"));
        d.lease.end(wall_ms(), Stop::InjectionFailed);
    }
    if d.lease.state == LeaseState::Running {
        d.lease.end(wall_ms(), Stop::Completed);
    }
    if let Err(e) = measure(&s, &mut d).await {
        tracing::error!(drill = %id, error = ?e, "a lossy drill could not be measured");
    }
    s.drills.running.lock().expect("registry lock").remove(&id);
    crate::drills::audit_end(&s, &d).await;
    if let Err(e) = begin_corrections(&s, &mut d).await {
        tracing::error!(drill = %id, error = ?e, "a lossy drill's corrections could not begin");
        d.error.get_or_insert(format!("{e:?}"));
    }
    if let Err(e) = save(&s, &d).await {
        tracing::error!(drill = %id, error = ?e, "a lossy drill's result could not be stored");
    }
}

/// While injecting: until every fault has made its hits and each was discovered (or had
/// its chance), or the lease, a stop, the kill switch, a guard or a proxy ends it.
async fn watch(
    s: &Shared,
    d: &mut Drill,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), ApiError> {
    let (rules, lateness) = target_rules(s, d)?;
    let since = d.lease.started_at.unwrap_or_else(wall_ms);
    let mut last_save = wall_ms();
    loop {
        merge(d, load_hits(s, &d.id).await?);
        discover(d, &breaks_since(s, rules.clone(), since).await?);
        let last_hit = d
            .hits
            .iter()
            .map(|h| h.hit.hit.at_ms)
            .max()
            .unwrap_or(since);
        let all_found = d.hits.iter().all(|h| h.discovered_at_ms.is_some());
        if exhausted(d) && (all_found || wall_ms() >= last_hit + lateness + GRACE_MS) {
            return Ok(());
        }
        if let Some(why) = s.proxies.take_abort(&d.id) {
            let stop = if why.contains("TTL") {
                Stop::Expired
            } else {
                Stop::GuardBreached
            };
            d.error = Some(why);
            d.lease.end(wall_ms(), stop);
            return Ok(());
        }
        if !crate::drills::may_go_on(s, d, stop).await {
            return Ok(());
        }
        if wall_ms() - last_save >= 1_000 {
            save(s, d).await?;
            last_save = wall_ms();
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(POLL_MS)) => {}
            _ = stop.changed() => {}
        }
    }
}

/// After injection: waits for the discovery of every hit made (hits still arriving from
/// proxies included) up to the rules' lateness budget, then writes the report.
async fn measure(s: &Shared, d: &mut Drill) -> Result<(), ApiError> {
    let (rules, lateness) = target_rules(s, d)?;
    let since = d.lease.started_at.unwrap_or_else(wall_ms);
    let ended = d.lease.ended_at.unwrap_or_else(wall_ms);
    let deadline = ended + lateness + GRACE_MS;
    let observed = loop {
        merge(d, load_hits(s, &d.id).await?);
        let breaks = breaks_since(s, rules.clone(), since).await?;
        discover(d, &breaks);
        if d.hits.iter().all(|h| h.discovered_at_ms.is_some()) || wall_ms() >= deadline {
            break breaks;
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    };
    report(d, &observed, &rules);
    Ok(())
}

fn report(d: &mut Drill, observed: &[steadfast_store::BreakRow], rules: &[String]) {
    d.injections = d
        .hits
        .iter()
        .map(|h| Injection {
            key: h.hit.hit.key.clone(),
            at_ms: h.hit.hit.at_ms,
            corrected_at_ms: h.recovered_at_ms,
        })
        .collect();
    let observed: Vec<Observed> = observed
        .iter()
        .map(|r| Observed {
            rule: r.brk.rule.clone(),
            key: r.brk.key.clone(),
            kind: r.brk.kind.as_str().into(),
            detected_at_ms: r.detected_at,
        })
        .collect();
    let expect = if d.spec.expect.rules.is_empty() {
        rules.to_vec()
    } else {
        d.spec.expect.rules.clone()
    };
    d.report = Some(Report::new(
        &d.injections,
        &observed,
        &expect,
        d.spec.expect.within_ms,
    ));
}

/// Hands every hit to a person (manual correction), asks a second person to approve the
/// corrections, or books them now.
async fn begin_corrections(s: &Shared, d: &mut Drill) -> Result<(), ApiError> {
    let mut c = CorrectionState::default();
    if d.hits.is_empty() || d.spec.dry_run {
        for h in d.hits.iter_mut() {
            h.state = FixState::Untouched;
        }
        c.state = "done".into();
        d.correction = Some(c);
        return Ok(());
    }
    if d.spec.correction.manual || d.spec.correction.target.is_none() {
        for h in d.hits.iter_mut() {
            h.state = FixState::NeedsPerson;
            h.note = Some("the drill's correction is manual".into());
        }
        c.state = "needs_person".into();
        d.correction = Some(c);
        return Ok(());
    }
    if crate::control_api::needs_approval(s, "correction") {
        let requester = d.started_by.clone().unwrap_or_else(|| d.created_by.clone());
        let row = crate::control_api::file_approval(
            s,
            &requester,
            "correction",
            &format!("drill {}", d.id),
            json!({ "drill": d.id }),
            format!(
                "correct the {} hits of drill {:?}",
                d.hits.len(),
                d.spec.name
            ),
        )
        .await?;
        append_audit(
            s,
            steadfast_store::control::AuditRecord {
                at: wall_ms(),
                actor: requester,
                action: "correction.request".into(),
                target: format!("drill {}", d.id),
                source: "local".into(),
                result: "ok".into(),
                approver: None,
                detail: json!({ "approval": row.id, "hits": d.hits.len() }).to_string(),
            },
        )
        .await?;
        c.state = "awaiting_approval".into();
        c.approval = Some(row.id);
        d.correction = Some(c);
        return Ok(());
    }
    c.state = "booking".into();
    d.correction = Some(c);
    save(s, d).await?;
    let id = d.id.clone();
    let by = d.started_by.clone().unwrap_or_else(|| d.created_by.clone());
    let s2 = s.clone();
    tokio::spawn(async move {
        if let Err(e) = correct(&s2, &id, &by).await {
            tracing::error!(drill = %id, error = ?e, "corrections failed");
        }
    });
    Ok(())
}

/// The approved action: books the drill's corrections (in the background) and answers at
/// once.
pub(crate) async fn book_corrections(
    s: &Shared,
    id: &str,
    by: &str,
    approver: Option<&str>,
) -> Result<Value, ApiError> {
    let mut d = load(s, id).await?;
    let c = d.correction.get_or_insert_with(Default::default);
    if c.state != "awaiting_approval" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_awaiting_approval",
            format!("drill {id}'s corrections are {}", c.state),
        ));
    }
    c.state = "booking".into();
    c.approved_by = approver.map(String::from);
    save(s, &d).await?;
    let (s2, id2, by2) = (s.clone(), id.to_string(), by.to_string());
    tokio::spawn(async move {
        if let Err(e) = correct(&s2, &id2, &by2).await {
            tracing::error!(drill = %id2, error = ?e, "corrections failed");
        }
    });
    Ok(json!({ "drill": id, "corrections": "booking", "hits": d.hits.len() }))
}

/// Books every pending hit through the correction target, audits each, then waits for the
/// breaks to resolve.
async fn correct(s: &Shared, id: &str, by: &str) -> Result<(), ApiError> {
    let mut d = load(s, id).await?;
    let target_name = d.spec.correction.target.clone().unwrap_or_default();
    let target = s
        .cfg
        .drills
        .corrections
        .iter()
        .find(|t| t.name == target_name)
        .cloned();
    let token = target
        .as_ref()
        .and_then(|t| t.token_file.as_ref())
        .and_then(|f| std::fs::read_to_string(f).ok())
        .map(|t| t.trim().to_string());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(CORRECTION_TIMEOUT_MS))
        .build()
        .map_err(|e| ApiError::internal("HTTP client", e))?;
    let reason = format!("correcting drill {} ({})", d.id, d.spec.name);
    for i in 0..d.hits.len() {
        if d.hits[i].state != FixState::Pending {
            continue;
        }
        let hit = d.hits[i].hit.clone();
        let (state, note) = match (&target, correctable(&hit.hit)) {
            (None, _) => (
                FixState::NeedsPerson,
                Some(format!(
                    "correction target {target_name:?} is not configured"
                )),
            ),
            (_, false) => (
                FixState::NeedsPerson,
                Some("this fault cannot be booked back automatically".into()),
            ),
            (Some(t), true) => {
                let body = fill_correction(&t.body, &hit, &reason);
                let mut req = http.post(&t.url).json(&body);
                if let Some(tok) = &token {
                    req = req.bearer_auth(tok);
                }
                match req.send().await {
                    Ok(r) if r.status().is_success() => (FixState::Booked, None),
                    Ok(r) => {
                        let status = r.status();
                        let text: String = r
                            .text()
                            .await
                            .unwrap_or_default()
                            .chars()
                            .take(300)
                            .collect();
                        (
                            FixState::NeedsPerson,
                            Some(format!("correction refused: {status} {text}")),
                        )
                    }
                    Err(e) => (
                        FixState::NeedsPerson,
                        Some(format!("correction failed: {e}")),
                    ),
                }
            }
        };
        d.hits[i].state = state;
        d.hits[i].note = note.clone();
        if state == FixState::Booked {
            d.hits[i].booked_at_ms = Some(wall_ms());
        }
        append_audit(
            s,
            steadfast_store::control::AuditRecord {
                at: wall_ms(),
                actor: by.into(),
                action: "correction.book".into(),
                target: format!("drill {} hit {}", d.id, hit.id),
                source: "local".into(),
                result: if state == FixState::Booked { "ok".into() } else { "failed".into() },
                approver: d.correction.as_ref().and_then(|c| c.approved_by.clone()),
                detail: json!({ "key": hit.hit.key, "field": hit.hit.field, "original": hit.hit.original,
                                "tampered": hit.hit.tampered, "target": target_name, "note": note })
                .to_string(),
            },
        )
        .await?;
    }
    if let Some(c) = d.correction.as_mut() {
        c.state = "awaiting_recovery".into();
    }
    save(s, &d).await?;
    recover(s, &mut d).await?;
    settle(&mut d);
    save(s, &d).await
}

/// Waits for the booked hits' breaks to resolve (the downstream's amending records), up
/// to the lateness budget and a grace; a hit whose break stays open goes to a person.
async fn recover(s: &Shared, d: &mut Drill) -> Result<(), ApiError> {
    let (rules, lateness) = target_rules(s, d)?;
    let since = d.lease.started_at.unwrap_or_else(wall_ms);
    let deadline = wall_ms() + lateness + GRACE_MS;
    loop {
        let breaks = breaks_since(s, rules.clone(), since).await?;
        for h in d.hits.iter_mut().filter(|h| h.state == FixState::Booked) {
            let own: Vec<&steadfast_store::BreakRow> = breaks
                .iter()
                .filter(|b| b.brk.key == h.hit.hit.key)
                .collect();
            if own
                .iter()
                .all(|b| b.status == steadfast_store::Status::Resolved)
            {
                h.state = FixState::Recovered;
                h.recovered_at_ms = Some(
                    own.iter()
                        .map(|b| b.status_at)
                        .max()
                        .unwrap_or_else(wall_ms),
                );
            }
        }
        let waiting = d.hits.iter().any(|h| h.state == FixState::Booked);
        if !waiting || wall_ms() >= deadline {
            for h in d.hits.iter_mut().filter(|h| h.state == FixState::Booked) {
                h.state = FixState::NeedsPerson;
                h.note = Some("corrected, but its break did not resolve".into());
            }
            report(d, &breaks, &rules);
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS * 2)).await;
    }
}

/// Hits a person takes over.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Handover {
    /// Hit ids; every hit not yet recovered when absent.
    pub hits: Option<Vec<String>>,
    pub note: String,
}

/// Hands hits of a lossy drill to a person: the drill is finished once every hit has
/// recovered or was handed over.
#[utoipa::path(post, path = "/api/v1/drills/{id}/handover", params(("id" = String, Path)), request_body = Handover,
    responses((status = 200, description = "handed over"), (status = 400, body = crate::api::ErrorBody), (status = 404, body = crate::api::ErrorBody), (status = 409, body = crate::api::ErrorBody)),
    security(("token" = [])))]
pub async fn handover(
    State(s): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    b: Result<Json<Handover>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(h) =
        b.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text()))?;
    if h.note.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            "say in `note` who takes it over and why",
        ));
    }
    let mut d = load(&s, &id).await?;
    if d.correction.is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_correcting",
            format!(
                "drill {id} is {}; only an ended lossy drill's hits are handed over",
                d.state()
            ),
        ));
    }
    let mut handed = Vec::new();
    for st in d.hits.iter_mut() {
        let named = h.hits.as_ref().is_none_or(|ids| ids.contains(&st.hit.id));
        if named
            && !matches!(
                st.state,
                FixState::Recovered | FixState::HandedOver | FixState::Untouched
            )
        {
            st.state = FixState::HandedOver;
            st.note = Some(format!("{}: {}", caller.subject, h.note));
            handed.push(st.hit.id.clone());
        }
    }
    settle(&mut d);
    save(&s, &d).await?;
    Ok(AuditNote {
        action: Some("correction.handover".into()),
        target: Some(format!("drill {id}")),
        detail: json!({ "hits": handed, "note": h.note }),
        approver: None,
    }
    .attach(
        Json(json!({ "drill": id, "handed_over": handed, "state": d.state() })).into_response(),
    ))
}
