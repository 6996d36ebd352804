use serde_json::{json, Value};

use crate::support::*;

#[tokio::test]
async fn a_mismatch_becomes_a_break_that_people_can_work() {
    let mut s = TestServer::start().await;
    let (code, ack) = s
        .post(
            "/api/v1/records",
            body(&[payment("p1", "O1", "100.00"), bill("b1", "O1", "99.99")]),
        )
        .await;
    assert_eq!(code, 200, "{ack}");
    assert_eq!(ack["accepted"], 2);
    let rows = s.wait_breaks("rule=payment-bill", |r| !r.is_empty()).await;
    assert_eq!(rows.len(), 1);
    let b = &rows[0];
    assert_eq!(
        (b["kind"].as_str(), b["key"].as_str(), b["status"].as_str()),
        (Some("amount_mismatch"), Some("O1"), Some("open"))
    );
    assert_eq!(b["evidence"].as_array().unwrap().len(), 2);
    let id = b["id"].as_u64().unwrap();

    let (code, v) = s
        .post(
            &format!("/api/v1/breaks/{id}/status"),
            json!({"status": "acknowledged", "owner": "ops-anna", "reason": "looking"}).to_string(),
        )
        .await;
    assert_eq!(
        (code, v["status"].as_str(), v["owner"].as_str()),
        (200, Some("acknowledged"), Some("ops-anna"))
    );
    let (code, v) = s
        .post(
            &format!("/api/v1/breaks/{id}/status"),
            json!({"status": "open", "reason": "x"}).to_string(),
        )
        .await;
    assert_eq!((code, v["code"].as_str()), (409, Some("bad_transition")));
    let (code, _) = s
        .post(
            &format!("/api/v1/breaks/{id}/status"),
            json!({"status": "resolved", "reason": "refunded"}).to_string(),
        )
        .await;
    assert_eq!(code, 200);
    let (_, detail) = s.get(&format!("/api/v1/breaks/{id}")).await;
    let history: Vec<&str> = detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["to"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["open", "acknowledged", "resolved"]);
    assert_eq!(detail["history"][2]["actor"], "test", "the token's subject");

    let csv = s
        .http
        .get(format!("{}/api/v1/breaks?format=csv", s.base))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(csv
        .lines()
        .next()
        .unwrap()
        .starts_with("id,rule,link,kind,key"));
    assert!(csv.contains("amount_mismatch,O1"), "{csv}");
    let (code, v) = s.get("/api/v1/breaks?status=sideways").await;
    assert_eq!((code, v["code"].as_str()), (400, Some("bad_query")));

    let metrics = s
        .http
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "steadfast_records_ingested_total 2",
        "steadfast_breaks_total{rule=\"payment-bill\",kind=\"amount_mismatch\"} 1",
        "steadfast_detection_latency_seconds_count 1",
        "steadfast_open_records 0",
        "steadfast_wal_fsync_seconds_count",
        "steadfast_records_per_fsync_sum",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}:\n{metrics}");
    }
    s.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_whole_with_every_reason() {
    let mut s = TestServer::start().await;
    let mut wrong_type = payment("p2", "O2", "1.00");
    wrong_type["source"] = json!(5);
    let mut no_key = payment("p5", "O5", "1.00");
    no_key["keys"] = json!({});
    let batch = [
        payment("p1", "O1", "1.00"),
        wrong_type,
        payment("p3", "O3", "1.001"),
        record("p4", "payment-core", "payment", ("order_no", "O4"), "1.00")
            .as_object()
            .map(|o| {
                let mut o = o.clone();
                o.insert("currency".into(), json!("ZZZ"));
                Value::Object(o)
            })
            .unwrap(),
        no_key,
    ];
    let (code, v) = s.post("/api/v1/records", body(&batch)).await;
    assert_eq!(
        (code, v["code"].as_str()),
        (422, Some("invalid_records")),
        "{v}"
    );
    let errors = v["errors"].as_array().unwrap();
    let listed: Vec<u64> = errors
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, [1, 2, 3, 4]);
    assert!(errors[1]["message"]
        .as_str()
        .unwrap()
        .contains("more decimals"));
    assert!(errors[2]["message"]
        .as_str()
        .unwrap()
        .contains("unknown currency"));

    let (code, v) = s.post("/api/v1/records", "[{\"record_id\": ".into()).await;
    assert_eq!((code, v["code"].as_str()), (400, Some("malformed")));
    let huge = "x".repeat(s.cfg.limits.body_bytes_max + 1);
    let (code, v) = s.post("/api/v1/records", huge).await;
    assert_eq!((code, v["code"].as_str()), (413, Some("body_too_large")));
    let many: Vec<Value> = (0..s.cfg.limits.batch_records_max + 1)
        .map(|i| payment(&format!("m{i}"), "O", "1.00"))
        .collect();
    let (code, v) = s.post("/api/v1/records", body(&many)).await;
    assert_eq!((code, v["code"].as_str()), (413, Some("too_many_records")));

    // Nothing of the refused batches reached the engine.
    let (_, status) = s.get("/api/v1/status").await;
    assert_eq!(status["records_seen"], 0);
    s.stop().await;
}

