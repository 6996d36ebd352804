//! Baselines, alerts, incidents and root-cause analysis on the running platform.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::Rig;

/// Operations per second: enough spans per interval for stable percentiles, little
/// enough for a debug build on two cores.
const RATE: f64 = 60.0;

/// Alerts as one line each, for failure messages.
fn brief(alerts: &Value) -> Vec<String> {
    alerts
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            format!(
                "{} {} {}: value {:.3} expected {:.3} score {:.2} at {}",
                a["rule"],
                a["service"],
                a["metric"],
                a["value"].as_f64().unwrap_or(0.0),
                a["expected"].as_f64().unwrap_or(0.0),
                a["score"].as_f64().unwrap_or(0.0),
                a["started_ms"]
            )
        })
        .collect()
}

async fn incidents(rig: &Rig) -> Vec<Value> {
    rig.get("/api/v1/incidents")
        .await
        .as_array()
        .cloned()
        .unwrap()
}

/// Points scored so far for one series, 0 when it does not exist yet.
async fn points(rig: &Rig, service: &str, metric: &str) -> usize {
    let r = rig
        .http
        .get(format!(
            "{}/api/v1/series?service={service}&metric={metric}",
            rig.base
        ))
        .bearer_auth(&rig.token)
        .send()
        .await
        .unwrap();
    if !r.status().is_success() {
        return 0;
    }
    let v: Value = r.json().await.unwrap();
    v["points"].as_array().map_or(0, |p| p.len())
}

