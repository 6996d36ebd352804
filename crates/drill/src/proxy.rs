//! The fault-injection proxy's pure core and its protocol with the controller.
//!
//! The proxy (`steadfast proxy`, crate `steadfast-proxy`) holds the lossy drills the
//! controller assigned to it, each with its own deadline on the proxy's clock: a drill
//! whose TTL runs out stops injecting there and then, whether or not the controller can be
//! reached. [`Active::decide`] is asked once per proxied request; it answers what to do
//! and records the hit, so the edge only moves bytes.
//!
//! The controller's view travels as a versioned assignment ([`SyncResponse`]); the proxy
//! reports the version it applied with its next sync, which is how a kill switch call
//! knows every proxy has stopped before it returns.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::spec::{DrillSpec, Mode};
use crate::tamper::{Action, Hit, Injector, TamperError};

/// Hits a proxy holds that the controller has not acknowledged yet. At the bound the
/// proxy stops tampering (it forwards unchanged): a hit whose original could be lost
/// could not be corrected.
pub const HITS_UNACKED_MAX: usize = 100_000;
/// Hits sent in one sync.
pub const HITS_PER_SYNC_MAX: usize = 1_000;
/// Lossy drills one proxy runs at once.
pub const ASSIGNED_MAX: usize = 16;
/// The error-rate guard looks at the last this many requests of a drill's routes.
pub const ERROR_WINDOW: usize = 200;
/// ... and decides only once it has seen this many.
pub const ERROR_WINDOW_MIN: usize = 20;

/// Which part of an exchange a route's faults act on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodySide {
    #[default]
    Request,
    Response,
}

/// One hit as the proxy reports it: which drill, which route, and the tampering itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyHit {
    /// Unique per proxy: `<proxy>-<drill>-<n>`; the controller keeps the first it sees.
    pub id: String,
    pub drill: String,
    pub proxy: String,
    pub route: String,
    pub side: BodySide,
    /// A dry run's hit: what would have been done; the request went on unchanged.
    #[serde(default)]
    pub dry_run: bool,
    #[serde(flatten)]
    pub hit: Hit,
}

/// A drill the proxy stopped by itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Abort {
    pub drill: String,
    pub reason: String,
}

/// What the proxy sends the controller: its state, and what happened since last time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    /// The assignment version the proxy has applied (0 before the first).
    pub applied: u64,
    /// Wait up to this long for a newer version than `applied` (long poll); 0 answers at
    /// once.
    #[serde(default)]
    pub wait_ms: u64,
    #[serde(default)]
    pub hits: Vec<ProxyHit>,
    #[serde(default)]
    pub aborts: Vec<Abort>,
    /// Requests proxied and upstream errors (5xx or no answer) since the proxy started.
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub errors: u64,
}

/// One lossy drill assigned to a proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub drill: String,
    pub spec: DrillSpec,
    /// Time left on the drill's lease when the controller answered. Relative, so the two
    /// clocks need not agree.
    pub remaining_ms: u64,
}

/// The controller's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResponse {
    pub version: u64,
    pub killswitch: bool,
    pub drills: Vec<Assignment>,
    /// Hit ids now durable on the controller; the proxy may forget them.
    pub acked: Vec<String>,
}

/// A proxied request, as far as the core needs to know it.
pub struct Seen<'a> {
    /// The route's kind (`bill`), the kind the drill's faults name.
    pub kind: &'a str,
    pub route: &'a str,
    pub side: BodySide,
    /// The business key (the route's key field), empty when the body has none.
    pub key: &'a str,
    /// The JSON body, when it is one.
    pub body: Option<&'a Value>,
}

/// What the core decided for one request.
#[derive(Debug, PartialEq)]
pub struct Decision {
    pub action: Action,
    pub hit: ProxyHit,
}

struct Running {
    drill: String,
    injector: Injector,
    deadline_ms: i64,
    kinds: Vec<String>,
    error_rate_max: Option<u8>,
    dry_run: bool,
    /// Recent outcomes of requests on the drill's kinds: true for an error.
    window: VecDeque<bool>,
}

/// The drills a proxy runs, on the proxy's monotonic clock in milliseconds.
pub struct Active {
    proxy: String,
    version: u64,
    killswitch: bool,
    running: Vec<Running>,
    /// Drills that ended here (TTL, guard, kill switch); never restarted by a stale sync.
    ended: Vec<String>,
    aborts: Vec<Abort>,
    seq: u64,
    unacked: usize,
}

