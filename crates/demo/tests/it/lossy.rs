//! Lossy drills through the fault-injection proxy on the running platform, over real HTTP:
//! the payment core's bills are tampered in flight, verification finds them, billing's
//! correction API puts them right, and the kill switch stops it all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::Rig;

/// The shipped example: 20 bills a cent high, corrected through billing.
const SPEC: &str = include_str!("../../../../examples/drill-lossy-bills.toml");

async fn call(
    rig: &Rig,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let r = rig
        .http
        .request(method, format!("{}{path}", rig.base))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(rig: &Rig, token: &str, path: &str, body: Value) -> (u16, Value) {
    call(rig, token, reqwest::Method::POST, path, body).await
}

/// Waits until the drill satisfies `done`, driving traffic meanwhile when `drive`.
async fn until(rig: &Rig, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let d = rig.get(&format!("/api/v1/drills/{id}")).await;
        if done(&d) {
            return d;
        }
        assert!(Instant::now() < deadline, "drill never {what}: {d}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates the lossy drill, asks to start it and has the second person approve.
async fn start_approved(rig: &Rig, second: &str, spec: &str) -> String {
    let (code, d) = post(rig, &rig.token, "/api/v1/drills", json!({ "spec": spec })).await;
    assert_eq!(code, 201, "{d}");
    let id = d["id"].as_str().unwrap().to_string();
    let (code, v) = post(
        rig,
        &rig.token,
        &format!("/api/v1/drills/{id}/start"),
        json!({}),
    )
    .await;
    assert_eq!(code, 202, "a lossy drill waits for a second person: {v}");
    let approval = v["pending_approval"]["id"].as_u64().unwrap();
    let (code, v) = post(
        rig,
        &rig.token,
        &format!("/api/v1/approvals/{approval}/approve"),
        json!({}),
    )
    .await;
    assert_eq!(code, 403, "the requester cannot approve it: {v}");
    let (code, v) = post(
        rig,
        second,
        &format!("/api/v1/approvals/{approval}/approve"),
        json!({}),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    until(rig, &id, "started", |d| d["state"] == "running").await;
    id
}

/// Plays traffic in the background until stopped.
fn traffic(
    rig: &Arc<Rig>,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let rig = rig.clone();
    let task = tokio::spawn(async move { rig.drive_until(300.0, rx).await });
    (tx, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_drill_tampers_20_bills_finds_20_and_corrects_every_one() {
    let mut rig = Rig::start(29, 400).await;
    rig.with_proxy().await;
    let second = rig.second_person();
    let rig = Arc::new(rig);
    let id = start_approved(&rig, &second, SPEC).await;
    let (stop, task) = traffic(&rig);
    let d = until(&rig, &id, "reached its corrections", |d| {
        d["state"] == "correcting"
    })
    .await;
    let _ = stop.send(true);
    task.await.unwrap();
    let r = &d["report"];
    assert_eq!(
        (r["injected"].as_u64(), r["discovered"].as_u64()),
        (Some(20), Some(20)),
        "{d}"
    );
    assert_eq!(r["false_positives"], json!([]), "{d}");
    // Every hit recorded what the bill was and what it became.
    for h in d["hits"].as_array().unwrap() {
        let (orig, tampered) = (
            h["hit"]["original"].as_str().unwrap(),
            h["hit"]["tampered"].as_str().unwrap(),
        );
        assert_ne!(orig, tampered, "{h}");
    }
    // Corrections wait for a second person, filed on the starter's name.
    assert_eq!(d["correction"]["state"], "awaiting_approval", "{d}");
    let approval = d["correction"]["approval"].as_u64().unwrap();
    let (code, v) = post(
        &rig,
        &second,
        &format!("/api/v1/approvals/{approval}/approve"),
        json!({}),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let d = until(&rig, &id, "completed", |d| d["state"] != "correcting").await;
    assert_eq!(d["state"], "completed", "{d}");
    assert_eq!(d["correction"]["state"], "done", "{d}");
    let hits = d["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 20);
    assert!(hits.iter().all(|h| h["state"] == "recovered"), "{d}");
    assert_eq!(d["report"]["corrected"], 20, "{d}");
    assert!(
        d["report"]["time_to_recover_ms_max"].as_i64().is_some(),
        "{d}"
    );
    // The bills hold their original amounts again, and the rule has nothing open.
    let billing = rig.platform().endpoints.billing.clone();
    for h in hits {
        let key = h["hit"]["key"].as_str().unwrap();
        let bill: Value = rig
            .http
            .get(format!("{billing}/v1/bills/{key}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(bill["amount"], h["hit"]["original"], "bill {key}");
    }
    let open = rig
        .get("/api/v1/breaks?rule=payment-bill&status=open&limit=1000")
        .await;
    assert_eq!(open, json!([]), "no open break on the rule");
    let audit = rig
        .get("/api/v1/audit?action=correction.book&limit=100")
        .await;
    let booked = audit.as_array().unwrap();
    assert_eq!(booked.len(), 20, "every correction is audited");
    assert!(
        booked.iter().all(|e| e["approver"] == "second-person"),
        "{audit}"
    );
    Arc::try_unwrap(rig).ok().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_the_kill_switch_returns_nothing_more_is_tampered_and_no_drill_starts() {
    let mut rig = Rig::start(37, 400).await;
    rig.with_proxy().await;
    let second = rig.second_person();
    let rig = Arc::new(rig);
    let spec = SPEC.replace("hits_max = 20", "hits_max = 100000");
    let id = start_approved(&rig, &second, &spec).await;
    let (stop, task) = traffic(&rig);
    let proxy = || rig.proxy.as_ref().unwrap().counters();
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy().tampered < 5 {
        assert!(
            Instant::now() < deadline,
            "nothing was tampered: {:?}",
            proxy()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, k) = post(
        &rig,
        &rig.token,
        "/api/v1/killswitch",
        json!({ "reason": "test" }),
    )
    .await;
    assert_eq!(code, 200, "{k}");
    assert_eq!(
        k["proxies"],
        json!([{ "proxy": "billing", "stopped": true }]),
        "{k}"
    );
    let tampered = proxy().tampered;
    let requests = proxy().requests;
    // More traffic through the proxy, none of it tampered.
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy().requests < requests + 30 {
        assert!(
            Instant::now() < deadline,
            "no traffic after the kill switch"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        proxy().tampered,
        tampered,
        "tampered after the kill switch returned"
    );
    let _ = stop.send(true);
    task.await.unwrap();
    let d = until(&rig, &id, "ended", |d| d["state"] != "running").await;
    assert!(
        d["lease"]["state"].to_string().contains("kill_switch"),
        "{d}"
    );
    // New drills are refused until it is released.
    let (code, n) = post(&rig, &rig.token, "/api/v1/drills", json!({ "spec": SPEC })).await;
    assert_eq!(code, 201, "{n}");
    let nid = n["id"].as_str().unwrap();
    let (code, _) = post(
        &rig,
        &rig.token,
        &format!("/api/v1/drills/{nid}/start"),
        json!({}),
    )
    .await;
    assert_eq!(code, 202, "the request is filed");
    let approvals = rig.get("/api/v1/approvals?status=pending").await;
    let a = approvals
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "drill.lossy")
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    let (code, v) = post(
        &rig,
        &second,
        &format!("/api/v1/approvals/{a}/approve"),
        json!({}),
    )
    .await;
    assert_ne!(
        code, 200,
        "approved, but the kill switch refuses the start: {v}"
    );
    assert!(v.to_string().contains("kill switch"), "{v}");
    Arc::try_unwrap(rig).ok().unwrap().stop().await;
}
