//! The proxy against a real Steadfast server and a small upstream, over real HTTP: each
//! availability fault, the TTL enforced at the proxy when the server is gone, the
//! error-rate guard undoing a drill, dry runs, and plain forwarding.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use steadfast_proxy::{ControllerConfig, Proxy, ProxyConfig, Route};
use steadfast_server::{Config, CorrectionTarget, Server, DEFAULT_RULES};

/// Bytes `GET /big` answers with.
const BIG: usize = 20_000;

#[derive(Default)]
struct Upstream {
    calls: AtomicU64,
    failing: AtomicBool,
    bills: Mutex<Vec<Value>>,
    corrections: Mutex<Vec<Value>>,
}

async fn bills(
    State(u): State<Arc<Upstream>>,
    headers: HeaderMap,
    Json(b): Json<Value>,
) -> (StatusCode, Json<Value>) {
    u.calls.fetch_add(1, Ordering::SeqCst);
    if u.failing.load(Ordering::SeqCst) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "down"})),
        );
    }
    u.bills.lock().unwrap().push(b.clone());
    let seen = json!({
        "body": b,
        "x_trace": headers.get("x-trace").and_then(|v| v.to_str().ok()),
        "connection": headers.get("connection").and_then(|v| v.to_str().ok()),
    });
    (StatusCode::CREATED, Json(seen))
}

async fn corrections(State(u): State<Arc<Upstream>>, Json(b): Json<Value>) -> Json<Value> {
    u.corrections.lock().unwrap().push(b);
    Json(json!({"ok": true}))
}

async fn big(State(u): State<Arc<Upstream>>) -> Vec<u8> {
    u.calls.fetch_add(1, Ordering::SeqCst);
    vec![b'x'; BIG]
}

