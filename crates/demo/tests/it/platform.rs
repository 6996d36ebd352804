use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::Rig;

/// Operations in the quiet run: ten minutes at the default 50 per second.
fn quiet_ops() -> u64 {
    std::env::var("STEADFAST_DEMO_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000)
}

fn count(path: &std::path::Path, sql: &str) -> i64 {
    let c = rusqlite::Connection::open(path).unwrap();
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_without_faults_raises_no_break() {
    let mut rig = Rig::start(11, 2_000).await;
    let ops = quiet_ops();
    let started = Instant::now();
    let stats = rig.drive(ops, 3_000.0).await;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{ops} operations in {secs:.1} s ({:.0}/s)",
        ops as f64 / secs
    );
    assert_eq!(stats.errors.load(Ordering::Relaxed), 0);
    assert!(stats.succeeded.load(Ordering::Relaxed) > ops * 9 / 10);
    let db = rig.dir().join("platform");
    let acknowledged = rig.stop_platform().await;
    rig.settle(acknowledged).await;
    let status = rig.status().await;
    let breaks = rig.breaks().await;
    assert!(
        breaks.is_empty(),
        "false positives: {:#?}",
        &breaks[..breaks.len().min(5)]
    );
    assert_eq!(status["records_seen"].as_u64().unwrap(), acknowledged);
    assert_eq!(
        status["open_records_total"], 0,
        "every key was evaluated: {status}"
    );
    // The run exercised every fund link.
    for (file, sql, min) in [
        (
            "billing.db",
            "SELECT count(*) FROM bills WHERE status = 'INSTALMENT'",
            100,
        ),
        ("billing.db", "SELECT count(*) FROM credit_notes", 50),
        (
            "payment-core.db",
            "SELECT count(*) FROM refunds WHERE status = 'SUCCESS'",
            200,
        ),
        (
            "wallet.db",
            "SELECT count(*) FROM movements WHERE origin = 'withdraw'",
            100,
        ),
        ("wallet.db", "SELECT sum(snapshots) FROM wallets", 500),
        (
            "accounting.db",
            "SELECT count(DISTINCT currency) FROM entries",
            8,
        ),
    ] {
        let n = count(&db.join(file), sql);
        assert!(n >= min * ops as i64 / 30_000, "{sql}: {n}");
    }
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_corrupted_bill_is_found_with_its_key() {
    let mut rig = Rig::start(5, 300).await;
    let billing = rig.platform().endpoints.billing.clone();
    let (status, _) = rig
        .admin(
            &format!("{billing}/admin/faults"),
            json!({ "corrupt_amount_minor": 1 }),
        )
        .await;
    assert_eq!(status, 200);
    rig.drive(600, 400.0).await;
    let db = rig.dir().join("platform");
    let acknowledged = rig.stop_platform().await;
    rig.settle(acknowledged).await;

    // Every bill was written one minor unit too high: each is one amount mismatch on
    // payment-bill with the bill's key, and nothing else is reported.
    let bills: BTreeSet<String> = {
        let c = rusqlite::Connection::open(db.join("billing.db")).unwrap();
        let mut st = c.prepare("SELECT biz_id FROM bills").unwrap();
        let rows = st.query_map([], |r| r.get(0)).unwrap();
        rows.map(Result::unwrap).collect()
    };
    assert!(bills.len() > 50, "{} bills", bills.len());
    let breaks = rig.breaks().await;
    let keys: BTreeSet<String> = breaks
        .iter()
        .map(|b| b["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, bills);
    assert_eq!(breaks.len(), bills.len(), "one break per bill");
    for b in &breaks {
        assert_eq!(b["rule"], "payment-bill", "{b}");
        assert_eq!(b["kind"], "amount_mismatch", "{b}");
        assert_eq!(b["link"], "pay-to-bill");
    }
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correction_resolves_the_break_it_repairs() {
    let rig = Rig::start(6, 50).await;
    let p = rig.platform();
    let (billing, gateway) = (p.endpoints.billing.clone(), p.endpoints.gateway.clone());
    rig.admin(
        &format!("{billing}/admin/faults"),
        json!({ "corrupt_amount_minor": -250 }),
    )
    .await;
    let order = json!({
        "order_no": "ord-fix-1", "user_id": "u-0000001", "account": "ACC-1",
        "amount": "100.00", "currency": "EUR", "channel": "credit",
        "merchant": "m-1", "instalments": 3,
    });
    let r: Value = rig
        .http
        .post(format!("{gateway}/v1/pay"))
        .json(&order)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["status"], "SUCCESS", "{r}");
    rig.admin(
        &format!("{billing}/admin/faults"),
        json!({ "corrupt_amount_minor": 0 }),
    )
    .await;
    let bill: Value = rig
        .http
        .get(format!("{billing}/v1/bills/ord-fix-1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bill["amount"], "97.50");
    assert_eq!(bill["instalments"], json!(["32.50", "32.50", "32.50"]));

    let wait_for = |want: &'static str| {
        let rig = &rig;
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let b = rig.breaks().await;
                if b.iter().any(|b| b["status"] == want) {
                    return b;
                }
                assert!(Instant::now() < deadline, "no {want} break: {b:#?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let breaks = wait_for("open").await;
    assert_eq!(breaks.len(), 1, "{breaks:#?}");
    assert_eq!(breaks[0]["key"], "ord-fix-1");
    assert_eq!(breaks[0]["expected"], "100.00 EUR");
    assert_eq!(breaks[0]["actual"], "97.50 EUR");

    let r = rig
        .http
        .post(format!("{billing}/v1/corrections"))
        .json(&json!({ "biz_id": "ord-fix-1", "amount": "100.00", "reason": "restore the paid amount" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let fixed: Value = r.json().await.unwrap();
    assert_eq!(fixed["amount"], "100.00");
    assert_eq!(fixed["instalments"], json!(["33.34", "33.33", "33.33"]));
    let breaks = wait_for("resolved").await;
    assert_eq!(
        breaks.len(),
        1,
        "the correction raises nothing new: {breaks:#?}"
    );
    assert_eq!(breaks[0]["resolved_by_record"], "bill-ord-fix-1-c1");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_through_every_service_and_retries_change_nothing() {
    let rig = Rig::start(7, 50).await;
    let e = rig.platform().endpoints.clone();
    let order = json!({
        "order_no": "ord-trace-1", "user_id": "u-0000002", "account": "ACC-2",
        "amount": "12.345", "currency": "KWD", "channel": "credit",
        "merchant": "m-2", "instalments": 1,
    });
    let first: Value = rig
        .http
        .post(format!("{}/v1/pay", e.gateway))
        .json(&order)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["status"], "SUCCESS", "{first}");
    let trace = first["trace_id"].as_str().unwrap().to_string();
    assert_eq!(trace.len(), 32);
    let entries: Value = rig
        .http
        .get(format!("{}/v1/transactions/ord-trace-1", e.accounting))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 2);
    for en in entries {
        assert_eq!(
            en["trace_id"],
            trace.as_str(),
            "the ledger booked under the gateway's trace"
        );
        assert_eq!(en["amount"], "12.345");
    }
    // A retry of the same order is answered from the first outcome, booking nothing again.
    let again: Value = rig
        .http
        .post(format!("{}/v1/pay", e.gateway))
        .json(&order)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["status"], "SUCCESS");
    let entries: Value = rig
        .http
        .get(format!("{}/v1/transactions/ord-trace-1", e.accounting))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(entries.as_array().unwrap().len(), 2);
    // Amounts a currency cannot hold are refused, never rounded.
    let bad = json!({
        "order_no": "ord-trace-2", "user_id": "u-0000002", "account": "ACC-2",
        "amount": "1.5", "currency": "JPY", "channel": "card", "merchant": "m-2",
    });
    let r = rig
        .http
        .post(format!("{}/v1/pay", e.gateway))
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        502,
        "the core refuses it and the gateway says so"
    );
    let text = r.text().await.unwrap();
    assert!(text.contains("JPY") || text.contains("decimals"), "{text}");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_modes_switch_at_run_time() {
    let rig = Rig::start(8, 50).await;
    let e = rig.platform().endpoints.clone();
    let pay = |n: u32, channel: &str| {
        json!({
            "order_no": format!("ord-f-{n}"), "user_id": "u-test-3", "account": "ACC-3",
            "amount": "10.00", "currency": "USD", "channel": channel, "merchant": "m-3",
        })
    };
    let post = |url: String, body: Value| {
        let http = rig.http.clone();
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // Admin routes need the token; bad values change nothing.
    let r = rig
        .http
        .post(format!("{}/admin/faults", e.accounting))
        .json(&json!({"error_percent": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (s, body) = rig
        .admin(
            &format!("{}/admin/faults", e.accounting),
            json!({"error_percent": 100, "slow_db_ms": 1_000_000}),
        )
        .await;
    assert_eq!(s, 422, "{body}");
    let faults: Value = rig
        .admin_get(&format!("{}/admin/faults", e.accounting))
        .await;
    assert_eq!(faults["error_percent"], 0);

    // An error burst in accounting fails the payment, with the reason.
    rig.admin(
        &format!("{}/admin/faults", e.accounting),
        json!({"error_percent": 100, "error_secs": 60}),
    )
    .await;
    let (s, a) = post(format!("{}/v1/pay", e.gateway), pay(1, "card")).await;
    assert_eq!((s, a["status"].as_str()), (200, Some("FAILED")), "{a}");
    assert!(a["reason"].as_str().unwrap().contains("accounting"), "{a}");
    rig.admin(
        &format!("{}/admin/faults", e.accounting),
        json!({"error_secs": 0}),
    )
    .await;
    let (_, a) = post(format!("{}/v1/pay", e.gateway), pay(2, "card")).await;
    assert_eq!(a["status"], "SUCCESS", "{a}");

    // A slow database is slow.
    rig.admin(
        &format!("{}/admin/faults", e.wallet),
        json!({"slow_db_ms": 300}),
    )
    .await;
    let t0 = Instant::now();
    let (_, a) = post(format!("{}/v1/topup", e.gateway), pay(3, "wallet")).await;
    assert_eq!(a["status"], "SUCCESS", "{a}");
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    rig.admin(
        &format!("{}/admin/faults", e.wallet),
        json!({"slow_db_ms": 0}),
    )
    .await;

    // A stuck service holds requests until released.
    rig.admin(
        &format!("{}/admin/faults", e.notification),
        json!({"stuck": true}),
    )
    .await;
    let held = tokio::spawn(post(
        format!("{}/v1/notify", e.notification),
        json!([{"user_id": "u-test-3", "order_no": "x", "text": "hello"}]),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "a stuck service answers nothing");
    rig.admin(
        &format!("{}/admin/faults", e.notification),
        json!({"stuck": false}),
    )
    .await;
    assert_eq!(held.await.unwrap().0, 200);

    // A dry run validates the switch and answers what it would give, switching nothing
    // (a runbook's verification); a bad one is refused all the same.
    let (s, v) = rig
        .admin(
            &format!("{}/admin/route?dry_run=true", e.gateway),
            json!({"payment_core": "standby"}),
        )
        .await;
    assert_eq!((s, v["dry_run"].as_bool()), (200, Some(true)), "{v}");
    let (s, _) = rig
        .admin(
            &format!("{}/admin/route?dry_run=true", e.gateway),
            json!({"payment_core": "elsewhere"}),
        )
        .await;
    assert_eq!(s, 422);
    let route: Value = rig.admin_get(&format!("{}/admin/route", e.gateway)).await;
    assert_eq!(
        route["payment_core"], "primary",
        "a dry run changes nothing"
    );

    // Traffic switches to the standby payment core.
    let (s, _) = rig
        .admin(
            &format!("{}/admin/route", e.gateway),
            json!({"payment_core": "standby"}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, a) = post(format!("{}/v1/pay", e.gateway), pay(4, "card")).await;
    assert_eq!(a["status"], "SUCCESS", "{a}");
    let on_standby = rig
        .http
        .get(format!("{}/v1/payments/ord-f-4", e.payment_core_standby))
        .send()
        .await
        .unwrap();
    assert_eq!(on_standby.status(), 200);
    let on_primary = rig
        .http
        .get(format!("{}/v1/payments/ord-f-4", e.payment_core))
        .send()
        .await
        .unwrap();
    assert_eq!(on_primary.status(), 404);
    let (s, _) = rig
        .admin(
            &format!("{}/admin/route", e.gateway),
            json!({"payment_core": "elsewhere"}),
        )
        .await;
    assert_eq!(s, 422);
    rig.admin(
        &format!("{}/admin/route", e.gateway),
        json!({"payment_core": "primary"}),
    )
    .await;

    // The billing link goes through a configurable upstream (where a proxy would sit).
    let (s, up) = rig
        .admin(
            &format!("{}/admin/upstreams", e.payment_core),
            json!({"billing": "http://127.0.0.1:9"}),
        )
        .await;
    assert_eq!(s, 200, "{up}");
    let (_, a) = post(format!("{}/v1/pay", e.gateway), pay(5, "credit")).await;
    assert_eq!(a["status"], "FAILED", "{a}");
    assert!(a["reason"].as_str().unwrap().contains("billing"), "{a}");
    rig.admin(
        &format!("{}/admin/upstreams", e.payment_core),
        json!({"billing": e.billing}),
    )
    .await;
    let (_, a) = post(format!("{}/v1/pay", e.gateway), pay(6, "credit")).await;
    assert_eq!(a["status"], "SUCCESS", "{a}");

    // Feature flags.
    let flags: Value = rig.admin_get(&format!("{}/admin/flags", e.gateway)).await;
    assert_eq!(flags["instalments"], true);
    let (_, dry) = rig
        .admin(
            &format!("{}/admin/flags?dry_run=true", e.gateway),
            json!({"refunds": false}),
        )
        .await;
    assert_eq!(
        (dry["refunds"].as_bool(), dry["dry_run"].as_bool()),
        (Some(false), Some(true))
    );
    // Only the flags given change (and the dry run changed none).
    let (_, before) = rig
        .admin(&format!("{}/admin/flags", e.gateway), json!({}))
        .await;
    assert_eq!(before["refunds"], true, "{before}");
    rig.admin(
        &format!("{}/admin/flags", e.gateway),
        json!({"wallet_payments": false}),
    )
    .await;
    let (_, after) = rig
        .admin(
            &format!("{}/admin/flags", e.gateway),
            json!({"instalments": false}),
        )
        .await;
    assert_eq!(
        (
            after["instalments"].as_bool(),
            after["wallet_payments"].as_bool()
        ),
        (Some(false), Some(false)),
        "{after}"
    );
    let mut plan = pay(7, "credit");
    plan["instalments"] = 6.into();
    let (s, a) = post(format!("{}/v1/pay", e.gateway), plan).await;
    assert_eq!(s, 422, "{a}");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_and_metrics_go_out_over_otlp_when_export_is_on() {
    use std::sync::{Arc, Mutex};
    use steadfast_demo::telemetry::{OtlpConfig, Telemetry};
    // A collector that records the paths and content types it was sent.
    let seen: Arc<Mutex<Vec<(String, String, usize)>>> = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let s = s.clone();
        async move {
            let path = req.uri().path().to_string();
            let ct = req
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = axum::body::to_bytes(req.into_body(), 1 << 24)
                .await
                .unwrap();
            s.lock().unwrap().push((path, ct, body.len()));
            ""
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let t = Telemetry::new(
        "billing",
        &OtlpConfig {
            enabled: true,
            endpoint: format!("http://{addr}"),
            metrics_interval_secs: 1,
            token: None,
        },
    )
    .unwrap();
    let root = t.span(
        &opentelemetry::Context::new(),
        "POST /v1/bills".into(),
        opentelemetry::trace::SpanKind::Server,
        vec![],
    );
    t.db_span(&root, "INSERT bills", || ());
    use opentelemetry::trace::TraceContextExt;
    root.span().end();
    tokio::task::spawn_blocking(move || t.shutdown())
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    let traces = seen
        .iter()
        .find(|(p, _, _)| p == "/v1/traces")
        .unwrap_or_else(|| panic!("{seen:?}"));
    assert_eq!(traces.1, "application/x-protobuf");
    assert!(traces.2 > 0);
    assert!(seen.iter().any(|(p, _, _)| p == "/v1/metrics"), "{seen:?}");
}

/// A lossless drill of 100 faults against the payment-to-bill rule of the running
/// platform, over the real API: every fault discovered, no production break, and the
/// platform's own data untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossless_drill_on_the_platform_finds_100_of_100_without_touching_it() {
    let rig = Rig::start(23, 500).await;
    rig.drive(600, 600.0).await;
    let db = rig.dir().join("platform").join("billing.db");
    let bills_before = count(&db, "SELECT count(*) FROM bills");
    let spec = "name = \"bills a cent high\"\nrules = [\"payment-bill\"]\n[[faults]]\nkind = \"bill\"\nfield = \"amount\"\nmutation = { offset_minor = 1 }\nlimits = { hits_max = 100 }\n";
    let post = |path: String, body: Value| {
        let (http, token) = (rig.http.clone(), rig.token.clone());
        async move {
            let r = http
                .post(path)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (code, d) = post(
        format!("{}/api/v1/drills", rig.base),
        json!({"spec": spec, "pairs": 100}),
    )
    .await;
    assert_eq!(code, 201, "{d}");
    let id = d["id"].as_str().unwrap().to_string();
    let (code, v) = post(format!("{}/api/v1/drills/{id}/start", rig.base), json!({})).await;
    assert_eq!(code, 202, "{v}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let d = loop {
        let d = rig.get(&format!("/api/v1/drills/{id}")).await;
        if !matches!(d["state"].as_str(), Some("pending" | "running")) {
            break d;
        }
        assert!(Instant::now() < deadline, "the drill never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let r = &d["report"];
    assert_eq!(
        (r["injected"].as_u64(), r["discovered"].as_u64()),
        (Some(100), Some(100)),
        "{d}"
    );
    assert_eq!(r["false_positives"], json!([]));
    assert_eq!(
        rig.breaks().await,
        Vec::<Value>::new(),
        "no production break"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM bills"),
        bills_before,
        "no bill was written"
    );
    assert_eq!(
        rig.status().await["open_records_total"],
        0,
        "the traffic has settled and nothing of the drill is left open in the engine"
    );
    rig.stop().await;
}

/// `steadfast demo` exports the services' telemetry to its own server: a user's journey
/// then runs from the gateway through the payment core to billing and the databases,
/// with the fund records each request wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platforms_journeys_link_every_service_and_the_fund_records_written() {
    let rig = Rig::start_exporting(31, 20).await;
    let stats = rig.drive(40, 40.0).await;
    rig.settle(stats.succeeded.load(std::sync::atomic::Ordering::Relaxed))
        .await;
    let query = |sql: &str| {
        let sql = sql.to_string();
        let rig = &rig;
        async move {
            let r = rig
                .http
                .post(format!("{}/api/v1/query", rig.base))
                .bearer_auth(&rig.token)
                .json(&serde_json::json!({ "sql": sql }))
                .send()
                .await
                .unwrap();
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    // The batch exporters send every second: wait until the gateway's spans are in.
    let mut user = None;
    for _ in 0..100 {
        let v = query(
            "SELECT user_id, count(*) AS n FROM spans WHERE user_id IS NOT NULL \
             GROUP BY user_id ORDER BY n DESC, user_id LIMIT 1",
        )
        .await;
        if let Some(u) = v["rows"][0]["user_id"].as_str() {
            user = Some(u.to_string());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let user = user.expect("the gateway's spans reach the server");
    // Give the services' later spans (they end after the gateway's children) a second.
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let j = rig.get(&format!("/api/v1/journeys?user={user}")).await;
    let traces = j["traces"].as_array().unwrap_or_else(|| panic!("{j}"));
    assert!(!traces.is_empty(), "{j}");
    let (mut with_funds, mut with_db) = (0, 0);
    for t in traces {
        let services: Vec<&str> = t["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert_eq!(services[0], "gateway", "{t}");
        assert!(
            services.iter().any(|s| s.starts_with("payment-core")),
            "the gateway's call reaches a payment core: {services:?}"
        );
        let b = &t["breakdown"];
        assert!(b["server_ns"].as_i64().unwrap() > 0, "{b}");
        if b["database_ns"].as_i64().unwrap() > 0 {
            with_db += 1;
        }
        if !t["fund_records"].as_array().unwrap().is_empty() {
            with_funds += 1;
        }
    }
    assert!(
        with_db * 2 >= traces.len(),
        "the services' SQLite calls are in the split: {with_db} of {}",
        traces.len()
    );
    assert!(
        with_funds * 2 >= traces.len(),
        "most requests write money, and their records are linked: {with_funds} of {}",
        traces.len()
    );
    rig.stop().await;
}
