//! Failure modes a service can be put into at run time through its admin API
//! (`GET`/`POST /admin/faults`): a slow database, error bursts, a stuck service, a memory
//! leak, a CPU hog, and (billing only) a corrupted amount written downstream.
//!
//! Every mode is real: a slow database does real work inside SQLite for each query, a leak
//! holds real resident memory, a hog burns real CPU. Each has a bound.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Longest extra database time per query.
pub const SLOW_DB_MS_MAX: u32 = 10_000;
/// Longest an error burst can be asked to last.
pub const ERROR_BURST_SECS_MAX: u64 = 3_600;
/// Longest a request is held by a stuck service before it gets 504.
pub const STUCK_HOLD_MS_MAX: u64 = 60_000;
/// Most memory a leak holds; past it the leak stops growing.
pub const LEAK_BYTES_MAX: u64 = 1 << 30;
/// Fastest a leak can grow.
pub const LEAK_KIB_PER_SEC_MAX: u64 = 100 * 1024;

/// The state of the failure modes, as the admin API shows it. In a request every field is
/// optional and only the given ones change.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FaultsView {
    /// Extra time every database query takes, as real work inside SQLite.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_db_ms: Option<u32>,
    /// Percentage of requests answered with 500 during the burst.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_percent: Option<u32>,
    /// How long the error burst lasts from now; 0 ends it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_secs: Option<u64>,
    /// Requests are held (and time out at the caller) until this is cleared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stuck: Option<bool>,
    /// Memory retained per second; 0 stops the leak and frees what it held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leak_kib_per_sec: Option<u64>,
    /// Threads burning CPU; 0 stops them. At most the number of cores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_hog_threads: Option<u32>,
    /// Billing only: minor units added to every bill amount written (a corrupted
    /// downstream write, the failure fund verification exists to catch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corrupt_amount_minor: Option<i64>,
    /// Read-only: bytes the leak holds now.
    #[serde(skip_serializing_if = "Option::is_none", skip_deserializing)]
    pub leaked_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FaultError {
    #[error("{0}")]
    Invalid(String),
}

/// A service's failure modes.
pub struct Faults {
    slow_db_ms: AtomicU32,
    error_percent: AtomicU32,
    error_until: Mutex<Option<Instant>>,
    stuck: tokio::sync::watch::Sender<bool>,
    leak_kib_per_sec: AtomicU64,
    leaked: Mutex<Vec<Vec<u8>>>,
    leaked_bytes: AtomicU64,
    hog_generation: Arc<AtomicU64>,
    hog_threads: AtomicU32,
    corrupt_amount_minor: AtomicI64,
    corruptible: bool,
    stopped: AtomicBool,
}

impl Faults {
    /// `corruptible`: whether `corrupt_amount_minor` applies to this service.
    pub fn new(corruptible: bool) -> Arc<Faults> {
        Arc::new(Faults {
            slow_db_ms: AtomicU32::new(0),
            error_percent: AtomicU32::new(0),
            error_until: Mutex::new(None),
            stuck: tokio::sync::watch::channel(false).0,
            leak_kib_per_sec: AtomicU64::new(0),
            leaked: Mutex::new(Vec::new()),
            leaked_bytes: AtomicU64::new(0),
            hog_generation: Arc::new(AtomicU64::new(0)),
            hog_threads: AtomicU32::new(0),
            corrupt_amount_minor: AtomicI64::new(0),
            corruptible,
            stopped: AtomicBool::new(false),
        })
    }

    pub fn view(&self) -> FaultsView {
        let error_secs = self
            .error_until
            .lock()
            .expect("faults lock")
            .map(|t| t.saturating_duration_since(Instant::now()).as_secs())
            .unwrap_or(0);
        FaultsView {
            slow_db_ms: Some(self.slow_db_ms.load(Ordering::Relaxed)),
            error_percent: Some(self.error_percent.load(Ordering::Relaxed)),
            error_secs: Some(error_secs),
            stuck: Some(*self.stuck.borrow()),
            leak_kib_per_sec: Some(self.leak_kib_per_sec.load(Ordering::Relaxed)),
            cpu_hog_threads: Some(self.hog_threads.load(Ordering::Relaxed)),
            corrupt_amount_minor: self
                .corruptible
                .then(|| self.corrupt_amount_minor.load(Ordering::Relaxed)),
            leaked_bytes: Some(self.leaked_bytes.load(Ordering::Relaxed)),
        }
    }