impl Active {
    pub fn new(proxy: &str) -> Active {
        Active {
            proxy: proxy.into(),
            version: 0,
            killswitch: false,
            running: vec![],
            ended: vec![],
            aborts: vec![],
            seq: 0,
            unacked: 0,
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Drills assigned and not ended (their deadline may have passed unnoticed).
    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// When a running drill's lease ends, on the proxy's clock.
    pub fn deadline(&self, drill: &str) -> Option<i64> {
        self.running
            .iter()
            .find(|r| r.drill == drill)
            .map(|r| r.deadline_ms)
    }

    /// Whether the kill switch was engaged at the last sync.
    pub fn killswitch(&self) -> bool {
        self.killswitch
    }

    /// Drill ids injecting now.
    pub fn running(&self, now_ms: i64) -> Vec<String> {
        self.running
            .iter()
            .filter(|r| r.deadline_ms > now_ms && !self.killswitch)
            .map(|r| r.drill.clone())
            .collect()
    }

    /// Applies the controller's answer: new drills start with their deadline counted from
    /// `now_ms`; drills no longer assigned stop; the kill switch stops everything.
    pub fn apply(&mut self, resp: &SyncResponse, now_ms: i64) {
        self.version = resp.version;
        self.killswitch = resp.killswitch;
        self.running
            .retain(|r| resp.drills.iter().any(|a| a.drill == r.drill));
        for a in resp.drills.iter().take(ASSIGNED_MAX) {
            if a.spec.mode != Mode::Lossy || self.ended.contains(&a.drill) {
                continue;
            }
            let deadline = now_ms.saturating_add(a.remaining_ms.min(i64::MAX as u64) as i64);
            match self.running.iter_mut().find(|r| r.drill == a.drill) {
                // The lease only ever shortens here: a renewal cannot outlive the TTL the
                // drill started with, and a late answer cannot stretch it.
                Some(r) => r.deadline_ms = r.deadline_ms.min(deadline),
                None => self.running.push(Running {
                    drill: a.drill.clone(),
                    injector: Injector::new(&a.drill, &a.spec),
                    deadline_ms: deadline,
                    kinds: a.spec.faults.iter().map(|f| f.kind.clone()).collect(),
                    error_rate_max: a.spec.guards.error_rate_percent_max,
                    dry_run: a.spec.dry_run,
                    window: VecDeque::new(),
                }),
            }
        }
        if self.ended.len() > 4 * ASSIGNED_MAX {
            self.ended.drain(..ASSIGNED_MAX);
        }
    }

    /// The hits made and not yet acknowledged; the edge tells the core when they are.
    pub fn acknowledge(&mut self, n: usize) {
        self.unacked = self.unacked.saturating_sub(n);
    }

    /// Drills the proxy stopped by itself since last asked.
    pub fn take_aborts(&mut self) -> Vec<Abort> {
        std::mem::take(&mut self.aborts)
    }

    fn end(&mut self, i: usize, reason: String) {
        let r = self.running.remove(i);
        self.ended.push(r.drill.clone());
        self.aborts.push(Abort {
            drill: r.drill,
            reason,
        });
    }

    /// Ends the drills whose deadline has passed. The edge calls this on every request and
    /// on a timer, so an expired drill stops even when no request comes.
    pub fn expire(&mut self, now_ms: i64) {
        while let Some(i) = self.running.iter().position(|r| r.deadline_ms <= now_ms) {
            self.end(i, "the drill's TTL ran out at the proxy".into());
        }
    }

    /// Decides one request. At most one drill acts on it: the first, in assignment order,
    /// whose faults apply. A failed tampering leaves the request as it was. A dry run's
    /// decision carries `dry_run`: the edge reports it and changes nothing.
    pub fn decide(&mut self, seen: &Seen, now_ms: i64) -> Result<Option<Decision>, TamperError> {
        self.expire(now_ms);
        if self.killswitch || self.unacked >= HITS_UNACKED_MAX {
            return Ok(None);
        }
        let empty = Value::Null;
        let body = seen.body.unwrap_or(&empty);
        for r in self.running.iter_mut() {
            let Some((action, hit)) = r.injector.apply(seen.kind, seen.key, body, now_ms)? else {
                continue;
            };
            self.seq += 1;
            self.unacked += 1;
            let hit = ProxyHit {
                id: format!("{}-{}-{}", self.proxy, r.drill, self.seq),
                drill: r.drill.clone(),
                proxy: self.proxy.clone(),
                route: seen.route.into(),
                side: seen.side,
                dry_run: r.dry_run,
                hit,
            };
            return Ok(Some(Decision { action, hit }));
        }
        Ok(None)
    }

    /// Feeds the error-rate guard the outcome of a request of `kind`; a drill whose
    /// guard is breached ends here and is reported as aborted.
    pub fn outcome(&mut self, kind: &str, error: bool) {
        let mut breached = Vec::new();
        for (i, r) in self.running.iter_mut().enumerate() {
            let Some(max) = r.error_rate_max else {
                continue;
            };
            if !r.kinds.iter().any(|k| k == kind) {
                continue;
            }
            if r.window.len() == ERROR_WINDOW {
                r.window.pop_front();
            }
            r.window.push_back(error);
            let errors = r.window.iter().filter(|e| **e).count();
            if r.window.len() >= ERROR_WINDOW_MIN && errors * 100 > max as usize * r.window.len() {
                breached.push((
                    i,
                    format!(
                        "guard breached: {errors} errors in the last {} requests (at most {max} %)",
                        r.window.len()
                    ),
                ));
            }
        }
        for (i, why) in breached.into_iter().rev() {
            self.end(i, why);
        }
    }
}

/// Fills a correction target's body template for one hit: every string that is exactly
/// `{key}`, `{original}`, `{tampered}`, `{field}`, `{record_id}`, `{drill}` or `{reason}`
/// becomes that value; everything else is kept. Working on the parsed template, not on
/// text, keeps a value from ever changing the body's shape.
pub fn fill_correction(template: &Value, hit: &ProxyHit, reason: &str) -> Value {
    match template {
        Value::String(s) => match s.as_str() {
            "{key}" => Value::String(hit.hit.key.clone()),
            "{original}" => hit.hit.original.clone().unwrap_or(Value::Null),
            "{tampered}" => hit.hit.tampered.clone().unwrap_or(Value::Null),
            "{field}" => hit.hit.field.clone().map_or(Value::Null, Value::String),
            "{record_id}" => hit.hit.record_id.clone().map_or(Value::Null, Value::String),
            "{drill}" => Value::String(hit.drill.clone()),
            "{reason}" => Value::String(reason.into()),
            _ => template.clone(),
        },
        Value::Array(a) => {
            Value::Array(a.iter().map(|v| fill_correction(v, hit, reason)).collect())
        }
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), fill_correction(v, hit, reason)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Whether a hit can be booked back by a correction API: it changed a value and recorded
/// the original. Dropped, duplicated, delayed records and availability faults cannot; they
/// go to a person.
pub fn correctable(hit: &Hit) -> bool {
    hit.field.is_some() && hit.original.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_spec;
    use serde_json::json;

    fn spec(extra: &str) -> DrillSpec {
        parse_spec(&format!(
            "name = \"t\"\nmode = \"lossy\"\nrules = [\"r\"]\ncorrection = {{ target = \"billing\" }}\n{extra}\n[[faults]]\nkind = \"bill\"\nfield = \"amount\"\nmutation = {{ offset_minor = 1 }}\nlimits = {{ hits_max = 3 }}\n"
        ))
        .unwrap()
    }

    fn assign(drill: &str, s: &DrillSpec, remaining_ms: u64, version: u64) -> SyncResponse {
        SyncResponse {
            version,
            killswitch: false,
            drills: vec![Assignment {
                drill: drill.into(),
                spec: s.clone(),
                remaining_ms,
            }],
            acked: vec![],
        }
    }

    fn bill(key: &str) -> Value {
        json!({"biz_id": key, "amount": "10.00", "currency": "USD"})
    }

    fn seen<'a>(key: &'a str, body: &'a Value) -> Seen<'a> {
        Seen {
            kind: "bill",
            route: "POST /v1/bills",
            side: BodySide::Request,
            key,
            body: Some(body),
        }
    }

    #[test]
    fn a_drill_stops_at_its_deadline_without_the_controller() {
        let mut a = Active::new("p");
        a.apply(&assign("d1", &spec(""), 1_000, 1), 10_000);
        let b = bill("K1");
        assert!(a.decide(&seen("K1", &b), 10_500).unwrap().is_some());
        // No sync since: the TTL alone ends it.
        assert!(a.decide(&seen("K2", &b), 11_000).unwrap().is_none());
        assert_eq!(a.take_aborts()[0].drill, "d1");
        // A stale answer naming the drill again does not restart it.
        a.apply(&assign("d1", &spec(""), 60_000, 1), 11_001);
        assert!(a.decide(&seen("K3", &b), 11_002).unwrap().is_none());
    }

    #[test]
    fn a_renewal_never_stretches_the_lease() {
        let mut a = Active::new("p");
        a.apply(&assign("d1", &spec(""), 1_000, 1), 0);
        a.apply(&assign("d1", &spec(""), 5_000, 2), 100);
        assert!(a.running(999).contains(&"d1".to_string()));
        assert!(a.running(1_000).is_empty());
    }

    #[test]
    fn the_kill_switch_and_unassignment_stop_tampering_at_once() {
        let b = bill("K1");
        let mut a = Active::new("p");
        a.apply(&assign("d1", &spec(""), 60_000, 1), 0);
        let mut killed = assign("d1", &spec(""), 60_000, 2);
        killed.killswitch = true;
        a.apply(&killed, 1);
        assert!(a.decide(&seen("K1", &b), 2).unwrap().is_none());
        let mut b2 = Active::new("p");
        b2.apply(&assign("d1", &spec(""), 60_000, 1), 0);
        b2.apply(
            &SyncResponse {
                version: 2,
                ..Default::default()
            },
            1,
        );
        assert!(b2.decide(&seen("K1", &b), 2).unwrap().is_none());
        assert_eq!(b2.version(), 2);
    }

    #[test]
    fn hits_carry_the_original_and_are_numbered() {
        let mut a = Active::new("p");
        a.apply(&assign("d1", &spec(""), 60_000, 1), 0);
        let b = bill("K1");
        let d = a.decide(&seen("K1", &b), 5).unwrap().unwrap();
        assert_eq!(d.hit.id, "p-d1-1");
        assert!(matches!(d.action, Action::Replace(ref v) if v["amount"] == "10.01"));
        assert_eq!(d.hit.hit.original, Some(json!("10.00")));
        assert!(correctable(&d.hit.hit));
        let body = fill_correction(
            &json!({"biz_id": "{key}", "amount": "{original}", "reason": "{reason}", "kept": "{nope}"}),
            &d.hit,
            "drill d1",
        );
        assert_eq!(
            body,
            json!({"biz_id": "K1", "amount": "10.00", "reason": "drill d1", "kept": "{nope}"})
        );
    }

    #[test]
    fn a_dry_run_reports_what_it_would_do() {
        let mut a = Active::new("p");
        a.apply(&assign("d1", &spec("dry_run = true"), 60_000, 1), 0);
        let b = bill("K1");
        let d = a.decide(&seen("K1", &b), 1).unwrap().unwrap();
        assert!(d.hit.dry_run);
        assert_eq!(d.hit.hit.tampered, Some(json!("10.01")));
    }

    #[test]
    fn too_many_unacknowledged_hits_stop_tampering() {
        let mut s = spec("");
        s.faults[0].limits.hits_max = (HITS_UNACKED_MAX + 10) as u64;
        let mut a = Active::new("p");
        a.apply(&assign("d1", &s, 600_000, 1), 0);
        a.unacked = HITS_UNACKED_MAX;
        let b = bill("K");
        assert!(a.decide(&seen("K", &b), 1).unwrap().is_none());
        a.acknowledge(1);
        assert!(a.decide(&seen("K", &b), 1).unwrap().is_some());
    }

    #[test]
    fn the_error_rate_guard_ends_the_drill() {
        let mut a = Active::new("p");
        a.apply(
            &assign(
                "d1",
                &spec("guards = { error_rate_percent_max = 10 }"),
                60_000,
                1,
            ),
            0,
        );
        for i in 0..ERROR_WINDOW_MIN {
            a.outcome("bill", i % 10 == 0); // 10 %: at the bound, not above
        }
        assert_eq!(a.running(1), vec!["d1".to_string()]);
        a.outcome("payment", true); // another kind: not this drill's
        a.outcome("bill", true);
        assert!(a.running(1).is_empty());
        assert!(a.take_aborts()[0].reason.contains("guard breached"));
    }
}
