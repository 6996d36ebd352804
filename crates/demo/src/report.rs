//! The reporter: how a service tells Steadfast about the fund records it writes, through
//! the public ingest API (`POST /api/v1/records`), as any real system would.
//!
//! Records wait in a bounded queue ([`REPORT_QUEUE_GROUPS_MAX`]) as groups: the records
//! of one write (the two legs of a ledger transaction, a bill and its instalments) stay
//! together in one ingest batch, so Steadfast never sees half a write. When the queue is
//! full the writing request waits (back-pressure, nothing dropped). One sender per service posts batches
//! in order, so a service's records reach Steadfast in the order it wrote them. A batch
//! is retried until acknowledged: 429/503 after `Retry-After`, network errors with
//! backoff. Record ids are deterministic, so a retried batch has no second effect.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use steadfast_model::wire::WireRecord;
use tokio::sync::{mpsc, watch};

/// Groups of records (one write each) waiting to be reported, per service.
pub const REPORT_QUEUE_GROUPS_MAX: usize = 20_000;
/// Most records in one group; larger writes are split (only the wallet's snapshot sweep
/// writes more, and its snapshots are independent of each other).
pub const REPORT_GROUP_MAX: usize = 500;
/// Records in one ingest request: groups are added until this many are reached, so a
/// request holds at most `REPORT_BATCH_MAX + REPORT_GROUP_MAX - 1` records.
pub const REPORT_BATCH_MAX: usize = 2_000;
const _: () = assert!(
    REPORT_BATCH_MAX + REPORT_GROUP_MAX <= 10_000,
    "within the server's default batch_records_max"
);
/// How long a record may wait for companions before its batch is sent.
pub const REPORT_LINGER_MS: u64 = 20;
/// Longest wait between retries of a failed batch.
pub const REPORT_BACKOFF_MS_MAX: u64 = 5_000;

/// Where and how records are reported.
#[derive(Clone, Debug)]
pub struct ReportTarget {
    /// Steadfast's base URL (`http://127.0.0.1:7420`).
    pub url: String,
    /// A token allowed to ingest.
    pub token: String,
}

/// Counters of one reporter.
#[derive(Default, Debug)]
pub struct ReportStats {
    pub queued: AtomicU64,
    pub acknowledged: AtomicU64,
    pub retries: AtomicU64,
    /// Records Steadfast refused as invalid (a bug in the service: never retried).
    pub refused: AtomicU64,
}

/// The sending half; cloned into every handler of a service.
#[derive(Clone)]
pub struct Reporter {
    tx: mpsc::Sender<Vec<WireRecord>>,
    pub stats: Arc<ReportStats>,
}

impl Reporter {
    /// Starts the sender task. Once `stop` turns true it refuses new records, sends
    /// everything already queued and ends.
    pub fn start(
        service: &'static str,
        target: ReportTarget,
        client: reqwest::Client,
        stop: watch::Receiver<bool>,
    ) -> (Reporter, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(REPORT_QUEUE_GROUPS_MAX);
        let stats = Arc::new(ReportStats::default());
        let task = tokio::spawn(send_loop(service, target, client, rx, stats.clone(), stop));
        (Reporter { tx, stats }, task)
    }

    /// Queues records from a blocking thread (inside the database call that wrote them,
    /// so a service reports in the order it commits), waiting while the queue is full.
    ///
    /// Also callable on a worker of a multi-threaded runtime: when the queue is full it
    /// waits in `block_in_place`.
    pub fn report_blocking(&self, mut records: Vec<WireRecord>) {
        while !records.is_empty() {
            let rest = records.split_off(records.len().min(REPORT_GROUP_MAX));
            let group = std::mem::replace(&mut records, rest);
            let n = group.len() as u64;
            self.stats.queued.fetch_add(n, Ordering::Relaxed);
            let sent = match self.tx.try_send(group) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(group)) => {
                    let send = || self.tx.blocking_send(group).map_err(|_| ());
                    if tokio::runtime::Handle::try_current().is_ok() {
                        tokio::task::block_in_place(send)
                    } else {
                        send()
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
            };
            if sent.is_err() {
                tracing::error!(records = n, "reporter stopped; records were not reported");
            }
        }
    }
}

async fn send_loop(
    service: &'static str,
    target: ReportTarget,
    client: reqwest::Client,
    mut rx: mpsc::Receiver<Vec<WireRecord>>,
    stats: Arc<ReportStats>,
    mut stop: watch::Receiver<bool>,
) {
    let url = format!("{}/api/v1/records", target.url.trim_end_matches('/'));
    let mut groups = Vec::new();
    let mut batch = Vec::with_capacity(REPORT_BATCH_MAX + REPORT_GROUP_MAX);
    while crate::svc::next_batch(
        &mut rx,
        &mut stop,
        &mut groups,
        REPORT_BATCH_MAX,
        Vec::len,
        REPORT_LINGER_MS,
    )
    .await
    {
        batch.clear();
        batch.extend(groups.drain(..).flatten());
        send(service, &client, &url, &target.token, &batch, &stats).await;
    }
}

async fn send(
    service: &str,
    client: &reqwest::Client,
    url: &str,
    token: &str,
    batch: &[WireRecord],
    stats: &ReportStats,
) {
    let body = serde_json::to_vec(batch).expect("records serialize");
    let mut backoff_ms = 100;
    loop {
        let res = client
            .post(url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        let wait_ms = match res {
            Ok(r) if r.status().is_success() => {
                stats
                    .acknowledged
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                return;
            }
            Ok(r) if r.status() == 429 || r.status() == 503 => r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(200, |s| s * 1000),
            Ok(r) if r.status().is_client_error() => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                tracing::error!(service, %status, body = %text, "Steadfast refused a batch of records");
                stats
                    .refused
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                return;
            }
            Ok(r) => {
                tracing::warn!(service, status = %r.status(), "ingest failed; retrying");
                backoff_ms
            }
            Err(e) => {
                tracing::warn!(service, error = %e, "ingest unreachable; retrying");
                backoff_ms
            }
        };
        stats.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(wait_ms.min(REPORT_BACKOFF_MS_MAX))).await;
        backoff_ms = (backoff_ms * 2).min(REPORT_BACKOFF_MS_MAX);
    }
}
