//! Exports the audit log, in order and at least once, to a JSON-lines file and/or a
//! webhook (NDJSON batches, e.g. for a SIEM). Each sink keeps its cursor (the last
//! exported `seq`) in the control store, so a restart resumes where it stopped.

use std::sync::Arc;
use std::time::Duration;

use steadfast_store::control::{AuditEntry, AuditFilter};

use crate::api::AppState;

/// How often the log is polled for new entries when idle.
const POLL_MS: u64 = 500;

pub enum Sink {
    File(std::path::PathBuf),
    Webhook(String),
}

impl Sink {
    fn cursor_key(&self) -> &'static str {
        match self {
            Sink::File(_) => "audit.export.file.seq",
            Sink::Webhook(_) => "audit.export.webhook.seq",
        }
    }
}

pub async fn run(state: Arc<AppState>, sink: Sink, mut stop: tokio::sync::watch::Receiver<bool>) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(state.cfg.audit.timeout_secs))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "audit export client failed to start");
            return;
        }
    };
    let mut failures = 0u32;
    loop {
        let sent = export_once(&state, &sink, &client).await;
        let wait_ms = match sent {
            Ok(0) => POLL_MS,
            Ok(_) => {
                failures = 0;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "audit export failed; will retry");
                state.metrics.audit_export_failures.inc();
                failures += 1;
                (1000u64 << failures.min(8)).min(300_000)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn export_once(
    state: &Arc<AppState>,
    sink: &Sink,
    client: &reqwest::Client,
) -> anyhow::Result<usize> {
    let control = state.control.clone();
    let key = sink.cursor_key();
    let batch_max = state.cfg.audit.batch_max;
    let entries: Vec<AuditEntry> = tokio::task::spawn_blocking(move || {
        let c = control.lock().expect("control store lock");
        let after = c.setting(key)?.and_then(|v| v.parse().ok()).unwrap_or(0u64);
        c.audit(&AuditFilter {
            after_seq: after,
            target: None,
            newest_first: false,
            limit: batch_max,
            ..Default::default()
        })
    })
    .await??;
    let Some(last) = entries.last().map(|e| e.seq) else {
        return Ok(0);
    };
    match sink {
        Sink::File(path) => {
            let path = path.clone();
            let batch = entries.clone();
            tokio::task::spawn_blocking(move || {
                steadfast_store::control::append_jsonl(&path, &batch)
            })
            .await??;
        }
        Sink::Webhook(url) => {
            let mut body = String::new();
            for e in &entries {
                body += &serde_json::to_string(e)?;
                body.push('\n');
            }
            let resp = client
                .post(url)
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await
                .map_err(|e| e.without_url())?;
            if !resp.status().is_success() {
                anyhow::bail!("the audit webhook answered {}", resp.status());
            }
        }
    }
    let control = state.control.clone();
    tokio::task::spawn_blocking(move || {
        control
            .lock()
            .expect("control store lock")
            .set_setting(key, &last.to_string())
    })
    .await??;
    Ok(entries.len())
}
