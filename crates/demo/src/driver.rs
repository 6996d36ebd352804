//! The load driver: plays the population of [`crate::traffic`] against the gateway over
//! HTTP, at the seasonal rate of simulated time, with a bounded number of requests in
//! flight. This is the only place that turns wall time into simulated time.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};

use crate::traffic::{seasonal_factor, sim_time_ms, Op, OpKind, Traffic};

/// Most requests in flight when not configured.
pub const IN_FLIGHT_MAX_DEFAULT: usize = 256;
/// How far behind the driver may fall (in seconds of traffic) before it stops trying to
/// catch up: past it, the missed operations are skipped and counted.
pub const CATCH_UP_SECS_MAX: f64 = 1.0;

#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// Average operations per second over a simulated week.
    pub rate: f64,
    /// Wall seconds per simulated day.
    pub day_secs: u64,
    /// Vary the rate with the hour and weekday; off for benchmarks that need a flat rate.
    pub seasonal: bool,
    pub in_flight_max: usize,
    /// Stop after this many operations.
    pub ops_max: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

impl Default for DriverConfig {
    fn default() -> DriverConfig {
        DriverConfig {
            rate: 50.0,
            day_secs: 1440,
            seasonal: true,
            in_flight_max: IN_FLIGHT_MAX_DEFAULT,
            ops_max: None,
            duration: None,
        }
    }
}

/// What the driver did, updated live.
#[derive(Debug, Default)]
pub struct DriverStats {
    pub issued: AtomicU64,
    /// Completed with status SUCCESS.
    pub succeeded: AtomicU64,
    /// Answered, but refused or FAILED (insufficient funds, refunds of failed payments).
    pub declined: AtomicU64,
    /// No answer or a 5xx.
    pub errors: AtomicU64,
    /// Operations skipped because the driver fell too far behind.
    pub skipped: AtomicU64,
    pub latency_us_total: AtomicU64,
    /// Simulated time now, epoch milliseconds.
    pub sim_ms: AtomicI64,
}

impl DriverStats {
    pub fn completed(&self) -> u64 {
        self.succeeded.load(Ordering::Relaxed)
            + self.declined.load(Ordering::Relaxed)
            + self.errors.load(Ordering::Relaxed)
    }
}

/// The HTTP request of an operation: path and JSON body.
pub fn request_of(traffic: &Traffic, op: &Op) -> (&'static str, serde_json::Value) {
    let user = &traffic.users[op.user];
    let amount = steadfast_model::format_minor(
        op.amount_minor as i128,
        steadfast_model::Currency::from_code(op.currency).expect("generated currencies exist"),
    );
    let mut body = serde_json::json!({
        "order_no": op.order_no,
        "user_id": user.id,
        "account": user.account,
        "amount": amount,
        "currency": op.currency,
    });
    // The app knows its user's tier, as a bank's app does; the gateway marks the trace.
    if user.vip {
        body["vip"] = true.into();
    }
    let path = match &op.kind {
        OpKind::Pay {
            channel,
            merchant,
            instalments,
        } => {
            body["channel"] = channel.as_str().into();
            body["merchant"] = merchant.as_str().into();
            body["instalments"] = (*instalments).into();
            "/v1/pay"
        }
        OpKind::Refund { order_no } => {
            body["refund_of"] = order_no.as_str().into();
            "/v1/refund"
        }
        OpKind::TopUp => "/v1/topup",
        OpKind::Withdraw => "/v1/withdraw",
    };
    (path, body)
}

/// Runs until `stop`, `ops_max` or `duration`, then waits for the requests in flight.
pub async fn drive(
    mut traffic: Traffic,
    gateway: String,
    cfg: DriverConfig,
    stats: Arc<DriverStats>,
    mut stop: watch::Receiver<bool>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(cfg.in_flight_max)
        .build()
        .expect("HTTP client builds");
    let permits = Arc::new(Semaphore::new(cfg.in_flight_max.max(1)));
    let started = Instant::now();
    let mut last = started;
    let mut credit = 0.0f64;
    let mut every = tokio::time::interval(Duration::from_millis(5));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'run: loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = crate::svc::stopped(&mut stop) => break,
        }
        let now = Instant::now();
        if cfg.duration.is_some_and(|d| now - started >= d) {
            break;
        }
        let sim = sim_time_ms((now - started).as_millis() as i64, cfg.day_secs);
        stats.sim_ms.store(sim, Ordering::Relaxed);
        let factor = if cfg.seasonal {
            seasonal_factor(sim)
        } else {
            1.0
        };
        let rate = cfg.rate * factor;
        credit += rate * (now - last).as_secs_f64();
        last = now;
        let cap = (rate * CATCH_UP_SECS_MAX).max(1.0);
        if credit > cap {
            stats
                .skipped
                .fetch_add((credit - cap) as u64, Ordering::Relaxed);
            credit = cap;
        }
        while credit >= 1.0 {
            if cfg
                .ops_max
                .is_some_and(|m| stats.issued.load(Ordering::Relaxed) >= m)
            {
                break 'run;
            }
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => p.expect("semaphore open"),
                _ = crate::svc::stopped(&mut stop) => break 'run,
            };
            credit -= 1.0;
            let op = traffic.next_op();
            let (path, body) = request_of(&traffic, &op);
            stats.issued.fetch_add(1, Ordering::Relaxed);
            let url = format!("{gateway}{path}");
            let client = client.clone();
            let stats = stats.clone();
            tokio::spawn(async move {
                let t0 = Instant::now();
                let res = client.post(&url).json(&body).send().await;
                match res {
                    Ok(r) if r.status().is_success() => {
                        let ok = r
                            .json::<serde_json::Value>()
                            .await
                            .ok()
                            .is_some_and(|v| v["status"] == "SUCCESS");
                        let counter = if ok {
                            &stats.succeeded
                        } else {
                            &stats.declined
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) if r.status().is_client_error() => {
                        stats.declined.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                stats
                    .latency_us_total
                    .fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
                drop(permit);
            });
        }
    }
    // Wait for everything in flight.
    let _ = permits.acquire_many(cfg.in_flight_max.max(1) as u32).await;
}
