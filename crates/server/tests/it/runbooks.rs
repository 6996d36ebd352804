//! Runbooks end to end: verification ahead of time and its result shown, execution under
//! the runbook-executor role and four-eyes, the action's call only after approval, runs
//! and audit entries with who, approver and result, failures recorded, bad configuration
//! refused at start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use steadfast_server::runbooks::{FromFile, HeaderSource};
use steadfast_server::{HttpCall, RunbookConfig};

use crate::support::*;

/// What the runbooks' target was sent.
#[derive(Clone, Debug)]
struct Seen {
    dry_run: bool,
    authorization: Option<String>,
    key: Option<String>,
    body: Value,
}

/// A service with a switch: `POST /switch` makes the change, `POST /switch?dry_run=true`
/// only validates it. Each answers the status it is set to.
struct Target {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    action_status: Arc<AtomicU16>,
    verify_status: Arc<AtomicU16>,
}

impl Target {
    async fn start() -> Target {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let action_status = Arc::new(AtomicU16::new(200));
        let verify_status = Arc::new(AtomicU16::new(200));
        let (log, act, ver) = (seen.clone(), action_status.clone(), verify_status.clone());
        let app = axum::Router::new().route(
            "/switch",
            axum::routing::post(
                move |q: axum::extract::Query<HashMap<String, String>>,
                      headers: axum::http::HeaderMap,
                      body: String| {
                    let (log, act, ver) = (log.clone(), act.clone(), ver.clone());
                    async move {
                        let dry_run = q.get("dry_run").is_some_and(|v| v == "true");
                        let header = |h: &str| {
                            headers
                                .get(h)
                                .and_then(|v| v.to_str().ok())
                                .map(String::from)
                        };
                        log.lock().unwrap().push(Seen {
                            dry_run,
                            authorization: header("authorization"),
                            key: header("x-key"),
                            body: serde_json::from_str(&body).unwrap_or(Value::Null),
                        });
                        let status = if dry_run { &ver } else { &act }.load(Ordering::SeqCst);
                        (
                            axum::http::StatusCode::from_u16(status).unwrap(),
                            axum::Json(json!({ "payment_core": "standby", "dry_run": dry_run })),
                        )
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Target {
            url,
            seen,
            action_status,
            verify_status,
        }
    }

    fn actions(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| !s.dry_run)
            .cloned()
            .collect()
    }

    fn dry_runs(&self) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.dry_run)
            .count()
    }
}

const TOKEN_SECRET: &str = "target-token-not-to-be-shown";
const KEY_SECRET: &str = "target-key-not-to-be-shown";

/// A failover runbook on `target`, with a bearer token and a header from files.
fn failover(dir: &std::path::Path, target: &Target) -> RunbookConfig {
    let token_file = dir.join("target.token");
    std::fs::write(&token_file, format!("{TOKEN_SECRET}\n")).unwrap();
    let key_file = dir.join("target.key");
    std::fs::write(&key_file, KEY_SECRET).unwrap();
    let call = |query: &str| HttpCall {
        body: Some(json!({ "payment_core": "standby" })),
        token_file: Some(token_file.clone()),
        headers: [(
            "X-Key".to_string(),
            HeaderSource::File(FromFile {
                file: key_file.clone(),
            }),
        )]
        .into_iter()
        .collect(),
        ..HttpCall::new("POST", format!("{}/switch{query}", target.url))
    };
    RunbookConfig::new(
        "failover",
        "Switch to the standby payment core",
        &["latency", "errors"],
        &["payment-core"],
        call(""),
        call("?dry_run=true"),
    )
}

async fn start(runbooks: Vec<RunbookConfig>, dir: &std::path::Path) -> TestServer {
    let mut cfg = config(&dir.join("data"));
    cfg.runbooks = runbooks;
    TestServer::start_with(cfg).await
}

/// Polls the runbook list until the named runbook's last verification satisfies `pred`.
async fn wait_verified(s: &TestServer, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..200 {
        let (code, v) = s.get("/api/v1/runbooks").await;
        assert_eq!(code, 200, "{v}");
        let rb = v
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap();
        if pred(&rb["last_verification"]) {
            return rb;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("runbook {name}'s verification never satisfied the condition");
}

async fn audit_of(s: &TestServer, action: &str) -> Vec<Value> {
    let (code, v) = s
        .get(&format!("/api/v1/audit?action={action}&limit=1000"))
        .await;
    assert_eq!(code, 200, "{v}");
    v.as_array().unwrap().clone()
}

#[tokio::test]
async fn a_runbook_is_verified_ahead_of_time_and_its_last_result_is_shown() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::start().await;
    let mut s = start(vec![failover(dir.path(), &target)], dir.path()).await;

    // Verified on start, with nobody asking, by a dry run only.
    let rb = wait_verified(&s, "failover", |v| v["outcome"] == "ok").await;
    let v = &rb["last_verification"];
    assert_eq!(
        (v["status"].as_u64(), v["requested_by"].as_str()),
        (Some(200), Some("server")),
        "{rb}"
    );
    assert!(v["duration_ms"].as_u64().is_some() && v["started_at"].as_i64().unwrap() > 0);
    assert!(v["message"].as_str().unwrap().starts_with("200 OK"), "{v}");
    assert_eq!(
        (rb["four_eyes"].as_bool(), rb["auto_execute"].as_bool()),
        (Some(true), Some(false))
    );
    assert!(rb["last_execution"].is_null());
    assert!(target.dry_runs() >= 1);
    assert!(
        target.actions().is_empty(),
        "a verification never makes the change"
    );
    // The target got its credentials; readers see only that there are some.
    let first = target.seen.lock().unwrap()[0].clone();
    assert_eq!(
        first.authorization.as_deref(),
        Some(format!("Bearer {TOKEN_SECRET}").as_str())
    );
    assert_eq!(first.key.as_deref(), Some(KEY_SECRET));
    assert_eq!(first.body, json!({ "payment_core": "standby" }));
    assert_eq!(rb["action"]["headers"], json!(["X-Key"]));
    assert_eq!(rb["action"]["bearer_token"], true);
    let (_, listing) = s.get("/api/v1/runbooks").await;
    let text = listing.to_string();
    assert!(!text.contains(TOKEN_SECRET) && !text.contains(KEY_SECRET));

    // Verifying on request: a viewer may read, not verify.
    let viewer = s.token_for("viewer", "vic");
    let (code, _) = s
        .call(
            "post",
            "/api/v1/runbooks/failover/verify",
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(code, 403);
    assert_eq!(
        s.call("get", "/api/v1/runbooks", Some(&viewer), None)
            .await
            .0,
        200
    );
    // A failing dry run is a result too: shown as failed, with its status and answer.
    target.verify_status.store(503, Ordering::SeqCst);
    let alice = s.token_for("runbook-executor", "alice");
    let (code, r) = s
        .call(
            "post",
            "/api/v1/runbooks/failover/verify",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(
        (
            r["outcome"].as_str(),
            r["status"].as_u64(),
            r["requested_by"].as_str()
        ),
        (Some("failed"), Some(503), Some("alice"))
    );
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .starts_with("503 Service Unavailable"),
        "{r}"
    );
    let rb = wait_verified(&s, "failover", |v| v["outcome"] == "failed").await;
    assert_eq!(rb["last_verification"]["id"], r["id"]);
    let (_, history) = s.get("/api/v1/runbooks/failover/runs?kind=verify").await;
    assert!(history.as_array().unwrap().len() >= 2, "{history}");
    assert_eq!(history[0]["outcome"], "failed", "newest first");
    let verified = audit_of(&s, "runbook.verify").await;
    assert_eq!(
        (
            verified[0]["actor"].as_str(),
            verified[0]["result"].as_str()
        ),
        (Some("alice"), Some("200"))
    );
    assert_eq!(
        s.call("get", "/api/v1/runbooks/nothing/runs", Some(&viewer), None)
            .await
            .0,
        404
    );
    s.stop().await;
}

#[tokio::test]
async fn executing_needs_the_role_and_a_second_person_and_calls_only_after_approval() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::start().await;
    let mut s = start(vec![failover(dir.path(), &target)], dir.path()).await;
    wait_verified(&s, "failover", |v| v["outcome"] == "ok").await;
    let viewer = s.token_for("viewer", "vic");
    let carol = s.token_for("operator", "carol");
    let alice = s.token_for("runbook-executor", "alice");
    let alice_again = s.token_for("runbook-executor", "alice");
    let bob = s.token_for("runbook-executor", "bob");
    let execute = |token: String, body: Value| {
        let s = &s;
        async move {
            s.call(
                "post",
                "/api/v1/runbooks/failover/execute",
                Some(&token),
                Some(body),
            )
            .await
        }
    };

    let why = json!({ "reason": "payment core p99 at 4 s" });
    for (who, token) in [("a viewer", &viewer), ("an operator", &carol)] {
        let (code, v) = execute(token.clone(), why.clone()).await;
        assert_eq!(
            (code, v["code"].as_str()),
            (403, Some("forbidden")),
            "{who}"
        );
    }
    let (code, v) = execute(alice.clone(), json!({ "reason": " " })).await;
    assert_eq!(code, 400, "a reason is needed: {v}");
    let (code, v) = execute(alice.clone(), why.clone()).await;
    assert_eq!(code, 202, "{v}");
    let id = v["pending_approval"]["id"].as_u64().unwrap();
    assert_eq!(v["pending_approval"]["action"], "runbook.execute");
    assert!(
        target.actions().is_empty(),
        "nothing is called before approval"
    );

    for (who, token, code_want) in [
        ("alice", &alice, "same_person"),
        ("alice with another token", &alice_again, "same_person"),
        ("carol, who may not execute runbooks", &carol, "forbidden"),
    ] {
        let (code, v) = s
            .call(
                "post",
                &format!("/api/v1/approvals/{id}/approve"),
                Some(token),
                Some(json!({})),
            )
            .await;
        assert_eq!(
            (code, v["code"].as_str()),
            (403, Some(code_want)),
            "{who}: {v}"
        );
    }
    assert!(target.actions().is_empty());
    let (code, v) = s
        .call(
            "post",
            &format!("/api/v1/approvals/{id}/approve"),
            Some(&bob),
            Some(json!({ "reason": "checked the dashboards" })),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        (v["status"].as_str(), v["decided_by"].as_str()),
        (Some("approved"), Some("bob"))
    );
    let actions = target.actions();
    assert_eq!(actions.len(), 1, "called once, on approval");
    assert_eq!(actions[0].body, json!({ "payment_core": "standby" }));

    // The run: who asked, who approved, why, when, what came of it.
    let (_, runs) = s.get("/api/v1/runbooks/failover/runs").await;
    let run = &runs[0];
    assert_eq!(
        (
            run["outcome"].as_str(),
            run["status"].as_u64(),
            run["requested_by"].as_str(),
            run["approved_by"].as_str(),
            run["approval"].as_u64(),
            run["reason"].as_str(),
            run["forced"].as_bool()
        ),
        (
            Some("ok"),
            Some(200),
            Some("alice"),
            Some("bob"),
            Some(id),
            Some("payment core p99 at 4 s"),
            Some(false)
        ),
        "{run}"
    );
    let (_, list) = s.get("/api/v1/runbooks").await;
    assert_eq!(list[0]["last_execution"]["id"], run["id"]);
    // The audit log: the request, the approval, the action, and the run with its result.
    let ran = audit_of(&s, "runbook.run").await;
    assert_eq!(ran.len(), 1);
    assert_eq!(
        (
            ran[0]["actor"].as_str(),
            ran[0]["approver"].as_str(),
            ran[0]["result"].as_str(),
            ran[0]["target"].as_str()
        ),
        (
            Some("alice"),
            Some("bob"),
            Some("ok"),
            Some("runbook failover")
        )
    );
    let detail: Value = serde_json::from_str(ran[0]["detail"].as_str().unwrap()).unwrap();
    assert_eq!(
        (detail["status"].as_u64(), detail["approval"].as_u64()),
        (Some(200), Some(id))
    );
    assert!(ran[0]["at"].as_i64().unwrap() > 0);
    let requested = audit_of(&s, "runbook.execute.request").await;
    assert_eq!(requested[0]["actor"], "alice");
    let approved = audit_of(&s, "runbook.execute.approve").await;
    assert_eq!(
        approved
            .iter()
            .filter(|e| e["result"] == "200")
            .map(|e| e["actor"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["bob"]
    );
    let done = audit_of(&s, "runbook.execute").await;
    assert_eq!(
        (
            done[0]["actor"].as_str(),
            done[0]["approver"].as_str(),
            done[0]["result"].as_str()
        ),
        (Some("alice"), Some("bob"), Some("done"))
    );

    // An approved execution whose call fails: the run, the approval and the audit say so.
    target.action_status.store(500, Ordering::SeqCst);
    let (code, v) = execute(alice.clone(), why.clone()).await;
    assert_eq!(code, 202, "{v}");
    let id = v["pending_approval"]["id"].as_u64().unwrap();
    let (code, v) = s
        .call(
            "post",
            &format!("/api/v1/approvals/{id}/approve"),
            Some(&bob),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (code, v["code"].as_str()),
        (502, Some("runbook_failed")),
        "{v}"
    );
    let (_, approvals) = s.get("/api/v1/approvals?status=failed").await;
    assert_eq!(approvals[0]["id"].as_u64(), Some(id), "{approvals}");
    let (_, runs) = s.get("/api/v1/runbooks/failover/runs").await;
    assert_eq!(
        (runs[0]["outcome"].as_str(), runs[0]["status"].as_u64()),
        (Some("failed"), Some(500))
    );
    let ran = audit_of(&s, "runbook.run").await;
    assert_eq!(
        (ran[1]["result"].as_str(), ran[1]["approver"].as_str()),
        (Some("failed"), Some("bob"))
    );
    let (_, check) = s.get("/api/v1/audit/verify").await;
    assert_eq!(check["ok"], true, "{check}");
    s.stop().await;
}

#[tokio::test]
async fn an_unverified_runbook_needs_force_and_a_failing_action_is_recorded_as_failed() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::start().await;
    target.verify_status.store(409, Ordering::SeqCst);
    target.action_status.store(500, Ordering::SeqCst);
    let mut book = failover(dir.path(), &target);
    // This one runs at once: no second person.
    book.four_eyes = Some(false);
    let mut s = start(vec![book], dir.path()).await;
    let rb = wait_verified(&s, "failover", |v| v["outcome"] == "failed").await;
    assert_eq!(rb["four_eyes"], false);
    let alice = s.token_for("runbook-executor", "alice");
    let (code, v) = s
        .call(
            "post",
            "/api/v1/runbooks/failover/execute",
            Some(&alice),
            Some(json!({ "reason": "errors on the core" })),
        )
        .await;
    assert_eq!(
        (code, v["code"].as_str()),
        (409, Some("not_verified")),
        "{v}"
    );
    assert!(v["message"].as_str().unwrap().contains("409"), "{v}");
    assert!(target.actions().is_empty());

    let (code, v) = s
        .call(
            "post",
            "/api/v1/runbooks/failover/execute",
            Some(&alice),
            Some(json!({ "reason": "errors on the core", "force": true })),
        )
        .await;
    assert_eq!(
        (code, v["code"].as_str()),
        (502, Some("runbook_failed")),
        "{v}"
    );
    assert!(v["message"].as_str().unwrap().contains("500"), "{v}");
    assert_eq!(target.actions().len(), 1);
    let (_, runs) = s.get("/api/v1/runbooks/failover/runs").await;
    assert_eq!(
        (
            runs[0]["outcome"].as_str(),
            runs[0]["status"].as_u64(),
            runs[0]["forced"].as_bool(),
            runs[0]["approved_by"].as_str()
        ),
        (Some("failed"), Some(500), Some(true), None)
    );
    let ran = audit_of(&s, "runbook.run").await;
    assert_eq!(
        (
            ran[0]["actor"].as_str(),
            ran[0]["result"].as_str(),
            ran[0]["approver"].as_str()
        ),
        (Some("alice"), Some("failed"), None)
    );
    let route = audit_of(&s, "runbook.execute").await;
    assert_eq!(route.last().unwrap()["result"], "502 runbook_failed");

    // Put right, verified again, executed at once.
    target.verify_status.store(200, Ordering::SeqCst);
    target.action_status.store(200, Ordering::SeqCst);
    let (_, r) = s
        .call(
            "post",
            "/api/v1/runbooks/failover/verify",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(r["outcome"], "ok", "{r}");
    let (code, v) = s
        .call(
            "post",
            "/api/v1/runbooks/failover/execute",
            Some(&alice),
            Some(json!({ "reason": "errors on the core" })),
        )
        .await;
    assert_eq!((code, v["outcome"].as_str()), (200, Some("ok")), "{v}");
    assert_eq!(target.actions().len(), 2);
    s.stop().await;
}

#[tokio::test]
async fn bad_runbook_configuration_is_refused_at_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::start().await;
    let good = failover(dir.path(), &target);
    let rules = Arc::new(steadfast_verify::parse_rules(steadfast_server::DEFAULT_RULES).unwrap());
    let refused = |books: Vec<RunbookConfig>| {
        let mut cfg = config(&dir.path().join("data"));
        cfg.runbooks = books;
        let rules = rules.clone();
        async move {
            match steadfast_server::Server::start(cfg, rules, false).await {
                Ok(_) => panic!("a bad runbook must not start"),
                Err(e) => e.to_string(),
            }
        }
    };
    let err = refused(vec![good.clone(), good.clone()]).await;
    assert_eq!(err, "runbooks: \"failover\" is named twice");
    let mut ftp = good.clone();
    ftp.action.url = "ftp://127.0.0.1/switch".into();
    assert_eq!(
        refused(vec![ftp]).await,
        "runbooks \"failover\": action: url must be http or https, with a host"
    );
    let mut garbled = good.clone();
    garbled.verify.url = "switch?dry_run=true".into();
    let err = refused(vec![garbled]).await;
    assert!(
        err.starts_with("runbooks \"failover\": verify: url:"),
        "{err}"
    );
    let mut fault = good.clone();
    fault.fault_types = vec!["slow".into()];
    let err = refused(vec![fault]).await;
    assert!(err.contains("unknown fault type \"slow\""), "{err}");
    let mut missing = good;
    missing.action.token_file = Some(dir.path().join("no-such.token"));
    let err = refused(vec![missing]).await;
    assert!(
        err.contains("action: token_file") && err.contains("no-such.token"),
        "{err}"
    );

    // The TOML form, as an operator writes it.
    let text = format!(
        r#"
        [[runbooks]]
        name = "flags-off"
        description = "Switch notifications off"
        fault_types = ["overload"]
        services = ["notification"]
        verify_every_secs = 600
        [runbooks.action]
        method = "POST"
        url = "{url}/switch"
        body = {{ notifications = false }}
        [runbooks.verify]
        method = "POST"
        url = "{url}/switch?dry_run=true"
        body = {{ notifications = false }}
        expect_status = 200
        "#,
        url = target.url
    );
    let cfg: steadfast_server::Config = toml::from_str(&text).unwrap();
    cfg.validate().unwrap();
    assert_eq!(cfg.runbooks[0].verify_every_secs, 600);
    let found = steadfast_server::runbooks::suggest(&cfg.runbooks, "notification", "overload");
    assert_eq!(found.len(), 1);
}