#[tokio::test]
async fn retries_are_acknowledged_without_a_second_effect() {
    let mut s = TestServer::start().await;
    let batch = body(&[payment("p1", "O1", "5.00"), bill("b1", "O1", "5.00")]);
    for _ in 0..3 {
        assert_eq!(s.post("/api/v1/records", batch.clone()).await.0, 200);
    }
    let ndjson = format!("{}\n", payment("p1", "O1", "5.00"));
    assert_eq!(s.post("/api/v1/records", ndjson).await.0, 200);
    for _ in 0..100 {
        let (_, st) = s.get("/api/v1/status").await;
        if st["records_seen"] == 8 {
            assert_eq!(st["retries_ignored"], 6);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (_, rows) = s.get("/api/v1/breaks?drill=include").await;
    assert_eq!(rows.as_array().map(|r| r.len()), Some(0), "{rows}");
    s.stop().await;
}

#[tokio::test]
async fn open_state_at_its_bound_refuses_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.limits.open_records_max = 100;
    cfg.limits.batch_records_max = 10;
    let mut s = TestServer::start_with(cfg).await;
    let mut refused = None;
    for b in 0..20 {
        // Event times a minute ahead keep the payments pending for the whole test.
        let later = steadfast_server::pipeline::wall_ms() + 60_000;
        let batch: Vec<Value> = (0..10)
            .map(|i| {
                let mut p = payment(&format!("p{b}-{i}"), &format!("O{b}-{i}"), "1.00");
                p["event_time"] = json!(later);
                p
            })
            .collect();
        let r = s
            .http
            .post(format!("{}/api/v1/records", s.base))
            .bearer_auth(&s.token)
            .body(body(&batch))
            .send()
            .await
            .unwrap();
        if r.status().as_u16() != 200 {
            refused = Some((
                b,
                r.status().as_u16(),
                r.headers().get("retry-after").is_some(),
            ));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    let (batch, code, retry) = refused.expect("the bound was never reached");
    assert_eq!((code, retry), (503, true));
    assert!(batch >= 9, "refused too early, at batch {batch}");
    let rows = s.wait_breaks("kind=capacity", |r| !r.is_empty()).await;
    assert_eq!(rows[0]["rule"], "payment-bill");
    s.stop().await;
}

#[tokio::test]
async fn new_breaks_reach_the_webhook_but_drill_breaks_do_not() {
    let (hook, received, _) = webhook_receiver(0).await;

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.webhook.url = Some(hook);
    let mut s = TestServer::start_with(cfg).await;
    let mut dp = payment("d1", "DRILL-1", "1.00");
    dp["drill"] = json!("drill-1");
    let mut db = bill("d2", "DRILL-1", "2.00");
    db["drill"] = json!("drill-1");
    let mut p = payment("p1", "O1", "1.00");
    p["account"] = json!("6222020200112233");
    let mut b = bill("b1", "O1", "1.00");
    b["attributes"] = json!({"payer_account": "6222020200119999"});
    assert_eq!(
        s.post("/api/v1/records", body(&[dp, db, p, b])).await.0,
        200
    );
    for _ in 0..200 {
        if !received.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0]["kind"].as_str(), got[0]["field"].as_str()),
        (Some("field_mismatch"), Some("account/payer_account"))
    );
    assert_eq!(
        got[0]["expected"], "************2233",
        "account numbers are masked"
    );
    assert!(
        got[0]["id"].as_u64().is_some(),
        "deliveries carry the break id"
    );
    let drill = s.wait_breaks("drill=drill-1", |r| !r.is_empty()).await;
    assert_eq!(drill[0]["kind"], "amount_mismatch");
    s.stop().await;
}

#[tokio::test]
async fn webhook_deliveries_are_retried_until_the_receiver_takes_them() {
    let (hook, received, calls) = webhook_receiver(2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.webhook.url = Some(hook);
    let mut s = TestServer::start_with(cfg).await;
    assert_eq!(
        s.post(
            "/api/v1/records",
            body(&[payment("p1", "O1", "1.00"), bill("b1", "O1", "1.50")])
        )
        .await
        .0,
        200
    );
    for _ in 0..400 {
        if !received.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(
        received.lock().unwrap().len(),
        1,
        "delivered once the receiver recovered"
    );
    assert_eq!(*calls.lock().unwrap(), 3, "two refusals, then a delivery");
    s.stop().await;
}

#[tokio::test]
async fn a_restart_keeps_breaks_and_open_state() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut s = TestServer::start_with(cfg.clone()).await;
    let late = steadfast_model::format_millis(steadfast_server::pipeline::wall_ms() + 3_000);
    let mut pending = payment("p9", "O9", "7.00");
    pending["event_time"] = json!(late);
    assert_eq!(
        s.post(
            "/api/v1/records",
            body(&[
                payment("p1", "O1", "1.00"),
                bill("b1", "O1", "2.00"),
                pending
            ])
        )
        .await
        .0,
        200
    );
    s.wait_breaks("rule=payment-bill", |r| r.len() == 1).await;
    s.stop().await;

    let mut s = TestServer::start_with(cfg).await;
    let mut b9 = bill("b9", "O9", "7.00");
    b9["event_time"] = json!(late);
    assert_eq!(s.post("/api/v1/records", body(&[b9])).await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (_, rows) = s.get("/api/v1/breaks?rule=payment-bill").await;
    let rows = rows.as_array().unwrap();
    assert_eq!(
        rows.len(),
        1,
        "the pending payment survived the restart and matched: {rows:?}"
    );
    assert_eq!(rows[0]["key"], "O1");
    s.stop().await;
}
