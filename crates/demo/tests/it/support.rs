use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use steadfast_demo::driver::{drive, DriverConfig, DriverStats};
use steadfast_demo::report::ReportTarget;
use steadfast_demo::traffic::Traffic;
use steadfast_demo::{Platform, PlatformConfig, DEMO_RULES};
use steadfast_server::{Config, Server};
use steadfast_verify::parse_rules;

/// The longest lateness budget in the demo rules, plus the wallet's snapshot interval
/// and two engine ticks: after this, every key has been evaluated.
pub const SETTLE_MS: u64 = 5_000 + 1_000 + 200;

/// A server and the platform reporting to it.
pub struct Rig {
    pub server: Option<Server>,
    pub platform: Option<Platform>,
    pub proxy: Option<steadfast_proxy::Proxy>,
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
    pub seed: u64,
    pub users: u32,
    _dir: tempfile::TempDir,
    /// Held for the rig's life: shared by ordinary tests, exclusive for the ones that
    /// judge latency baselines (another test's load would be their false alarm).
    _turn: Turn,
}

#[allow(dead_code)]
enum Turn {
    Shared(tokio::sync::OwnedRwLockReadGuard<()>),
    Alone(tokio::sync::OwnedRwLockWriteGuard<()>),
}

/// The turn of a test that runs its own server beside the others.
pub async fn shared_turn() -> tokio::sync::OwnedRwLockReadGuard<()> {
    turns().read_owned().await
}

fn turns() -> std::sync::Arc<tokio::sync::RwLock<()>> {
    static TURNS: std::sync::OnceLock<std::sync::Arc<tokio::sync::RwLock<()>>> =
        std::sync::OnceLock::new();
    TURNS.get_or_init(Default::default).clone()
}

impl Rig {
    pub async fn start(seed: u64, users: u32) -> Rig {
        Rig::start_opts(seed, users, false).await
    }

    /// A rig whose services export their traces and metrics to its server over OTLP, as
    /// `steadfast demo` does.
    pub async fn start_exporting(seed: u64, users: u32) -> Rig {
        Rig::start_opts(seed, users, true).await
    }

    async fn start_opts(seed: u64, users: u32, otlp: bool) -> Rig {
        let turn = Turn::Shared(turns().read_owned().await);
        Rig::start_with(seed, users, otlp, |_| {}, turn).await
    }

    /// A rig with no other rig running beside it, whose server configuration `tweak`
    /// changes first.
    pub async fn start_alone(
        seed: u64,
        users: u32,
        otlp: bool,
        tweak: impl FnOnce(&mut Config),
    ) -> Rig {
        let turn = Turn::Alone(turns().write_owned().await);
        Rig::start_with(seed, users, otlp, tweak, turn).await
    }

