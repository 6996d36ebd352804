//! The CLI's side of the HTTP API.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

/// Longest wait honoured from a server's Retry-After.
const RETRY_WAIT_SECS_MAX: u64 = 60;
/// Attempts per batch before giving up.
const ATTEMPTS_MAX: u32 = 20;

#[derive(clap::Args)]
pub struct Conn {
    /// Server base URL.
    #[arg(
        long,
        default_value = "http://127.0.0.1:7420",
        env = "STEADFAST_SERVER"
    )]
    server: String,
    /// API token; by default the data directory's admin.token (which `steadfast demo`
    /// writes for its session).
    #[arg(long, env = "STEADFAST_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long, default_value = "steadfast-data")]
    pub data_dir: PathBuf,
    /// PEM CA certificate to trust for an https server with a private CA.
    #[arg(long, env = "STEADFAST_CA_CERT")]
    ca_cert: Option<PathBuf>,
}

impl Conn {
    fn token(&self) -> anyhow::Result<String> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let path = self.data_dir.join("admin.token");
        std::fs::read_to_string(&path)
            .map(|t| t.trim().to_string())
            .with_context(|| {
                format!(
                    "no --token (or STEADFAST_TOKEN) given and {} is not readable; create the first admin token with `steadfast token create --local --data-dir {} --role admin --subject YOUR_NAME`",
                    path.display(),
                    self.data_dir.display()
                )
            })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.server.trim_end_matches('/'), path)
    }

    fn client(&self) -> anyhow::Result<reqwest::Client> {
        let mut b = reqwest::Client::builder().timeout(Duration::from_secs(120));
        if let Some(ca) = &self.ca_cert {
            let pem =
                std::fs::read(ca).with_context(|| format!("failed to read {}", ca.display()))?;
            b = b.add_root_certificate(
                reqwest::Certificate::from_pem(&pem)
                    .with_context(|| format!("{} is not a PEM certificate", ca.display()))?,
            );
        }
        Ok(b.build()?)
    }

    /// A GET whose answer is text (CSV, Markdown).
    pub async fn text(&self, path: &str) -> anyhow::Result<String> {
        let req = self.client()?.get(self.url(path));
        Ok(self.send(req).await?.text().await?)
    }

    /// Sends a request with the token; the answer, or the server's error as text.
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req
            .bearer_auth(self.token()?)
            .send()
            .await
            .map_err(|e| e.without_url())
            .with_context(|| format!("could not reach {}", self.server))?;
        if !resp.status().is_success() {
            bail!("{}", error_text(resp).await);
        }
        Ok(resp)
    }

    /// One API call with the token; the JSON answer, or the server's error as text.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self.client()?.request(method, self.url(path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        Ok(self.send(req).await?.json().await.unwrap_or(Value::Null))
    }
}

async fn error_text(resp: reqwest::Response) -> String {
    let status = resp.status();
    match resp.json::<Value>().await {
        Ok(v) => {
            let mut msg = format!("{status}: {}", v["message"].as_str().unwrap_or(""));
            if let Some(errors) = v["errors"].as_array() {
                for e in errors.iter().take(crate::input::ERRORS_SHOWN_MAX) {
                    msg += &format!(
                        "\n  record {}: {}",
                        e["index"],
                        e["message"].as_str().unwrap_or("")
                    );
                }
            }
            msg
        }
        Err(_) => status.to_string(),
    }
}