struct Env {
    server: Option<Server>,
    proxy: Option<Proxy>,
    upstream: Arc<Upstream>,
    base: String,
    token: String,
    via: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn serve_upstream(u: Arc<Upstream>) -> SocketAddr {
    let app = Router::new()
        .route("/v1/bills", post(bills))
        .route("/v1/quotes", post(bills))
        .route("/v1/corrections", post(corrections))
        .route("/big", get(big))
        .with_state(u);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

impl Env {
    async fn start() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let upstream = Arc::new(Upstream::default());
        let up = serve_upstream(upstream.clone()).await;
        let mut cfg = Config {
            data_dir: dir.path().join("steadfast"),
            listen: "127.0.0.1:0".parse().unwrap(),
            ..Config::default()
        };
        // One person runs these drills; four-eyes is tested on the demo platform.
        cfg.approvals.required = vec![];
        cfg.drills.corrections.push(CorrectionTarget {
            name: "upstream".into(),
            url: format!("http://{up}/v1/corrections"),
            body: json!({"biz_id": "{key}", "amount": "{original}", "why": "{reason}"}),
            token_file: None,
        });
        let rules = Arc::new(steadfast_verify::parse_rules(DEFAULT_RULES).unwrap());
        let server = Server::start(cfg.clone(), rules, false).await.unwrap();
        let token = steadfast_server::bootstrap_admin_token(&cfg.data_dir, "test").unwrap();
        let (_, proxy_token) = steadfast_server::auth::create_local_token(
            &cfg.data_dir,
            &steadfast_server::auth::TokenSpec::new(
                "proxy",
                "proxy",
                steadfast_server::auth::Role::Proxy,
            ),
            "test",
            86_400,
        )
        .unwrap();
        let base = format!("http://{}", server.addr);
        let proxy = Proxy::start(ProxyConfig {
            name: "edge".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            upstream: format!("http://{up}"),
            data_dir: dir.path().join("proxy"),
            controller: Some(ControllerConfig::with_token(&base, proxy_token)),
            routes: vec![
                Route::request("POST", "/v1/bills", "bill", "biz_id"),
                Route::request("GET", "/big", "big", "none"),
                Route {
                    side: steadfast_drill::proxy::BodySide::Response,
                    ..Route::request("POST", "/v1/quotes", "quote", "body.biz_id")
                },
            ],
            ..ProxyConfig::default()
        })
        .await
        .unwrap();
        let via = format!("http://{}", proxy.addr);
        Env {
            server: Some(server),
            proxy: Some(proxy),
            upstream,
            base,
            token,
            via,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    fn proxy(&self) -> &Proxy {
        self.proxy.as_ref().unwrap()
    }

    async fn api(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Creates and starts a lossy drill with one fault, and waits until the proxy runs it.
    async fn drill(&self, kind: &str, mutation: &str, extra: &str) -> String {
        let field = if mutation.contains("offset_minor") {
            "field = \"amount\"\n"
        } else {
            ""
        };
        let spec = format!(
            "name = \"t\"\nmode = \"lossy\"\nrules = [\"payment-bill\"]\nttl_secs = 60\n{extra}\n[[faults]]\nkind = \"{kind}\"\n{field}mutation = {mutation}\nlimits = {{ hits_max = 1000 }}\n"
        );
        let (code, d) = self
            .api(
                reqwest::Method::POST,
                "/api/v1/drills",
                json!({ "spec": spec }),
            )
            .await;
        assert_eq!(code, 201, "{d}");
        let id = d["id"].as_str().unwrap().to_string();
        let (code, v) = self
            .api(
                reqwest::Method::POST,
                &format!("/api/v1/drills/{id}/start"),
                json!({}),
            )
            .await;
        assert_eq!(code, 202, "{v}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.proxy().running().contains(&id) {
            assert!(Instant::now() < deadline, "the proxy never took drill {id}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        id
    }

    async fn drill_state(&self, id: &str) -> Value {
        self.api(
            reqwest::Method::GET,
            &format!("/api/v1/drills/{id}"),
            Value::Null,
        )
        .await
        .1
    }

    /// Waits until the drill shows the hits the proxy reported.
    async fn with_hits(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let d = self.drill_state(id).await;
            if d["hits"].as_array().is_some_and(|h| !h.is_empty()) {
                return d;
            }
            assert!(Instant::now() < deadline, "no hit reached the server: {d}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn bill(&self, key: &str) -> reqwest::Result<reqwest::Response> {
        self.http
            .post(format!("{}/v1/bills", self.via))
            .json(&json!({"biz_id": key, "amount": "10.00", "currency": "USD"}))
            .send()
            .await
    }

    async fn stop(mut self) {
        if let Some(p) = self.proxy.take() {
            p.stop().await;
        }
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_drill_requests_pass_through_unchanged() {
    let env = Env::start().await;
    let r = env
        .http
        .post(format!("{}/v1/bills?x=1", env.via))
        .header("x-trace", "abc")
        .json(&json!({"biz_id": "K1", "amount": "10.00", "currency": "USD"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["body"]["amount"], "10.00");
    assert_eq!(v["x_trace"], "abc", "end-to-end headers are forwarded");
    assert_ne!(v["connection"], "close", "hop-by-hop headers are not");
    let r = env
        .http
        .get(format!("{}/nowhere", env.via))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the upstream's answer, whatever it is");
    let big = env
        .http
        .get(format!("{}/big", env.via))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(big.len(), BIG);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_drill_tampers_the_amount_and_records_the_original() {
    let env = Env::start().await;
    let id = env
        .drill(
            "bill",
            "{ offset_minor = 5 }",
            "correction = { manual = true }",
        )
        .await;
    let v: Value = env.bill("K1").await.unwrap().json().await.unwrap();
    assert_eq!(
        v["body"]["amount"], "10.05",
        "the upstream saw the tampered amount"
    );
    let d = env.with_hits(&id).await;
    let h = &d["hits"][0]["hit"];
    assert_eq!(
        (
            h["key"].as_str(),
            h["original"].as_str(),
            h["tampered"].as_str()
        ),
        (Some("K1"), Some("10.00"), Some("10.05"))
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.proxy().counters().unacked > 0 {
        assert!(
            Instant::now() < deadline,
            "the server never acknowledged the hit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_route_tampers_what_the_client_is_told() {
    let env = Env::start().await;
    let spec = "{ set = \"0.00\" }";
    let field_spec = format!(
        "name = \"t\"\nmode = \"lossy\"\nrules = [\"payment-bill\"]\ncorrection = {{ manual = true }}\n[[faults]]\nkind = \"quote\"\nfield = \"body.amount\"\nmutation = {spec}\n"
    );
    let (code, d) = env
        .api(
            reqwest::Method::POST,
            "/api/v1/drills",
            json!({ "spec": field_spec }),
        )
        .await;
    assert_eq!(code, 201, "{d}");
    let id = d["id"].as_str().unwrap().to_string();
    env.api(
        reqwest::Method::POST,
        &format!("/api/v1/drills/{id}/start"),
        json!({}),
    )
    .await;
    while !env.proxy().running().contains(&id) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = env
        .http
        .post(format!("{}/v1/quotes", env.via))
        .json(&json!({"biz_id": "Q1", "amount": "10.00", "currency": "USD"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["body"]["amount"], "0.00",
        "the client was told the tampered amount"
    );
    assert_eq!(
        env.upstream.bills.lock().unwrap()[0]["amount"],
        "10.00",
        "the upstream wrote the real one"
    );
    let d = env.with_hits(&id).await;
    let h = &d["hits"][0]["hit"];
    assert_eq!(
        (
            h["key"].as_str(),
            h["side"].as_str(),
            h["original"].as_str()
        ),
        (Some("Q1"), Some("response"), Some("10.00"))
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_with_jitter_delays_each_request_within_its_bounds() {
    let env = Env::start().await;
    env.drill("bill", "{ latency = { ms = 200, jitter_ms = 100 } }", "")
        .await;
    let mut took = Vec::new();
    for i in 0..16 {
        let t = Instant::now();
        assert_eq!(env.bill(&format!("K{i}")).await.unwrap().status(), 201);
        took.push(t.elapsed().as_millis() as u64);
    }
    let (min, max) = (*took.iter().min().unwrap(), *took.iter().max().unwrap());
    assert!(min >= 100, "never less than ms - jitter: {took:?}");
    assert!(
        max < 300 + 250,
        "never much more than ms + jitter: {took:?}"
    );
    assert!(max - min >= 40, "the delay varies: {took:?}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_responses_and_timeouts_answer_without_the_upstream() {
    let env = Env::start().await;
    let id = env.drill("bill", "{ error = 503 }", "").await;
    let r = env.bill("K1").await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(env.upstream.calls.load(Ordering::SeqCst), 0);
    env.api(
        reqwest::Method::POST,
        &format!("/api/v1/drills/{id}/stop"),
        json!({}),
    )
    .await;
    env.drill("bill", "{ timeout = 300 }", "").await;
    let t = Instant::now();
    let r = env.bill("K2").await.unwrap();
    assert_eq!(r.status(), 504);
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        env.upstream.calls.load(Ordering::SeqCst),
        0,
        "the upstream never saw either"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_reset_resets_the_tcp_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = Env::start().await;
    env.drill("bill", "\"reset\"", "").await;
    let mut s = tokio::net::TcpStream::connect(env.proxy().addr)
        .await
        .unwrap();
    let body = r#"{"biz_id":"K1","amount":"1.00","currency":"USD"}"#;
    let req = format!("POST /v1/bills HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let got = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap();
    match got {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!(
            "expected a reset, read {n} bytes: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
    }
    assert_eq!(env.upstream.calls.load(Ordering::SeqCst), 0);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bandwidth_limit_slows_the_response_to_its_rate() {
    let env = Env::start().await;
    let t = Instant::now();
    env.http
        .get(format!("{}/big", env.via))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let free = t.elapsed();
    env.drill("big", "{ bandwidth = 10000 }", "").await;
    let t = Instant::now();
    let got = env
        .http
        .get(format!("{}/big", env.via))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let limited = t.elapsed();
    assert_eq!(got.len(), BIG, "every byte arrives");
    // 20 000 bytes at 10 000 bytes/s: two seconds, give or take a tick.
    assert!(limited >= Duration::from_millis(1_800), "{limited:?}");
    assert!(limited < Duration::from_secs(4), "{limited:?}");
    assert!(
        free < Duration::from_millis(500),
        "unlimited it is fast: {free:?}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holing_never_answers_until_the_drill_ends() {
    let env = Env::start().await;
    let id = env.drill("bill", "\"black_hole\"", "").await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(800))
        .build()
        .unwrap();
    let r = client
        .post(format!("{}/v1/bills", env.via))
        .json(&json!({"biz_id": "K1", "amount": "1.00", "currency": "USD"}))
        .send()
        .await;
    assert!(r.as_ref().is_err_and(|e| e.is_timeout()), "{r:?}");
    // A held request is let go (without an answer) when the drill stops.
    let held = tokio::spawn({
        let url = format!("{}/v1/bills", env.via);
        async move {
            reqwest::Client::new()
                .post(url)
                .json(&json!({"biz_id": "K2", "amount": "1.00", "currency": "USD"}))
                .send()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.api(
        reqwest::Method::POST,
        &format!("/api/v1/drills/{id}/stop"),
        json!({}),
    )
    .await;
    let r = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .unwrap()
        .unwrap();
    assert!(r.is_err(), "closed without an answer: {r:?}");
    assert_eq!(env.upstream.calls.load(Ordering::SeqCst), 0);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_whose_ttl_runs_out_while_the_server_is_gone_stops_by_itself() {
    let mut env = Env::start().await;
    let spec = "name = \"t\"\nmode = \"lossy\"\nrules = [\"payment-bill\"]\nttl_secs = 2\n[[faults]]\nkind = \"bill\"\nmutation = { error = 503 }\nlimits = { hits_max = 100000 }\n";
    let (_, d) = env
        .api(
            reqwest::Method::POST,
            "/api/v1/drills",
            json!({ "spec": spec }),
        )
        .await;
    let id = d["id"].as_str().unwrap().to_string();
    env.api(
        reqwest::Method::POST,
        &format!("/api/v1/drills/{id}/start"),
        json!({}),
    )
    .await;
    let started = Instant::now();
    while !env.proxy().running().contains(&id) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(env.bill("K1").await.unwrap().status(), 503);
    // The controller goes away: nobody can tell the proxy to stop.
    env.server.take().unwrap().shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the server took too long to stop"
    );
    assert_eq!(
        env.bill("K2").await.unwrap().status(),
        503,
        "still injecting within its TTL"
    );
    tokio::time::sleep(
        Duration::from_secs(2).saturating_sub(started.elapsed()) + Duration::from_millis(100),
    )
    .await;
    assert_eq!(
        env.bill("K3").await.unwrap().status(),
        201,
        "the TTL ended it at the proxy"
    );
    assert!(env.proxy().running().is_empty());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_error_rate_guard_aborts_the_drill_and_its_hits_are_corrected() {
    let env = Env::start().await;
    let id = env
        .drill(
            "bill",
            "{ offset_minor = 1 }",
            "correction = { target = \"upstream\" }\nguards = { error_rate_percent_max = 10 }",
        )
        .await;
    for i in 0..5 {
        env.bill(&format!("K{i}")).await.unwrap();
    }
    env.upstream.failing.store(true, Ordering::SeqCst);
    for i in 5..40 {
        let _ = env.bill(&format!("K{i}")).await;
        if env.proxy().running().is_empty() {
            break;
        }
    }
    assert!(
        env.proxy().running().is_empty(),
        "the guard stopped the drill at the proxy"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let d = loop {
        let d = env.drill_state(&id).await;
        if d["correction"]["state"] == "done" {
            break d;
        }
        assert!(Instant::now() < deadline, "never undone: {d}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(d["state"], "aborted", "{d}");
    assert!(
        d["error"].as_str().unwrap().contains("guard breached"),
        "{d}"
    );
    // Undone: every tampered bill was booked back at its original amount.
    let fixes = env.upstream.corrections.lock().unwrap().clone();
    let hits = d["hits"].as_array().unwrap();
    assert!(hits.len() >= 5, "{d}");
    assert_eq!(fixes.len(), hits.len());
    assert!(fixes.iter().all(|f| f["amount"] == "10.00"), "{fixes:?}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_reports_hits_and_changes_nothing() {
    let env = Env::start().await;
    let id = env
        .drill(
            "bill",
            "{ offset_minor = 1 }",
            "dry_run = true\ncorrection = { manual = true }",
        )
        .await;
    let v: Value = env.bill("K1").await.unwrap().json().await.unwrap();
    assert_eq!(v["body"]["amount"], "10.00", "forwarded unchanged");
    assert_eq!(env.proxy().counters().tampered, 0);
    let d = env.with_hits(&id).await;
    let h = &d["hits"][0]["hit"];
    assert_eq!(h["dry_run"], true);
    assert_eq!(h["tampered"], "10.01", "what it would have done");
    env.stop().await;
}

/// The listener takes the TLS configuration, and an https upstream is verified against
/// `upstream_ca_cert`: here the proxy speaks TLS to its client and to a Steadfast server
/// behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_speaks_tls_on_both_sides() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "proxy test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .signed_by(&key, &ca_cert, &ca_key)
        .unwrap();
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (ca_pem, cert, key) = (
        write("ca.pem", ca_cert.pem()),
        write("cert.pem", leaf.pem()),
        write("key.pem", key.serialize_pem()),
    );
    let tls = steadfast_server::TlsConfig {
        cert: Some(cert),
        key: Some(key),
        ..Default::default()
    };
    let mut cfg = Config {
        data_dir: dir.path().join("steadfast"),
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: tls.clone(),
        ..Config::default()
    };
    cfg.approvals.required = vec![];
    let rules = Arc::new(steadfast_verify::parse_rules(DEFAULT_RULES).unwrap());
    let server = Server::start(cfg, rules, false).await.unwrap();
    let proxy = Proxy::start(ProxyConfig {
        name: "tls".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: format!("https://localhost:{}", server.addr.port()),
        upstream_ca_cert: Some(ca_pem.clone()),
        data_dir: dir.path().join("proxy"),
        tls,
        ..ProxyConfig::default()
    })
    .await
    .unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&ca_pem).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/healthz", proxy.addr.port());
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200, "through TLS, to a TLS upstream");
    let plain = reqwest::Client::new()
        .get(format!("http://localhost:{}/healthz", proxy.addr.port()))
        .send()
        .await;
    assert!(plain.is_err(), "the listener speaks TLS only: {plain:?}");
    // An upstream whose certificate the proxy cannot verify is a bad gateway.
    let untrusting = Proxy::start(ProxyConfig {
        name: "untrusting".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: format!("https://localhost:{}", server.addr.port()),
        data_dir: dir.path().join("proxy2"),
        ..ProxyConfig::default()
    })
    .await
    .unwrap();
    let r = reqwest::get(format!("http://{}/healthz", untrusting.addr))
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    untrusting.stop().await;
    proxy.stop().await;
    server.shutdown().await;
}
