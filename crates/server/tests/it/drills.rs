//! Lossless drills through the running server: forged records through the real pipeline,
//! discovery measured from the stored breaks, nothing reaching webhooks or the default
//! break listing; the kill switch, dry runs and stop.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

const OFF_BY_ONE: &str = r#"
name = "bill one cent high"
rules = ["payment-bill"]
[[faults]]
kind = "bill"
field = "amount"
mutation = { offset_minor = 1 }
limits = { hits_max = 100 }
"#;

/// Real traffic to shape forgeries from: a matched payment and bill.
async fn real_traffic(s: &TestServer) {
    real_traffic_from(s, None).await;
}

/// A matched payment and bill, paid from `account` when one is given.
async fn real_traffic_from(s: &TestServer, account: Option<&str>) {
    let now = chrono_now();
    let mut p = payment("p-real", "ORD-1", "42.00");
    let mut b = bill("b-real", "ORD-1", "42.00");
    p["event_time"] = json!(now);
    b["event_time"] = json!(now);
    if let Some(a) = account {
        p["account"] = json!(a);
        b["attributes"] = json!({ "payer_account": a });
    }
    assert_eq!(s.post("/api/v1/records", body(&[p, b])).await.0, 200);
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn wait_ended(s: &TestServer, token: &str, id: &str) -> Value {
    for _ in 0..300 {
        let (_, d) = s
            .call("get", &format!("/api/v1/drills/{id}"), Some(token), None)
            .await;
        if !matches!(d["state"].as_str(), Some("pending" | "running")) {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("drill {id} never ended");
}

async fn start(s: &TestServer, token: &str, id: &str) -> (u16, Value) {
    s.call(
        "post",
        &format!("/api/v1/drills/{id}/start"),
        Some(token),
        None,
    )
    .await
}

async fn create(s: &TestServer, token: &str, spec: &str, pairs: usize) -> String {
    let (code, d) = s
        .call(
            "post",
            "/api/v1/drills",
            Some(token),
            Some(json!({"spec": spec, "pairs": pairs})),
        )
        .await;
    assert_eq!(code, 201, "{d}");
    d["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_lossless_drill_of_100_faults_is_found_100_of_100_without_a_production_alert() {
    let (hook, received, _) = webhook_receiver(0).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.webhook.url = Some(hook);
    let mut s = TestServer::start_with(cfg).await;
    let op = s.token_for("operator", "olga");
    real_traffic(&s).await;
    let id = create(&s, &op, OFF_BY_ONE, 120).await;
    let (code, v) = start(&s, &op, &id).await;
    assert_eq!(code, 202, "{v}");
    let d = wait_ended(&s, &op, &id).await;
    assert_eq!(d["state"], "completed", "{d}");
    let r = &d["report"];
    assert_eq!(
        (
            r["injected"].as_u64(),
            r["discovered"].as_u64(),
            r["missed"].as_u64()
        ),
        (Some(100), Some(100), Some(0)),
        "{r}"
    );
    assert_eq!(
        r["false_positives"],
        json!([]),
        "the 20 clean controls raised nothing"
    );
    assert_eq!(r["passed"], true);
    let (code, md) = (
        s.http
            .get(format!(
                "{}/api/v1/drills/{id}/report?format=markdown",
                s.base
            ))
            .bearer_auth(&op)
            .send()
            .await
            .unwrap()
            .status(),
        s.http
            .get(format!(
                "{}/api/v1/drills/{id}/report?format=markdown",
                s.base
            ))
            .bearer_auth(&op)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(code, 200);
    assert!(
        md.contains("**PASSED**") && md.contains("| faults injected | 100 |"),
        "{md}"
    );
    // Drill breaks are the drill's: not in the default listing, never at the webhook.
    let (_, prod) = s.get("/api/v1/breaks").await;
    assert_eq!(prod, json!([]), "no production break");
    let (_, mine) = s
        .get(&format!("/api/v1/breaks?drill={id}&limit=1000"))
        .await;
    assert_eq!(mine.as_array().unwrap().len(), 100);
    assert!(
        mine.as_array()
            .unwrap()
            .iter()
            .all(|b| b["status"] == "resolved"),
        "nothing of the drill is left open"
    );
    assert_eq!(d["breaks_closed"], 100);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        received.lock().unwrap().is_empty(),
        "no webhook for drill breaks"
    );
    // A real break during a drill is still alerted: the production path is untouched.
    assert_eq!(
        s.post(
            "/api/v1/records",
            body(&[payment("p2", "ORD-2", "1.00"), bill("b2", "ORD-2", "2.00")])
        )
        .await
        .0,
        200
    );
    for _ in 0..100 {
        if !received.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(received.lock().unwrap().len(), 1);
    // Both steps are on record, on the operator's name.
    let (_, audit) = s.get("/api/v1/audit?actor=olga").await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["drill.create", "drill.start"]);
    s.stop().await;
}

#[tokio::test]
async fn the_kill_switch_refuses_new_drills_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.approvals.required = vec![];
    let mut s = TestServer::start_with(cfg).await;
    real_traffic(&s).await;
    let id = create(&s, &s.token, OFF_BY_ONE, 5).await;
    assert_eq!(
        s.call(
            "post",
            "/api/v1/killswitch",
            Some(&s.token),
            Some(json!({"reason": "stop"}))
        )
        .await
        .0,
        200
    );
    let (code, v) = start(&s, &s.token, &id).await;
    assert_eq!(
        (code, v["code"].as_str()),
        (409, Some("cannot_start")),
        "{v}"
    );
    assert!(v["message"].as_str().unwrap().contains("kill switch"));
    assert_eq!(
        s.call(
            "delete",
            "/api/v1/killswitch",
            Some(&s.token),
            Some(json!({"reason": "clear"}))
        )
        .await
        .0,
        200
    );
    let (code, _) = start(&s, &s.token, &id).await;
    assert_eq!(code, 202);
    assert_eq!(
        wait_ended(&s, &s.token, &id).await["report"]["discovered"],
        5
    );
    s.stop().await;
}

#[tokio::test]
async fn a_dry_run_injects_nothing_and_stop_is_idempotent() {
    let mut s = TestServer::start().await;
    real_traffic(&s).await;
    let dry = format!("dry_run = true\n{OFF_BY_ONE}");
    let id = create(&s, &s.token, &dry, 10).await;
    assert_eq!(start(&s, &s.token, &id).await.0, 202);
    let d = wait_ended(&s, &s.token, &id).await;
    assert_eq!(d["state"], "completed");
    assert_eq!(
        d["planted"].as_array().unwrap().len(),
        10,
        "what would be injected"
    );
    assert_eq!(d["report"]["injected"], 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, mine) = s.get(&format!("/api/v1/breaks?drill={id}")).await;
    assert_eq!(mine, json!([]), "nothing was sent");

    let id = create(&s, &s.token, OFF_BY_ONE, 5).await;
    for _ in 0..2 {
        let (code, d) = s
            .call(
                "post",
                &format!("/api/v1/drills/{id}/stop"),
                Some(&s.token),
                None,
            )
            .await;
        assert_eq!((code, d["state"].as_str()), (200, Some("stopped")));
    }
    let (code, _) = start(&s, &s.token, &id).await;
    assert_eq!(code, 409, "an ended drill does not start again");
    // Specs are checked before anything is stored.
    let lossy = OFF_BY_ONE.replace("rules = ", "mode = \"lossy\"\nrules = ");
    let (code, v) = s
        .call(
            "post",
            "/api/v1/drills",
            Some(&s.token),
            Some(json!({"spec": lossy})),
        )
        .await;
    assert_eq!((code, v["code"].as_str()), (400, Some("bad_spec")), "{v}");
    let (code, v) = s
        .call(
            "post",
            "/api/v1/drills",
            Some(&s.token),
            Some(json!({"spec": OFF_BY_ONE.replace("payment-bill", "nope")})),
        )
        .await;
    assert_eq!(code, 400, "{v}");
    s.stop().await;
}

#[tokio::test]
async fn a_guard_aborts_the_drill_when_real_breaks_appear() {
    let mut s = TestServer::start().await;
    real_traffic(&s).await;
    // Dropped bills are found only after the bill's lateness budget: a drill that runs a
    // while, long enough for a real break to happen meanwhile.
    let spec = OFF_BY_ONE.replace(
        "field = \"amount\"\nmutation = { offset_minor = 1 }",
        "mutation = \"drop_record\"",
    ) + "[guards]\nreal_breaks_max = 0\n";
    let id = create(&s, &s.token, &spec, 3).await;
    assert_eq!(start(&s, &s.token, &id).await.0, 202);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.post(
            "/api/v1/records",
            body(&[payment("p9", "ORD-9", "1.00"), bill("b9", "ORD-9", "9.00")])
        )
        .await
        .0,
        200
    );
    let d = wait_ended(&s, &s.token, &id).await;
    assert_eq!(d["state"], "aborted", "{d}");
    assert!(
        d["error"]
            .as_str()
            .unwrap()
            .contains("guard breached: 1 real breaks"),
        "{d}"
    );
    // The abort is in the audit log, with the breach.
    let (_, audit) = s.get("/api/v1/audit?action=drill.abort").await;
    let entry = audit
        .as_array()
        .unwrap()
        .first()
        .cloned()
        .unwrap_or_default();
    assert_eq!(entry["target"], format!("drill {id}"), "{audit}");
    assert!(
        entry["detail"].as_str().unwrap().contains("guard breached"),
        "{entry}"
    );
    let (code, v) = s
        .call(
            "post",
            "/api/v1/drills",
            Some(&s.token),
            Some(json!({"spec": format!("{OFF_BY_ONE}[guards]\nerror_rate_percent_max = 5\n")})),
        )
        .await;
    assert_eq!(
        code, 400,
        "a guard the server cannot evaluate is refused: {v}"
    );
    s.stop().await;
}

async fn schedule_every_second(s: &TestServer, spec: &str) -> String {
    let (code, v) = s
        .call(
            "post",
            "/api/v1/drill-schedules",
            Some(&s.token),
            Some(json!({"name": "routine", "cron": "* * * * * *", "spec": spec, "pairs": 2})),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    v["id"].as_str().unwrap().to_string()
}

async fn history(s: &TestServer, id: &str) -> Vec<Value> {
    for _ in 0..100 {
        let (_, list) = s.get("/api/v1/drill-schedules").await;
        let h = list
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == id)
            .map(|x| x["history"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default();
        if !h.is_empty() {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("schedule {id} never fired");
}

#[tokio::test]
async fn a_schedule_fires_a_routine_drill() {
    let mut s = TestServer::start().await;
    real_traffic(&s).await;
    let (code, v) = s
        .call(
            "post",
            "/api/v1/drill-schedules",
            Some(&s.token),
            Some(json!({"name": "x", "cron": "every day", "spec": OFF_BY_ONE})),
        )
        .await;
    assert_eq!((code, v["code"].as_str()), (400, Some("bad_cron")), "{v}");
    let id = schedule_every_second(&s, OFF_BY_ONE).await;
    let h = history(&s, &id).await;
    assert_eq!(h[0]["decision"], "start", "{h:?}");
    let drill = h[0]["drill"].as_str().unwrap().to_string();
    let d = wait_ended(&s, &s.token, &drill).await;
    assert_eq!(d["report"]["discovered"], 2, "{d}");
    assert!(d["created_by"].as_str().unwrap().starts_with("schedule:"));
    assert_eq!(
        s.call(
            "delete",
            &format!("/api/v1/drill-schedules/{id}"),
            Some(&s.token),
            None
        )
        .await
        .0,
        200
    );
    s.stop().await;
}

#[tokio::test]
async fn a_blackout_window_keeps_a_schedule_from_starting_drills() {
    let mut s = TestServer::start().await;
    real_traffic(&s).await;
    let now = chrono_now();
    let rfc = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339()
    };
    let (code, b) = s
        .call(
            "post",
            "/api/v1/drill-blackouts",
            Some(&s.token),
            Some(json!({"reason": "month-end close", "from": rfc(now - 3_600_000), "to": rfc(now + 3_600_000)})),
        )
        .await;
    assert_eq!(code, 201, "{b}");
    let id = schedule_every_second(&s, OFF_BY_ONE).await;
    let h = history(&s, &id).await;
    assert_eq!(h[0]["decision"], "skip");
    assert_eq!(h[0]["reason"], "blackout: month-end close");
    assert!(h[0]["drill"].is_null());
    let (_, drills) = s.get("/api/v1/drills").await;
    assert_eq!(drills, json!([]), "no drill was started");
    // Removing a blackout is for drill admins.
    let op = s.token_for("operator", "o");
    let bid = b["id"].as_str().unwrap();
    assert_eq!(
        s.call(
            "delete",
            &format!("/api/v1/drill-blackouts/{bid}"),
            Some(&op),
            None
        )
        .await
        .0,
        403
    );
    assert_eq!(
        s.call(
            "delete",
            &format!("/api/v1/drill-blackouts/{bid}"),
            Some(&s.token),
            None
        )
        .await
        .0,
        200
    );
    s.stop().await;
}

/// A drill stopped before its held-back records were sent leaves forged records pending
/// in the engine; their breaks come once the lateness budget runs out, and are closed
/// then, so nothing of the drill stays open.
#[tokio::test]
async fn a_drill_stopped_early_leaves_nothing_open() {
    let mut s = TestServer::start().await;
    real_traffic(&s).await;
    let spec = OFF_BY_ONE.replace("offset_minor = 1", "delay_ms = 60000");
    let id = create(&s, &s.token, &spec, 5).await;
    assert_eq!(start(&s, &s.token, &id).await.0, 202);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stop = format!("/api/v1/drills/{id}/stop");
    assert_eq!(s.call("post", &stop, Some(&s.token), None).await.0, 200);
    let d = wait_ended(&s, &s.token, &id).await;
    assert_eq!(d["state"], "stopped", "{d}");
    // The lone payments of the held-back bills break once their budget runs out...
    let mut seen = Vec::new();
    for _ in 0..200 {
        let (_, all) = s.get(&format!("/api/v1/breaks?drill={id}")).await;
        seen = all.as_array().unwrap().clone();
        if seen.len() >= 5 && seen.iter().all(|b| b["status"] == "resolved") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ... and are closed as soon as they come.
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(seen.iter().all(|b| b["status"] == "resolved"), "{seen:?}");
    let (_, prod) = s.get("/api/v1/breaks").await;
    assert_eq!(prod, json!([]), "and none is a production break");
    s.stop().await;
}

#[tokio::test]
async fn a_drill_shows_tampered_account_values_masked_except_to_roles_configured_to_see_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.masking.unmasked_roles = vec!["drill-admin".into()];
    let mut s = TestServer::start_with(cfg).await;
    let op = s.token_for("operator", "olga");
    let viewer = s.token_for("viewer", "vera");
    let full = s.token_for("drill-admin", "dora");
    real_traffic_from(&s, Some("6222020200112233")).await;
    let spec = r#"
name = "bill paid from another account"
rules = ["payment-bill"]
[[faults]]
kind = "bill"
field = "attributes.payer_account"
mutation = { set = "6222020200119999" }
limits = { hits_max = 3 }
"#;
    let id = create(&s, &op, spec, 3).await;
    let (code, v) = start(&s, &op, &id).await;
    assert_eq!(code, 202, "{v}");
    let shown = wait_ended(&s, &viewer, &id).await;
    let planted = shown["planted"].as_array().unwrap();
    assert!(!planted.is_empty(), "{shown}");
    for p in planted {
        assert_eq!(p["hit"]["field"], "attributes.payer_account", "{p}");
        assert_eq!(p["hit"]["tampered"], "************9999", "{p}");
    }
    let (_, whole) = s
        .call("get", &format!("/api/v1/drills/{id}"), Some(&full), None)
        .await;
    for p in whole["planted"].as_array().unwrap() {
        assert_eq!(p["hit"]["tampered"], "6222020200119999", "{p}");
    }
    s.stop().await;
}