    /// Applies the given fields after checking all of them: a bad field changes nothing.
    pub fn apply(&self, v: &FaultsView) -> Result<(), FaultError> {
        let bad = |m: String| Err(FaultError::Invalid(m));
        if v.slow_db_ms.is_some_and(|x| x > SLOW_DB_MS_MAX) {
            return bad(format!("slow_db_ms must be at most {SLOW_DB_MS_MAX}"));
        }
        if v.error_percent.is_some_and(|x| x > 100) {
            return bad("error_percent must be at most 100".into());
        }
        if v.error_secs.is_some_and(|x| x > ERROR_BURST_SECS_MAX) {
            return bad(format!("error_secs must be at most {ERROR_BURST_SECS_MAX}"));
        }
        if v.leak_kib_per_sec.is_some_and(|x| x > LEAK_KIB_PER_SEC_MAX) {
            return bad(format!(
                "leak_kib_per_sec must be at most {LEAK_KIB_PER_SEC_MAX}"
            ));
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        if v.cpu_hog_threads.is_some_and(|x| x > cores) {
            return bad(format!(
                "cpu_hog_threads must be at most {cores}, the number of cores"
            ));
        }
        if v.corrupt_amount_minor.is_some() && !self.corruptible {
            return bad("corrupt_amount_minor applies to the billing service only".into());
        }
        if let Some(x) = v.slow_db_ms {
            self.slow_db_ms.store(x, Ordering::Relaxed);
        }
        if let Some(x) = v.error_percent {
            self.error_percent.store(x, Ordering::Relaxed);
        }
        if let Some(secs) = v.error_secs {
            *self.error_until.lock().expect("faults lock") =
                (secs > 0).then(|| Instant::now() + Duration::from_secs(secs));
        }
        if let Some(x) = v.stuck {
            self.stuck.send_replace(x);
        }
        if let Some(x) = v.leak_kib_per_sec {
            self.leak_kib_per_sec.store(x, Ordering::Relaxed);
            if x == 0 {
                self.leaked.lock().expect("leak lock").clear();
                self.leaked_bytes.store(0, Ordering::Relaxed);
            }
        }
        if let Some(n) = v.cpu_hog_threads {
            self.set_hog(n);
        }
        if let Some(x) = v.corrupt_amount_minor {
            self.corrupt_amount_minor.store(x, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Clears every failure mode.
    pub fn clear(&self) {
        let _ = self.apply(&FaultsView {
            slow_db_ms: Some(0),
            error_percent: Some(0),
            error_secs: Some(0),
            stuck: Some(false),
            leak_kib_per_sec: Some(0),
            cpu_hog_threads: Some(0),
            corrupt_amount_minor: self.corruptible.then_some(0),
            leaked_bytes: None,
        });
    }

    /// Stops the background work of the failure modes for good (at service shutdown).
    pub fn stop(&self) {
        self.clear();
        self.stopped.store(true, Ordering::Relaxed);
    }

    fn set_hog(&self, n: u32) {
        // A new generation ends the threads of the previous one.
        let generation = self.hog_generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.hog_threads.store(n, Ordering::Relaxed);
        for _ in 0..n {
            let current = self.hog_generation.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while current.load(Ordering::Relaxed) == generation {
                    for i in 0..100_000u64 {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(i),
                        );
                    }
                }
            });
        }
    }

    /// The extra database time per query the slow-database mode promises.
    pub fn slow_db_ms(&self) -> u64 {
        self.slow_db_ms.load(Ordering::Relaxed) as u64
    }

    /// Extra iterations of database work per query, from the calibrated speed.
    pub fn slow_db_iterations(&self) -> u64 {
        let ms = self.slow_db_ms.load(Ordering::Relaxed) as u64;
        if ms == 0 {
            return 0;
        }
        ms * db_iterations_per_ms()
    }

    pub fn corrupt_amount_minor(&self) -> i64 {
        if self.corruptible {
            self.corrupt_amount_minor.load(Ordering::Relaxed)
        } else {
            0
        }
    }

    /// Grows the leak by one tenth of a second's worth; called every 100 ms.
    pub fn leak_step(&self) {
        let kib = self.leak_kib_per_sec.load(Ordering::Relaxed);
        if kib == 0 || self.stopped.load(Ordering::Relaxed) {
            return;
        }
        let bytes = (kib * 1024 / 10).max(1);
        let held = self.leaked_bytes.load(Ordering::Relaxed);
        if held + bytes > LEAK_BYTES_MAX {
            return;
        }
        // Written, not just reserved, so the memory is resident.
        self.leaked
            .lock()
            .expect("leak lock")
            .push(vec![0xA5; bytes as usize]);
        self.leaked_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn error_now(&self) -> bool {
        let until = *self.error_until.lock().expect("faults lock");
        match until {
            Some(t) if Instant::now() < t => {
                let p = self.error_percent.load(Ordering::Relaxed);
                p > 0 && rand::thread_rng().gen_range(0..100) < p
            }
            _ => false,
        }
    }
}

/// SQLite work per millisecond on this machine, measured once: the recursive query the
/// slow-database mode runs is timed on an in-memory database.
pub fn db_iterations_per_ms() -> u64 {
    static RATE: OnceLock<u64> = OnceLock::new();
    *RATE.get_or_init(|| {
        let Ok(conn) = rusqlite::Connection::open_in_memory() else {
            return 1_000;
        };
        let n = 200_000u64;
        let started = Instant::now();
        if burn(&conn, n).is_err() {
            return 1_000;
        }
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        ((n as f64 / ms.max(0.001)) as u64).max(1)
    })
}

/// Real work inside SQLite: a recursive query counting to `iterations`.
pub fn burn(conn: &rusqlite::Connection, iterations: u64) -> rusqlite::Result<()> {
    conn.query_row(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?1) SELECT count(*) FROM c",
        [iterations as i64],
        |_| Ok(()),
    )
}

/// Axum middleware for a service's business routes: error bursts and the stuck mode.
pub async fn inject(State(f): State<Arc<Faults>>, req: Request, next: Next) -> Response {
    let mut stuck = f.stuck.subscribe();
    if *stuck.borrow_and_update() {
        let released = tokio::time::timeout(
            Duration::from_millis(STUCK_HOLD_MS_MAX),
            stuck.wait_for(|s| !*s),
        )
        .await;
        if released.is_err() {
            return (StatusCode::GATEWAY_TIMEOUT, "service stuck").into_response();
        }
    }
    if f.error_now() {
        return (StatusCode::INTERNAL_SERVER_ERROR, "injected error").into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_field_changes_nothing() {
        let f = Faults::new(false);
        let err = f
            .apply(&FaultsView {
                slow_db_ms: Some(50),
                error_percent: Some(101),
                ..Default::default()
            })
            .unwrap_err();
        assert!(err.to_string().contains("error_percent"));
        assert_eq!(f.view().slow_db_ms, Some(0));
        let err = f
            .apply(&FaultsView {
                corrupt_amount_minor: Some(1),
                ..Default::default()
            })
            .unwrap_err();
        assert!(err.to_string().contains("billing"));
    }

    #[test]
    fn the_leak_grows_to_its_bound_and_is_freed() {
        let f = Faults::new(false);
        f.apply(&FaultsView {
            leak_kib_per_sec: Some(LEAK_KIB_PER_SEC_MAX),
            ..Default::default()
        })
        .unwrap();
        for _ in 0..200 {
            f.leak_step();
        }
        let held = f.view().leaked_bytes.unwrap();
        assert!(
            held <= LEAK_BYTES_MAX && held > LEAK_BYTES_MAX / 2,
            "{held}"
        );
        f.clear();
        assert_eq!(f.view().leaked_bytes, Some(0));
    }

    #[test]
    fn a_slow_database_is_slow() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let iterations = 20 * db_iterations_per_ms();
        let started = Instant::now();
        burn(&conn, iterations).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(5));
    }
}
