//! The sync with the Steadfast server: a long poll that brings the drill assignment (the
//! kill switch with it) the moment it changes, and carries the hits and aborts back. The
//! version the proxy applied goes with every call, so the server knows when the proxy has
//! stopped. When the server cannot be reached the proxy keeps what it has: its drills end
//! by their own deadlines, and hits wait in the journal.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use steadfast_drill::proxy::{SyncRequest, SyncResponse, HITS_PER_SYNC_MAX};

use crate::config::{SYNC_RETRY_MS, SYNC_WAIT_MS};
use crate::Edge;

fn client(edge: &Edge) -> anyhow::Result<(reqwest::Client, String, String)> {
    let c = edge
        .cfg
        .controller
        .as_ref()
        .expect("sync runs with a controller");
    let token = match (&c.token, &c.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| anyhow::anyhow!("failed to read {}: {e}", f.display()))?
            .trim()
            .to_string(),
        (None, None) => anyhow::bail!("no controller token"),
    };
    let mut b = reqwest::Client::builder().timeout(Duration::from_millis(SYNC_WAIT_MS + 10_000));
    if let Some(ca) = &c.ca_cert {
        let pem = std::fs::read(ca)
            .map_err(|e| anyhow::anyhow!("failed to read {}: {e}", ca.display()))?;
        b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
    }
    let url = format!(
        "{}/api/v1/proxies/{}/sync",
        c.url.trim_end_matches('/'),
        edge.cfg.name
    );
    Ok((b.build()?, url, token))
}

pub(crate) async fn run(edge: Arc<Edge>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let (http, url, token) = match client(&edge) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the proxy cannot reach its controller; no drill will be assigned");
            return;
        }
    };
    let mut aborts = Vec::new();
    loop {
        if *stop.borrow() {
            return;
        }
        let hits = edge.journal.peek(HITS_PER_SYNC_MAX);
        aborts.extend(edge.active.lock().expect("active lock").take_aborts());
        let urgent = !hits.is_empty() || !aborts.is_empty();
        let req = SyncRequest {
            applied: edge.active.lock().expect("active lock").version(),
            wait_ms: if urgent { 0 } else { SYNC_WAIT_MS },
            hits,
            aborts: aborts.clone(),
            requests: edge.requests.load(Ordering::Relaxed),
            errors: edge.errors.load(Ordering::Relaxed),
        };
        let call = http.post(&url).bearer_auth(&token).json(&req).send();
        let answered = tokio::select! {
            r = call => Some(r),
            // Something to report: give up the long poll and sync now.
            _ = edge.outbox.notified(), if !urgent => None,
            _ = stop.changed() => return,
        };
        let Some(answered) = answered else { continue };
        let resp = match answered {
            Ok(r) if r.status().is_success() => r.json::<SyncResponse>().await,
            Ok(r) => {
                tracing::warn!(status = %r.status(), "the controller refused a sync");
                tokio::time::sleep(Duration::from_millis(SYNC_RETRY_MS)).await;
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "controller unreachable");
                tokio::time::sleep(Duration::from_millis(SYNC_RETRY_MS)).await;
                continue;
            }
        };
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable sync answer");
                tokio::time::sleep(Duration::from_millis(SYNC_RETRY_MS)).await;
                continue;
            }
        };
        aborts.clear();
        let gone = edge.journal.acknowledge(&resp.acked);
        {
            let mut a = edge.active.lock().expect("active lock");
            a.acknowledge(gone);
            a.apply(&resp, edge.now_ms());
        }
        edge.changed.send_modify(|v| *v += 1);
    }
}
