//! Webhook delivery of new production breaks from the durable outbox: batched, retried
//! with exponential backoff, at least once, never on the ingest path.

use std::sync::Arc;
use std::time::Duration;

use crate::api::AppState;
use crate::pipeline::wall_ms;
use crate::view::BreakView;

/// How often the outbox is polled when idle.
const POLL_MS: u64 = 250;

pub async fn run(state: Arc<AppState>, url: String, mut stop: tokio::sync::watch::Receiver<bool>) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(state.cfg.webhook.timeout_secs))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhook client failed to start; breaks stay in the outbox");
            return;
        }
    };
    loop {
        let delivered = deliver_once(&state, &client, &url).await;
        if delivered == 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(POLL_MS)) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// Sends one batch; returns how many breaks were delivered.
async fn deliver_once(state: &Arc<AppState>, client: &reqwest::Client, url: &str) -> usize {
    let now = wall_ms();
    let store = state.pipeline.store.clone();
    let batch_max = state.cfg.webhook.batch_max;
    let loaded = tokio::task::spawn_blocking(move || {
        let st = store.lock().expect("store lock");
        let due = st.outbox_due(now, batch_max)?;
        let pending = st.outbox_len()?;
        let mut rows = Vec::new();
        for item in &due {
            if let Some(row) = st.get(item.break_id)? {
                rows.push(row);
            }
        }
        Ok::<_, steadfast_store::StoreError>((due, rows, pending))
    })
    .await;
    let Ok(Ok((due, rows, pending))) = loaded else {
        tracing::error!("webhook outbox could not be read");
        return 0;
    };
    state.metrics.outbox_pending.set(pending as i64);
    if due.is_empty() {
        return 0;
    }
    let views: Vec<BreakView> = rows
        .into_iter()
        .map(|r| crate::api::view(state, r, now, false))
        .collect();
    let ok = match client
        .post(url)
        .json(&serde_json::json!({ "breaks": views }))
        .send()
        .await
    {
        Ok(resp) if resp.status().is_success() => true,
        Ok(resp) => {
            tracing::warn!(status = %resp.status(), "webhook refused a delivery; will retry");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e.without_url(), "webhook delivery failed; will retry");
            false
        }
    };
    let ids: Vec<i64> = due.iter().map(|d| d.id).collect();
    let attempts = due.iter().map(|d| d.attempts).max().unwrap_or(0);
    let backoff_ms =
        (1000u64 << attempts.min(16)).min(state.cfg.webhook.backoff_secs_max * 1000) as i64;
    let store = state.pipeline.store.clone();
    let n = ids.len();
    let _ = tokio::task::spawn_blocking(move || {
        let mut st = store.lock().expect("store lock");
        if ok {
            st.outbox_done(&ids)
        } else {
            st.outbox_retry(&ids, wall_ms() + backoff_ms)
        }
    })
    .await;
    if ok {
        n
    } else {
        state.metrics.webhook_failures.inc();
        0
    }
}
