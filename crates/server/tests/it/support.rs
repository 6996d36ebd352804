use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use steadfast_server::{Config, Server, DEFAULT_RULES};
use steadfast_verify::parse_rules;

pub const T: i64 = 1_700_000_000_000;

pub struct TestServer {
    pub server: Option<Server>,
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
    pub cfg: Config,
    _dir: Option<tempfile::TempDir>,
}

pub fn config(dir: &std::path::Path) -> Config {
    let mut cfg = Config {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    cfg.engine.tick_ms = 20;
    cfg
}

impl TestServer {
    pub async fn start() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let mut s = TestServer::start_with(cfg).await;
        s._dir = Some(dir);
        s
    }

    pub async fn start_with(cfg: Config) -> TestServer {
        let rules = Arc::new(parse_rules(DEFAULT_RULES).unwrap());
        let server = Server::start(cfg.clone(), rules, false).await.unwrap();
        TestServer {
            base: format!("http://{}", server.addr),
            token: steadfast_server::bootstrap_admin_token(&cfg.data_dir, "test").unwrap(),
            server: Some(server),
            http: reqwest::Client::new(),
            cfg,
            _dir: None,
        }
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }

    pub async fn post(&self, path: &str, body: String) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A new token of `role` for `subject`, made directly in the data directory.
    pub fn token_for(&self, role: &str, subject: &str) -> String {
        self.token_with(steadfast_server::auth::TokenSpec {
            subject: subject.into(),
            name: String::new(),
            role: role.into(),
            links: vec![],
            services: vec![],
            site: (role == "beacon").then(|| "https://shop.example".into()),
            expires_in_secs: None,
            rate_per_sec: None,
            body_bytes_max: None,
        })
    }

    pub fn token_with(&self, spec: steadfast_server::auth::TokenSpec) -> String {
        steadfast_server::auth::create_local_token(&self.cfg.data_dir, &spec, "test", 3600)
            .unwrap()
            .1
    }

    /// Any call with any token (or none): the status and the JSON answer.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A raw body with a token.
    pub async fn call_raw(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: String,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
        let r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Polls the break list until `pred` holds (the engine runs behind the acknowledgement).
    pub async fn wait_breaks(&self, query: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        for _ in 0..200 {
            let (_, v) = self.get(&format!("/api/v1/breaks?{query}")).await;
            let rows = v.as_array().cloned().unwrap_or_default();
            if pred(&rows) {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("breaks matching {query} never satisfied the condition");
    }
}

pub fn record(id: &str, source: &str, kind: &str, key: (&str, &str), amount: &str) -> Value {
    json!({
        "record_id": id, "source": source, "kind": kind, "keys": { key.0: key.1 },
        "amount": amount, "currency": "USD", "status": "SUCCESS", "event_time": T,
    })
}

pub fn payment(id: &str, order: &str, amount: &str) -> Value {
    record(id, "payment-core", "payment", ("order_no", order), amount)
}

pub fn bill(id: &str, order: &str, amount: &str) -> Value {
    record(id, "billing", "bill", ("biz_id", order), amount)
}

pub fn body(records: &[Value]) -> String {
    serde_json::to_string(records).unwrap()
}

/// A webhook receiver on loopback that refuses its first `refusals` calls with 500.
/// Returns its URL, the items it accepted (the `breaks` of a JSON body, or every line of
/// an NDJSON one), and how many calls it got.
pub async fn webhook_receiver(
    refusals: u32,
) -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    std::sync::Arc<std::sync::Mutex<u32>>,
) {
    use std::sync::{Arc, Mutex};
    let calls: Arc<Mutex<u32>> = Arc::default();
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let (c, sink) = (calls.clone(), received.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |text: String| {
            let (c, sink) = (c.clone(), sink.clone());
            async move {
                let mut n = c.lock().unwrap();
                *n += 1;
                if *n <= refusals {
                    return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                }
                let items: Vec<Value> = match serde_json::from_str::<Value>(&text) {
                    Ok(v) => v["breaks"].as_array().cloned().unwrap_or_default(),
                    Err(_) => text
                        .lines()
                        .map(|l| serde_json::from_str(l).unwrap())
                        .collect(),
                };
                sink.lock().unwrap().extend(items);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (hook, received, calls)
}

/// Whether an external tool a test needs is here. Absent on a user's plain clone, the
/// test skips with a message; under CI (`CI=true`) absence is a failure, so CI never
/// passes by skipping.
pub fn tool_present(what: &str, present: bool) -> bool {
    if present {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} is needed by this test and missing (CI=true: .ci/run installs it)");
    }
    eprintln!("skipped: {what} is not installed (.ci/run installs it)");
    false
}