pub async fn ingest(conn: &Conn, files: &[PathBuf], batch: usize) -> anyhow::Result<()> {
    let token = conn.token()?;
    let http = conn.client()?;
    for path in files {
        // Validate locally first so that nothing of a bad file is sent.
        let (records, errors) = crate::input::read_file(path, |_| {})?;
        crate::input::refuse_errors(path, &errors)?;
        let pb = ProgressBar::new(records.len() as u64);
        pb.set_style(
            ProgressStyle::with_template(&format!(
                "{} [{{bar:30}}] {{pos}}/{{len}} records {{per_sec}} eta {{eta}}",
                path.display()
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        for chunk in records.chunks(batch) {
            let mut body = String::new();
            for r in chunk {
                body += &serde_json::to_string(&steadfast_model::wire::WireRecord::from(r))?;
                body.push('\n');
            }
            let mut attempt = 0;
            loop {
                attempt += 1;
                let resp = http
                    .post(conn.url("/api/v1/records"))
                    .bearer_auth(&token)
                    .header("content-type", "application/x-ndjson")
                    .body(body.clone())
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status().is_success() => break,
                    Ok(r)
                        if (r.status().as_u16() == 429 || r.status().as_u16() == 503)
                            && attempt < ATTEMPTS_MAX =>
                    {
                        let wait = r
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u64>().ok())
                            .unwrap_or(1)
                            .min(RETRY_WAIT_SECS_MAX);
                        pb.set_message(format!("server busy, retrying in {wait} s"));
                        tokio::time::sleep(Duration::from_secs(wait)).await;
                    }
                    Ok(r) => bail!("{}: batch refused: {}", path.display(), error_text(r).await),
                    Err(e) if attempt < ATTEMPTS_MAX => {
                        tracing::warn!(error = %e.without_url(), "request failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => {
                        return Err(e.without_url()).context(format!(
                            "{}: could not reach {}",
                            path.display(),
                            conn.server
                        ))
                    }
                }
            }
            pb.inc(chunk.len() as u64);
        }
        pb.finish();
        eprintln!(
            "{}: {} records acknowledged (durable)",
            path.display(),
            records.len()
        );
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct BreakFilterArgs {
    #[arg(long)]
    rule: Option<String>,
    #[arg(long)]
    link: Option<String>,
    #[arg(long)]
    kind: Option<String>,
    /// open, acknowledged or resolved.
    #[arg(long)]
    status: Option<String>,
    #[arg(long)]
    owner: Option<String>,
    #[arg(long)]
    min_age_secs: Option<u64>,
    #[arg(long)]
    since: Option<String>,
    #[arg(long)]
    until: Option<String>,
    /// Most breaks to list.
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

pub async fn breaks(conn: &Conn, f: &BreakFilterArgs, format: &str) -> anyhow::Result<()> {
    let token = conn.token()?;
    let mut query: Vec<(&str, String)> = vec![("limit", f.limit.to_string())];
    for (k, v) in [
        ("rule", &f.rule),
        ("link", &f.link),
        ("kind", &f.kind),
        ("status", &f.status),
        ("owner", &f.owner),
        ("since", &f.since),
        ("until", &f.until),
    ] {
        if let Some(v) = v {
            query.push((k, v.clone()));
        }
    }
    if let Some(a) = f.min_age_secs {
        query.push(("min_age_secs", a.to_string()));
    }
    if format == "csv" {
        query.push(("format", "csv".into()));
    }
    let resp = conn
        .client()?
        .get(conn.url("/api/v1/breaks"))
        .bearer_auth(&token)
        .query(&query)
        .send()
        .await
        .map_err(|e| e.without_url())?;
    if !resp.status().is_success() {
        bail!("{}", error_text(resp).await);
    }
    if format == "csv" {
        print!("{}", resp.text().await?);
        return Ok(());
    }
    let rows: Vec<Value> = resp.json().await?;
    if format == "json" {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:>6}  {:<18} {:<20} {:<16} {:<12} {:>8}  MESSAGE",
        "ID", "RULE", "KIND", "KEY", "STATUS", "AGE"
    );
    for r in rows {
        let overdue = if r["overdue"].as_bool() == Some(true) {
            " OVERDUE"
        } else {
            ""
        };
        println!(
            "{:>6}  {:<18} {:<20} {:<16} {:<12} {:>7}s  {}{overdue}",
            r["id"].as_u64().unwrap_or(0),
            r["rule"].as_str().unwrap_or(""),
            r["kind"].as_str().unwrap_or(""),
            r["key"].as_str().unwrap_or(""),
            r["status"].as_str().unwrap_or(""),
            r["age_secs"].as_i64().unwrap_or(0),
            r["message"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

pub async fn break_status(
    conn: &Conn,
    id: u64,
    status: Option<String>,
    owner: Option<String>,
    reason: String,
) -> anyhow::Result<()> {
    let body = serde_json::json!({ "status": status, "owner": owner, "reason": reason });
    let v = conn
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/breaks/{id}/status"),
            Some(body),
        )
        .await?;
    println!(
        "break {id} is {}{}",
        v["status"].as_str().unwrap_or(""),
        v["owner"]
            .as_str()
            .map(|o| format!(", owned by {o}"))
            .unwrap_or_default()
    );
    Ok(())
}