    async fn start_with(
        seed: u64,
        users: u32,
        otlp: bool,
        tweak: impl FnOnce(&mut Config),
        turn: Turn,
    ) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config {
            data_dir: dir.path().join("steadfast"),
            listen: "127.0.0.1:0".parse().unwrap(),
            ..Config::default()
        };
        cfg.engine.tick_ms = 50;
        tweak(&mut cfg);
        let rules = Arc::new(parse_rules(DEMO_RULES).unwrap());
        // The server's address first, so the platform can start before it: the server
        // then knows billing's correction API.
        let bound = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", bound.local_addr().unwrap());
        std::fs::create_dir_all(&cfg.data_dir).unwrap();
        let token = steadfast_server::bootstrap_admin_token(&cfg.data_dir, "test").unwrap();
        let traffic = Traffic::new(seed, users, 50);
        let wallets = traffic.wallets();
        let mut pcfg = PlatformConfig::new(
            dir.path().join("platform"),
            ReportTarget {
                url: base.clone(),
                token: token.clone(),
            },
            token.clone(),
        );
        pcfg.snapshot_interval_ms = 500;
        if otlp {
            pcfg.otlp = steadfast_demo::telemetry::OtlpConfig {
                enabled: true,
                endpoint: base.clone(),
                metrics_interval_secs: 1,
                token: Some(token.clone()),
            };
        }
        // Debug builds under a loaded CI machine are slow; a timeout here would be a
        // false failure, not a finding.
        pcfg.call_timeout_ms = 20_000;
        let platform = Platform::start(pcfg, &wallets).await.unwrap();
        let (url, body) = steadfast_demo::billing_correction(&platform.endpoints.billing);
        cfg.drills
            .corrections
            .push(steadfast_server::CorrectionTarget::new(
                "billing", url, body,
            ));
        let server = Server::start_on(cfg, rules, false, Some(bound))
            .await
            .unwrap();
        Rig {
            server: Some(server),
            platform: Some(platform),
            proxy: None,
            base,
            token,
            http: reqwest::Client::new(),
            seed,
            users,
            _dir: dir,
            _turn: turn,
        }
    }

    /// The working directory: `steadfast/` and `platform/` (the services' databases).
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub fn platform(&self) -> &Platform {
        self.platform.as_ref().unwrap()
    }

    /// Plays `ops` operations of the seeded traffic at `rate` per second (flat).
    pub async fn drive(&self, ops: u64, rate: f64) -> Arc<DriverStats> {
        let stats = Arc::new(DriverStats::default());
        let (_stop, rx) = tokio::sync::watch::channel(false);
        drive(
            Traffic::new(self.seed, self.users, 50),
            self.platform().endpoints.gateway.clone(),
            DriverConfig {
                rate,
                seasonal: false,
                ops_max: Some(ops),
                in_flight_max: 64,
                ..DriverConfig::default()
            },
            stats.clone(),
            rx,
        )
        .await;
        assert_eq!(stats.issued.load(Ordering::Relaxed), ops);
        stats
    }

    /// Plays the seeded traffic at `rate` per second until `stop` (fresh operations all
    /// along: a replayed operation is an idempotent retry and calls nothing downstream).
    pub async fn drive_until(&self, rate: f64, stop: tokio::sync::watch::Receiver<bool>) {
        self.drive_shaped(rate, None, stop).await;
    }

    /// Plays the seeded traffic at its seasonal rate (`rate` on average, following the
    /// hour and weekday of simulated time, `day_secs` wall seconds a day) until `stop`.
    pub async fn drive_seasonal_until(
        &self,
        rate: f64,
        day_secs: u64,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        self.drive_shaped(rate, Some(day_secs), stop).await;
    }

    /// Flat traffic without `day_secs`, seasonal with it.
    async fn drive_shaped(
        &self,
        rate: f64,
        day_secs: Option<u64>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let defaults = DriverConfig::default();
        drive(
            Traffic::new(self.seed, self.users, 50),
            self.platform().endpoints.gateway.clone(),
            DriverConfig {
                rate,
                day_secs: day_secs.unwrap_or(defaults.day_secs),
                seasonal: day_secs.is_some(),
                ops_max: None,
                in_flight_max: 64,
                ..defaults
            },
            Arc::new(DriverStats::default()),
            stop,
        )
        .await;
    }

    pub async fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// A read that may not be answered yet (404 before a series exists).
    pub async fn get_opt(&self, path: &str) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    /// Admin read of a service (`url` is the service's own, not Steadfast's).
    pub async fn admin_get(&self, url: &str) -> Value {
        self.http
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn status(&self) -> Value {
        self.get("/api/v1/status").await
    }

    /// Every break, oldest first.
    pub async fn breaks(&self) -> Vec<Value> {
        let v = self.get("/api/v1/breaks?limit=1000").await;
        let mut list = v.as_array().cloned().unwrap();
        list.sort_by_key(|b| b["id"].as_u64());
        list
    }

    /// Waits until the engine has verified every acknowledged record and every deadline
    /// has passed.
    pub async fn settle(&self, acknowledged: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let seen = self.status().await["records_seen"].as_u64().unwrap();
            if seen >= acknowledged {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "engine stuck at {seen} of {acknowledged}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(SETTLE_MS)).await;
    }

    /// Admin call to a service.
    pub async fn admin(&self, url: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(url)
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Stops the platform (reporting everything), and returns how many records the
    /// services had acknowledged.
    pub async fn stop_platform(&mut self) -> u64 {
        let p = self.platform.take().unwrap();
        let reports: Vec<_> = p.reports.clone();
        p.shutdown().await;
        for (name, s) in &reports {
            assert_eq!(
                s.refused.load(Ordering::Relaxed),
                0,
                "{name}: records refused"
            );
            assert_eq!(
                s.queued.load(Ordering::Relaxed),
                s.acknowledged.load(Ordering::Relaxed),
                "{name}: every record written is acknowledged"
            );
        }
        reports
            .iter()
            .map(|(_, s)| s.acknowledged.load(Ordering::Relaxed))
            .sum()
    }

    /// Puts a fault-injection proxy between the payment cores and billing.
    pub async fn with_proxy(&mut self) {
        let token = self.token_for("billing-proxy", steadfast_server::auth::Role::Proxy);
        let (method, path, kind, key) = steadfast_demo::BILLING_ROUTE;
        let cfg = steadfast_proxy::ProxyConfig {
            name: "billing".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            upstream: self.platform().endpoints.billing.clone(),
            data_dir: self.dir().join("proxy"),
            controller: Some(steadfast_proxy::ControllerConfig::with_token(
                &self.base, token,
            )),
            routes: vec![steadfast_proxy::Route::request(method, path, kind, key)],
            ..steadfast_proxy::ProxyConfig::default()
        };
        let proxy = steadfast_proxy::Proxy::start(cfg).await.unwrap();
        let url = format!("http://{}", proxy.addr);
        self.platform().core.set_billing_upstream(&url);
        self.platform().standby.set_billing_upstream(&url);
        self.proxy = Some(proxy);
        // The proxy's first sync, so the server knows it before a drill starts.
        let deadline = Instant::now() + Duration::from_secs(20);
        while self
            .get("/api/v1/proxies")
            .await
            .as_array()
            .unwrap()
            .is_empty()
        {
            assert!(Instant::now() < deadline, "the proxy never synced");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A token of another drill admin: the second person of four-eyes.
    pub fn second_person(&self) -> String {
        self.token_for("second-person", steadfast_server::auth::Role::DrillAdmin)
    }

    /// A new token of `role` for `subject`, written to the server's data directory.
    pub fn token_for(&self, subject: &str, role: steadfast_server::auth::Role) -> String {
        let spec = steadfast_server::auth::TokenSpec::new(subject, subject, role);
        steadfast_server::auth::create_local_token(
            &self.dir().join("steadfast"),
            &spec,
            "test",
            86_400,
        )
        .unwrap()
        .1
    }

    pub async fn stop(mut self) {
        if let Some(p) = self.proxy.take() {
            p.stop().await;
        }
        if let Some(p) = self.platform.take() {
            p.shutdown().await;
        }
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

// ---- a real browser ------------------------------------------------------------------

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Whether Debian's Chromium and ChromeDriver are installed. Absent on a user's plain
/// clone: the test skips with a message. Under CI it is a failure.
pub fn browser_present() -> bool {
    let present =
        std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists();
    if !present {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("chromium and chromedriver are needed (CI=true: .ci/run installs them)");
        }
        eprintln!("skipped: chromium and chromedriver are not installed (.ci/run installs them)");
    }
    present
}

/// A child started as the leader of its own process group; dropping it kills the whole
/// group, so the browsers chromedriver started go with it even when a test panics.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: kill(2) on the group this child leads; no memory is touched.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Headless Chromium driven over WebDriver by its own chromedriver, with a fresh profile
/// and the browser console recorded.
pub struct Browser {
    pub client: fantoccini::Client,
    port: u16,
    _driver: KillOnDrop,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = KillOnDrop(
            std::os::unix::process::CommandExt::process_group(
                &mut std::process::Command::new(CHROMEDRIVER),
                0,
            )
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
        );
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        // The background-networking flags keep Chromium from calling out of a closed
        // network (its refused connections would be console noise and slow the start).
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1366,900", "--hide-scrollbars",
                    format!("--user-data-dir={}", profile.path().display())],
            }),
        );
        caps.insert(
            "goog:loggingPrefs".into(),
            serde_json::json!({"browser": "ALL"}),
        );
        let mut client = None;
        for _ in 0..50 {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match fantoccini::ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(c) => {
                    client = Some(c);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        Browser {
            client: client.expect("chromedriver answers"),
            port,
            _driver: driver,
            _profile: profile,
        }
    }

    /// The browser console's entries since the last call (level and message).
    pub async fn console(&self) -> Vec<(String, String)> {
        let id = self.client.session_id().await.unwrap().unwrap();
        let r: Value = reqwest::Client::new()
            .post(format!(
                "http://127.0.0.1:{}/session/{id}/se/log",
                self.port
            ))
            .json(&serde_json::json!({"type": "browser"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["value"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["level"].as_str().unwrap_or("").to_string(),
                    e["message"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    pub async fn close(self) {
        self.client.close().await.unwrap();
    }
}
