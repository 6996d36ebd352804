//! Kills the real server with SIGKILL at seeded moments while clients ingest, then checks
//! that every acknowledged record was kept and every break reported exactly once.
//! `STEADFAST_CRASH_ROUNDS` (default 20) and `STEADFAST_CRASH_SEED` set the run; a failing
//! seed is printed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

const BIN: &str = env!("CARGO_BIN_EXE_steadfast");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(dir: &Path, port: u16) -> Child {
    Command::new(BIN)
        .args([
            "serve",
            "--no-otlp-ports",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_ready(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("server at {base} did not become ready");
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A batch of payments with their bills; every 25th bill is tampered. Returns the body
/// and the tampered order numbers.
fn batch(tag: &str, n: usize) -> (String, Vec<String>) {
    let t = now_ms();
    let mut body = String::new();
    let mut tampered = Vec::new();
    for i in 0..n {
        let order = format!("{tag}-{i}");
        let bad = i % 25 == 7;
        if bad {
            tampered.push(order.clone());
        }
        body += &format!(
            "{{\"record_id\":\"p-{order}\",\"source\":\"payment-core\",\"kind\":\"payment\",\"keys\":{{\"order_no\":\"{order}\"}},\"amount\":\"12.30\",\"currency\":\"USD\",\"status\":\"SUCCESS\",\"event_time\":{t}}}\n"
        );
        body += &format!(
            "{{\"record_id\":\"b-{order}\",\"source\":\"billing\",\"kind\":\"bill\",\"keys\":{{\"biz_id\":\"{order}\"}},\"amount\":\"{}\",\"currency\":\"USD\",\"event_time\":{t}}}\n",
            if bad { "12.31" } else { "12.30" }
        );
    }
    (body, tampered)
}

#[test]
fn kill_9_at_seeded_moments_loses_no_acknowledged_record_and_no_break() {
    let rounds: usize = std::env::var("STEADFAST_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("STEADFAST_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5EED);
    eprintln!("crash test: {rounds} rounds, seed {seed} (STEADFAST_CRASH_SEED={seed} repeats it)");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    steadfast_server::bootstrap_admin_token(dir.path(), "test").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let acked_tampered: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let acked_records: Arc<Mutex<u64>> = Arc::default();

    for round in 0..rounds {
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut child = start(dir.path(), port);
        rt.block_on(wait_ready(&http, &base));
        let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
        let kill_after = Duration::from_millis(rng.gen_range(50..400));
        let clients: Vec<_> = (0..3)
            .map(|c| {
                let (http, base, token) = (http.clone(), base.clone(), token.clone());
                let (tampered, records) = (acked_tampered.clone(), acked_records.clone());
                rt.spawn(async move {
                    for b in 0.. {
                        let (body, bad) = batch(&format!("r{round}c{c}b{b}"), 100);
                        let resp = http
                            .post(format!("{base}/api/v1/records"))
                            .bearer_auth(&token)
                            .body(body)
                            .send()
                            .await;
                        match resp {
                            Ok(r) if r.status().is_success() => {
                                tampered.lock().unwrap().extend(bad);
                                *records.lock().unwrap() += 200;
                            }
                            Ok(r) if r.status().as_u16() == 429 => {
                                tokio::time::sleep(Duration::from_millis(5)).await
                            }
                            _ => return,
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(kill_after);
        child.kill().unwrap();
        child.wait().unwrap();
        rt.block_on(async {
            for c in clients {
                let _ = c.await;
            }
        });
    }

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = start(dir.path(), port);
    let token = rt.block_on(async {
        wait_ready(&http, &base).await;
        std::fs::read_to_string(dir.path().join("admin.token")).unwrap()
    });
    let expected = acked_tampered.lock().unwrap().clone();
    assert!(
        expected.len() > 20,
        "too little was acknowledged to test anything ({} tampered keys)",
        expected.len()
    );
    let found: BTreeMap<String, usize> = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut found: BTreeMap<String, usize> = BTreeMap::new();
            let mut after = 0u64;
            loop {
                let rows: Vec<serde_json::Value> = http
                    .get(format!(
                        "{base}/api/v1/breaks?kind=amount_mismatch&limit=1000&after_id={after}"
                    ))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if rows.is_empty() {
                    break;
                }
                for r in &rows {
                    *found
                        .entry(r["key"].as_str().unwrap().to_string())
                        .or_default() += 1;
                    after = r["id"].as_u64().unwrap();
                }
            }
            if expected.iter().all(|k| found.contains_key(k)) || Instant::now() > deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let status: serde_json::Value = rt.block_on(async {
        http.get(format!("{base}/api/v1/status"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    child.wait().unwrap();

    let lost: Vec<&String> = expected
        .iter()
        .filter(|k| !found.contains_key(*k))
        .collect();
    assert!(
        lost.is_empty(),
        "seed {seed}: breaks of acknowledged records lost: {lost:?}"
    );
    let twice: Vec<(&String, &usize)> = found.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "seed {seed}: breaks reported more than once: {twice:?}"
    );
    let acked = *acked_records.lock().unwrap();
    assert!(
        status["records_seen"].as_u64().unwrap() >= acked,
        "seed {seed}: the engine saw {} records but {acked} were acknowledged",
        status["records_seen"]
    );
}

/// A break whose webhook could not be delivered before a `kill -9` is delivered after the
/// restart: the outbox is durable.
#[test]
fn webhook_deliveries_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    steadfast_server::bootstrap_admin_token(dir.path(), "test").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // The receiver's port is reserved now but nothing listens until after the crash.
    let hook_port = free_port();
    let config = dir.path().join("steadfast.toml");
    std::fs::write(
        &config,
        format!("[webhook]\nurl = \"http://127.0.0.1:{hook_port}/hook\"\n"),
    )
    .unwrap();
    let start_with_config = |port: u16| {
        Command::new(BIN)
            .args([
                "serve",
                "--no-otlp-ports",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--config",
            ])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path())
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = start_with_config(port);
    rt.block_on(async {
        wait_ready(&http, &base).await;
        let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
        let (body, tampered) = batch("hook", 25);
        assert_eq!(tampered.len(), 1);
        let r = http
            .post(format!("{base}/api/v1/records"))
            .bearer_auth(&token)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        // Wait until the break is stored (and so its delivery is in the outbox).
        for _ in 0..200 {
            let rows: Vec<serde_json::Value> = http
                .get(format!("{base}/api/v1/breaks?kind=amount_mismatch"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if !rows.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the break was never stored");
    });
    // Let a delivery attempt fail first (nothing listens yet), so the restarted server
    // also has to honour the recorded backoff.
    std::thread::sleep(Duration::from_millis(700));
    child.kill().unwrap();
    child.wait().unwrap();

    let received: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let sink = sink.clone();
            async move {
                sink.lock()
                    .unwrap()
                    .extend(v["breaks"].as_array().cloned().unwrap_or_default());
                "ok"
            }
        }),
    );
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", hook_port))
            .await
            .unwrap();
        axum::serve(listener, app).await.unwrap();
    });
    let port = free_port();
    let mut child = start_with_config(port);
    rt.block_on(async {
        wait_ready(&http, &format!("http://127.0.0.1:{port}")).await;
        // Backoff after failed attempts is at most a few seconds at this point.
        for _ in 0..400 {
            if !received.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    child.wait().unwrap();
    let got = received.lock().unwrap().clone();
    assert!(!got.is_empty(), "the outbox was lost with the process");
    assert!(
        got.iter()
            .all(|b| b["kind"] == "amount_mismatch" && b["key"] == "hook-7"),
        "{got:?}"
    );
}
