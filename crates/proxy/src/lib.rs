//! `steadfast proxy`: an HTTP reverse proxy placed in a real fund link (the demo's payment
//! core → billing) that applies lossy drills to the JSON bodies of matching requests or
//! responses, and availability faults (latency with jitter, error responses, connection
//! reset, timeouts, bandwidth limits, black-holing) to matching requests.
//!
//! The decisions are `steadfast_drill::proxy::Active`'s (pure); this crate is the edge:
//! the listener ([`listener`]), forwarding ([`forward`]), and the sync with the Steadfast
//! server that assigns drills and receives hits ([`sync`]). Every hit is appended to a
//! local journal before the tampered request goes on, and stays there until the server
//! has acknowledged it: an original that could be lost could not be corrected.

pub mod config;
mod forward;
mod journal;
mod listener;
mod sync;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use steadfast_drill::proxy::Active;

pub use config::{ControllerConfig, ProxyConfig, Route};

/// Shared by the request handlers and the sync task.
pub(crate) struct Edge {
    pub cfg: ProxyConfig,
    pub routes: Vec<config::CompiledRoute>,
    pub active: Mutex<Active>,
    pub journal: journal::Journal,
    pub client: forward::Client,
    pub upstream: reqwest::Url,
    pub epoch: Instant,
    /// Woken when the assignment changes (black-holed requests wait on it).
    pub changed: tokio::sync::watch::Sender<u64>,
    /// Woken when a hit or an abort waits to be sent.
    pub outbox: tokio::sync::Notify,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub tampered: AtomicU64,
    pub holding: AtomicU64,
    pub stopping: std::sync::atomic::AtomicBool,
}

impl Edge {
    /// The proxy's monotonic clock, in milliseconds since it started.
    pub fn now_ms(&self) -> i64 {
        self.epoch.elapsed().as_millis() as i64
    }

    pub fn cfg_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

/// Counters of a running proxy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub requests: u64,
    pub errors: u64,
    /// Requests a drill acted on (tampered or faulted).
    pub tampered: u64,
    /// Hits not yet acknowledged by the server.
    pub unacked: u64,
}

/// A running proxy.
pub struct Proxy {
    pub addr: SocketAddr,
    edge: Arc<Edge>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// Binds the listener, replays the journal's unacknowledged hits and starts syncing.
    pub async fn start(cfg: ProxyConfig) -> anyhow::Result<Proxy> {
        cfg.validate()?;
        let routes = cfg
            .routes
            .iter()
            .map(config::CompiledRoute::new)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let upstream = reqwest::Url::parse(&cfg.upstream)
            .with_context(|| format!("upstream {:?} is not a URL", cfg.upstream))?;
        let client = forward::client(&cfg)?;
        let journal = journal::Journal::open(&cfg.journal_path())?;
        let (changed, _) = tokio::sync::watch::channel(0);
        let edge = Arc::new(Edge {
            active: Mutex::new(Active::new(&cfg.name)),
            routes,
            journal,
            client,
            upstream,
            epoch: Instant::now(),
            changed,
            outbox: tokio::sync::Notify::new(),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            tampered: AtomicU64::new(0),
            holding: AtomicU64::new(0),
            stopping: std::sync::atomic::AtomicBool::new(false),
            cfg,
        });
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        let (addr, serve) = listener::serve(edge.clone(), stop_rx.clone()).await?;
        tasks.push(serve);
        if edge.cfg.controller.is_some() {
            tasks.push(tokio::spawn(sync::run(edge.clone(), stop_rx.clone())));
        }
        tasks.push(tokio::spawn(expiry(edge.clone(), stop_rx)));
        tracing::info!(%addr, upstream = %edge.cfg.upstream, name = %edge.cfg.name, "proxy listening");
        Ok(Proxy {
            addr,
            edge,
            stop,
            tasks,
        })
    }

    pub fn counters(&self) -> Counters {
        Counters {
            requests: self.edge.requests.load(Ordering::Relaxed),
            errors: self.edge.errors.load(Ordering::Relaxed),
            tampered: self.edge.tampered.load(Ordering::Relaxed),
            unacked: self.edge.journal.pending_len() as u64,
        }
    }

    /// Drills injecting now.
    pub fn running(&self) -> Vec<String> {
        let now = self.edge.now_ms();
        self.edge.active.lock().expect("active lock").running(now)
    }

    /// Stops listening and syncing; black-holed requests are released.
    pub async fn stop(self) {
        self.edge.stopping.store(true, Ordering::Release);
        self.edge.changed.send_modify(|v| *v += 1);
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Ends drills whose TTL ran out even when no request comes, so their end is reported.
async fn expiry(edge: Arc<Edge>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(config::EXPIRY_TICK_MS));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let ended = {
            let mut a = edge.active.lock().expect("active lock");
            let before = a.len();
            a.expire(edge.now_ms());
            a.len() != before
        };
        if ended {
            edge.changed.send_modify(|v| *v += 1);
            edge.outbox.notify_one();
        }
    }
}