/// The demo at `--day-secs 14400`: a simulated minute is ten wall seconds, so the two
/// simulated minutes the fault must be found in are 20 s.
const SIM_MINUTE_MS: u64 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_database_raises_one_incident_whose_top_cause_is_its_service() {
    // A webhook receiver for the incident notices.
    let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let sink = notices.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let rig = Rig::start_alone(5, 1_000, true, |c| {
        c.insight.interval_ms = 250;
        c.insight.lateness_ms = 1_500;
        c.insight.map_refresh_secs = 2;
        c.insight.webhook_url = Some(hook);
    })
    .await;
    let (stop, rx) = tokio::sync::watch::channel(false);
    let check = async {
        // Learning: the detectors need their warm-up and the likelihood its reference
        // (about 100 intervals).
        let learning = Instant::now();
        while points(&rig, "accounting", "latency_ms_p95").await < 120 {
            assert!(
                learning.elapsed() < Duration::from_secs(120),
                "no accounting latency series"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let before = rig.get("/api/v1/alerts").await;
        assert!(
            before.as_array().unwrap().is_empty(),
            "alerts while learning clean traffic: {:#?}",
            brief(&before)
        );

        let accounting = rig.platform().endpoints.accounting.clone();
        let (status, _) = rig
            .admin(
                &format!("{accounting}/admin/faults"),
                json!({"slow_db_ms": 150}),
            )
            .await;
        assert_eq!(status, 200);
        let fault = Instant::now();
        let deadline = Duration::from_millis(2 * SIM_MINUTE_MS);
        let found = loop {
            let list = incidents(&rig).await;
            let top = list
                .first()
                .and_then(|i| i["analysis"]["ranking"][0]["service"].as_str());
            if top == Some("accounting") {
                break fault.elapsed();
            }
            assert!(
                fault.elapsed() < deadline,
                "no incident naming accounting within 2 simulated minutes: {list:#?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        eprintln!(
            "slow database in accounting: incident with accounting ranked first after {:.1} s ({:.2} simulated minutes)",
            found.as_secs_f64(),
            found.as_millis() as f64 / SIM_MINUTE_MS as f64
        );
        // Every alert the slowdown raises along the call chain joins the one incident.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let list = incidents(&rig).await;
        let alerts = rig.get("/api/v1/alerts").await;
        assert_eq!(list.len(), 1, "one incident, merged: {:#?}", brief(&alerts));
        let incident = &list[0];
        let id = incident["id"].as_u64().unwrap();
        let detail = rig.get(&format!("/api/v1/incidents/{id}")).await;
        assert_eq!(
            detail["analysis"]["ranking"][0]["service"], "accounting",
            "{detail:#}"
        );
        let explanation = detail["analysis"]["ranking"][0]["explanation"]
            .as_str()
            .unwrap();
        assert!(
            explanation.contains("latency"),
            "the explanation names the metric: {explanation}"
        );
        assert_eq!(detail["analysis"]["fault_type"], "latency", "{detail:#}");
        assert!(detail["runbooks"].is_array());
        eprintln!(
            "incident {id}: {} alerts on {:?}; {}",
            incident["alerts"].as_array().map_or(0, |a| a.len()),
            incident["services"],
            detail["analysis"]["summary"]
        );
        // One notice for the opening, carrying the incident.
        let opened: Vec<Value> = notices
            .lock()
            .unwrap()
            .iter()
            .filter(|n| n["event"] == "incident_opened")
            .cloned()
            .collect();
        assert_eq!(opened.len(), 1, "{opened:#?}");
        assert_eq!(opened[0]["incident"]["id"].as_u64(), Some(id));
        let (status, _) = rig
            .admin(
                &format!("{accounting}/admin/faults"),
                json!({"slow_db_ms": 0}),
            )
            .await;
        assert_eq!(status, 200);
        let _ = stop.send(true);
    };
    tokio::join!(rig.drive_until(RATE, rx), check);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_simulated_days_of_seasonal_traffic_raise_no_alert() {
    // 24 wall seconds a simulated day, one point per series every 500 ms: 48 points a
    // day (half an hour each), and some thirty requests behind each point's p95, so a
    // host stalling everything for a second (two points) is not the three in a row an
    // alert needs.
    let day_secs = 24;
    let rig = Rig::start_alone(9, 1_000, true, |c| {
        c.insight.interval_ms = 500;
        c.insight.lateness_ms = 1_500;
        c.insight.map_refresh_secs = 5;
    })
    .await;
    let (stop, rx) = tokio::sync::watch::channel(false);
    let check = async {
        tokio::time::sleep(Duration::from_secs(10 * day_secs)).await;
        let _ = stop.send(true);
    };
    tokio::join!(rig.drive_seasonal_until(RATE, day_secs, rx), check);
    let series = rig.get("/api/v1/series").await;
    let list = series["series"].as_array().unwrap();
    let gateway = list
        .iter()
        .find(|s| s["service"] == "gateway" && s["metric"] == "requests")
        .expect("the gateway's request series");
    eprintln!(
        "10 simulated days: {} series; the gateway's requests have period {} points (48 is a day)",
        list.len(),
        gateway["period_points"]
    );
    // How close each latency and network series came to its rule (above 1 ms, 1.25 times
    // its baseline and 10 ms above it, for 3 points in a row): the margin a clean run
    // leaves.
    let timed = |s: &&Value| s["metric"] == "latency_ms_p95" || s["metric"] == "network_ms_p95";
    assert!(
        list.iter()
            .any(|s| s["service"] == "billing" && s["metric"] == "network_ms_p95"),
        "the calls into billing give it a network series"
    );
    for s in list.iter().filter(timed) {
        let (service, metric) = (
            s["service"].as_str().unwrap(),
            s["metric"].as_str().unwrap(),
        );
        let v = rig
            .get(&format!("/api/v1/series?service={service}&metric={metric}"))
            .await;
        let (mut run, mut longest, mut worst, mut over) = (0, 0, 0.0f64, f64::MIN);
        for p in v["points"].as_array().into_iter().flatten() {
            let (value, expected) = (
                p["value"].as_f64().unwrap(),
                p["expected"].as_f64().unwrap(),
            );
            let ratio = if expected > 0.0 {
                value / expected
            } else {
                0.0
            };
            worst = worst.max(ratio);
            over = over.max(value - expected);
            run = if value > 1.0 && ratio >= 1.25 && value - expected >= 10.0 {
                run + 1
            } else {
                0
            };
            longest = longest.max(run);
        }
        eprintln!("{service} {metric}: at most {worst:.2} times its baseline and {over:.2} ms above it; the rule's condition held {longest} points in a row at most");
    }
    let alerts = rig.get("/api/v1/alerts").await;
    assert_eq!(
        alerts.as_array().unwrap().len(),
        0,
        "alerts on clean seasonal traffic: {:#?}",
        brief(&alerts)
    );
    rig.stop().await;
}
