//! The CLI's control-plane commands: tokens, users, approvals, the kill switch, runbooks
//! and the audit log. `--local` commands work on the data directory itself (the trust root: whoever
//! can write it owns the server), for the first admin token or when the server is down.

use std::path::PathBuf;

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::{json, Value};
use steadfast_server::auth::TokenSpec;
use steadfast_server::{AuthConfig, NewUser};
use steadfast_store::control::AuditFilter;
use steadfast_store::ControlStore;

use crate::client::Conn;

/// Who a local command acts as in the audit log.
fn local_actor() -> String {
    format!(
        "local:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

#[derive(clap::Subcommand)]
pub enum TokenCmd {
    /// Create a token; its text is printed once (it is stored hashed).
    Create {
        /// viewer, ingest, operator, drill-admin, runbook-executor, admin or beacon.
        #[arg(long)]
        role: String,
        /// The person or machine it speaks for (four-eyes compares these).
        #[arg(long)]
        subject: String,
        #[arg(long, default_value = "")]
        name: String,
        /// A fund link it may touch (repeatable); none and no --service: everything.
        #[arg(long = "link")]
        links: Vec<String>,
        /// A service (record source) it may touch (repeatable).
        #[arg(long = "service")]
        services: Vec<String>,
        /// For beacon keys: the site it sends beacons for.
        #[arg(long)]
        site: Option<String>,
        /// Lifetime, e.g. 30d or 12h (default 90 days).
        #[arg(long)]
        expires_in: Option<humantime::Duration>,
        /// Requests per second (default: the server's).
        #[arg(long)]
        rate: Option<u32>,
        /// Largest request body in bytes (default: the server's).
        #[arg(long)]
        body_bytes_max: Option<u64>,
        /// Write to the data directory instead of calling the server (the first admin token).
        #[arg(long)]
        local: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// List tokens (never their secrets).
    List {
        /// Include revoked and expired tokens.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke a token at once.
    Revoke {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(clap::Subcommand)]
pub enum UserCmd {
    /// Add a local user for the dashboard; the password is read from STEADFAST_PASSWORD or
    /// the first line of standard input.
    Add {
        name: String,
        #[arg(long)]
        role: String,
        #[arg(long = "link")]
        links: Vec<String>,
        #[arg(long = "service")]
        services: Vec<String>,
        #[arg(long)]
        local: bool,
        #[command(flatten)]
        conn: Conn,
    },
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Disable a user and revoke its sessions.
    Disable {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(clap::Subcommand)]
pub enum AuditCmd {
    /// Check the hash chain of a data directory's audit log; names the first bad entry
    /// and exits 1 when it does not hold.
    Verify {
        #[arg(long, default_value = "steadfast-data")]
        data_dir: PathBuf,
    },
    /// List audit entries from the server.
    List {
        #[arg(long, default_value_t = 0)]
        after_seq: u64,
        #[arg(long)]
        actor: Option<String>,
        #[arg(long)]
        action: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// table, json or jsonl.
        #[arg(long, default_value = "table")]
        format: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Write a data directory's whole audit log as JSON lines (for a SIEM or an archive).
    Export {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "steadfast-data")]
        data_dir: PathBuf,
    },
}

#[derive(clap::Subcommand)]
pub enum KillSwitchCmd {
    /// Show whether the kill switch is engaged.
    Status {
        #[command(flatten)]
        conn: Conn,
    },
    /// Stop every drill and refuse new ones. Never needs approval.
    Pull {
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Release it; under four-eyes this asks a second person to approve.
    Release {
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        conn: Conn,
    },
}

fn print(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub async fn token(cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create {
            role,
            subject,
            name,
            links,
            services,
            site,
            expires_in,
            rate,
            body_bytes_max,
            local,
            conn,
        } => {
            let spec = TokenSpec {
                subject,
                name,
                role,
                links,
                services,
                site,
                expires_in_secs: expires_in.map(|d| d.as_secs().max(1)),
                rate_per_sec: rate,
                body_bytes_max,
            };
            let (id, text, expires) = if local {
                let (row, text) = steadfast_server::auth::create_local_token(
                    &conn.data_dir,
                    &spec,
                    &local_actor(),
                    AuthConfig::default().token_lifetime_secs_default,
                )?;
                (row.id, text, row.expires_at)
            } else {
                let v = conn
                    .call(
                        Method::POST,
                        "/api/v1/tokens",
                        Some(serde_json::to_value(&spec)?),
                    )
                    .await?;
                (
                    v["id"].as_str().unwrap_or("").to_string(),
                    v["token"].as_str().unwrap_or("").to_string(),
                    v["expires_at"].as_i64(),
                )
            };
            eprintln!(
                "created token {id} ({}), expires {}; it is shown only now:",
                spec.role,
                expires
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_else(|| "never".into())
            );
            println!("{text}");
            Ok(())
        }
        TokenCmd::List { all, conn } => {
            let path = if all {
                "/api/v1/tokens?all=true"
            } else {
                "/api/v1/tokens"
            };
            let v = conn.call(Method::GET, path, None).await?;
            println!(
                "{:<12}  {:<11} {:<16} {:<18} {:<20} EXPIRES",
                "ID", "KIND", "ROLE", "SUBJECT", "NAME"
            );
            for t in v.as_array().into_iter().flatten() {
                let expires = t["expires_at"]
                    .as_i64()
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                    .unwrap_or_else(|| "never".into());
                let revoked = if t["revoked_at"].is_null() {
                    ""
                } else {
                    " REVOKED"
                };
                println!(
                    "{:<12}  {:<11} {:<16} {:<18} {:<20} {expires}{revoked}",
                    t["id"].as_str().unwrap_or(""),
                    t["kind"].as_str().unwrap_or(""),
                    t["role"].as_str().unwrap_or(""),
                    t["subject"].as_str().unwrap_or(""),
                    t["name"].as_str().unwrap_or(""),
                );
            }
            Ok(())
        }
        TokenCmd::Revoke { id, conn } => {
            conn.call(Method::DELETE, &format!("/api/v1/tokens/{id}"), None)
                .await?;
            eprintln!("token {id} is revoked");
            Ok(())
        }
    }
}

fn read_password() -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("STEADFAST_PASSWORD") {
        return Ok(p);
    }
    eprintln!("password (at least 12 characters), then Enter:");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("failed to read the password from standard input")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

pub async fn user(cmd: UserCmd) -> anyhow::Result<()> {
    match cmd {
        UserCmd::Add {
            name,
            role,
            links,
            services,
            local,
            conn,
        } => {
            let password = read_password()?;
            if local {
                let u = NewUser {
                    name,
                    password,
                    role,
                    links,
                    services,
                };
                let row = steadfast_server::create_local_user(&conn.data_dir, u, &local_actor())?;
                eprintln!("user {} ({}) created", row.name, row.role);
            } else {
                let body = json!({ "name": name, "password": password, "role": role, "links": links, "services": services });
                let v = conn.call(Method::POST, "/api/v1/users", Some(body)).await?;
                eprintln!(
                    "user {} ({}) created",
                    v["name"].as_str().unwrap_or(""),
                    v["role"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        UserCmd::List { conn } => print(&conn.call(Method::GET, "/api/v1/users", None).await?),
        UserCmd::Disable { name, conn } => {
            conn.call(Method::DELETE, &format!("/api/v1/users/{name}"), None)
                .await?;
            eprintln!("user {name} is disabled and signed out");
            Ok(())
        }
    }
}

pub async fn audit(cmd: AuditCmd) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::Verify { data_dir } => {
            if !data_dir.join("control.db").exists() {
                bail!("{} has no audit log (control.db)", data_dir.display());
            }
            let check = ControlStore::open(&data_dir)?.verify_audit()?;
            match check.fault {
                None => {
                    println!(
                        "the audit chain holds: {} entries, head at entry {}",
                        check.entries, check.head_seq
                    );
                    Ok(())
                }
                Some(f) => {
                    println!("the audit chain is broken at {f}");
                    std::process::exit(1);
                }
            }
        }
        AuditCmd::List {
            after_seq,
            actor,
            action,
            limit,
            format,
            conn,
        } => {
            let mut path = format!("/api/v1/audit?after_seq={after_seq}&limit={limit}");
            for (k, v) in [("actor", actor), ("action", action)] {
                if let Some(v) = v {
                    path += &format!("&{k}={}", urlencode(&v));
                }
            }
            let v = conn.call(Method::GET, &path, None).await?;
            let entries = v.as_array().cloned().unwrap_or_default();
            match format.as_str() {
                "json" => print(&v),
                "jsonl" => {
                    for e in &entries {
                        println!("{}", serde_json::to_string(e)?);
                    }
                    Ok(())
                }
                _ => {
                    println!(
                        "{:>6}  {:<20} {:<16} {:<26} {:<22} {:<16} APPROVER",
                        "SEQ", "AT", "ACTOR", "ACTION", "TARGET", "RESULT"
                    );
                    for e in &entries {
                        let at = e["at"]
                            .as_i64()
                            .and_then(chrono::DateTime::from_timestamp_millis)
                            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                            .unwrap_or_default();
                        println!(
                            "{:>6}  {:<20} {:<16} {:<26} {:<22} {:<16} {}",
                            e["seq"].as_u64().unwrap_or(0),
                            at,
                            e["actor"].as_str().unwrap_or(""),
                            e["action"].as_str().unwrap_or(""),
                            e["target"].as_str().unwrap_or(""),
                            e["result"].as_str().unwrap_or(""),
                            e["approver"].as_str().unwrap_or("-"),
                        );
                    }
                    Ok(())
                }
            }
        }
        AuditCmd::Export { out, data_dir } => {
            let store = ControlStore::open(&data_dir)?;
            let mut after_seq = 0;
            let mut n = 0usize;
            // Truncate first: an export is the whole log, not an append.
            std::fs::write(&out, "")
                .with_context(|| format!("failed to write {}", out.display()))?;
            loop {
                let page = store.audit(&AuditFilter {
                    after_seq,
                    target: None,
                    newest_first: false,
                    limit: steadfast_store::control::CONTROL_PAGE_MAX,
                    ..Default::default()
                })?;
                let Some(last) = page.last() else { break };
                after_seq = last.seq;
                n += page.len();
                steadfast_store::control::append_jsonl(&out, &page)?;
            }
            eprintln!("wrote {n} audit entries to {}", out.display());
            Ok(())
        }
    }
}

fn urlencode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub async fn approvals(status: Option<String>, conn: &Conn) -> anyhow::Result<()> {
    let path = match status {
        Some(s) => format!("/api/v1/approvals?status={}", urlencode(&s)),
        None => "/api/v1/approvals".into(),
    };
    let v = conn.call(Method::GET, &path, None).await?;
    println!(
        "{:>5}  {:<20} {:<10} {:<16} {:<16} REASON",
        "ID", "ACTION", "STATUS", "REQUESTED BY", "DECIDED BY"
    );
    for a in v.as_array().into_iter().flatten() {
        println!(
            "{:>5}  {:<20} {:<10} {:<16} {:<16} {}",
            a["id"].as_u64().unwrap_or(0),
            a["action"].as_str().unwrap_or(""),
            a["status"].as_str().unwrap_or(""),
            a["requested_by"].as_str().unwrap_or(""),
            a["decided_by"].as_str().unwrap_or("-"),
            a["reason"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}

pub async fn decide(
    id: u64,
    approve: bool,
    reason: Option<String>,
    conn: &Conn,
) -> anyhow::Result<()> {
    let verb = if approve { "approve" } else { "reject" };
    let v = conn
        .call(
            Method::POST,
            &format!("/api/v1/approvals/{id}/{verb}"),
            Some(json!({ "reason": reason })),
        )
        .await?;
    eprintln!(
        "approval {id} ({}) is {}",
        v["action"].as_str().unwrap_or(""),
        v["status"].as_str().unwrap_or("")
    );
    Ok(())
}

pub async fn killswitch(cmd: KillSwitchCmd) -> anyhow::Result<()> {
    let v = match cmd {
        KillSwitchCmd::Status { conn } => {
            conn.call(Method::GET, "/api/v1/killswitch", None).await?
        }
        KillSwitchCmd::Pull { reason, conn } => {
            conn.call(
                Method::POST,
                "/api/v1/killswitch",
                Some(json!({ "reason": reason })),
            )
            .await?
        }
        KillSwitchCmd::Release { reason, conn } => {
            conn.call(
                Method::DELETE,
                "/api/v1/killswitch",
                Some(json!({ "reason": reason })),
            )
            .await?
        }
    };
    if let Some(p) = v.get("pending_approval") {
        eprintln!(
            "release requested as approval {}; a second person runs `steadfast approve {}`",
            p["id"], p["id"]
        );
        return Ok(());
    }
    let engaged = v["engaged"].as_bool().unwrap_or(false);
    println!(
        "kill switch {}{}",
        if engaged { "ENGAGED" } else { "released" },
        v["by"]
            .as_str()
            .map(|b| format!(" by {b}: {}", v["reason"].as_str().unwrap_or("")))
            .unwrap_or_default()
    );
    Ok(())
}

#[derive(clap::Subcommand)]
pub enum DrillCmd {
    /// Create a drill from a spec file (TOML or JSON), start it, and by default wait for its
    /// report (printed as Markdown; exit 2 when the drill did not pass).
    Run {
        spec: PathBuf,
        /// Forged pairs per target rule (default: the faults' hit limits).
        #[arg(long)]
        pairs: Option<usize>,
        /// Return once started instead of waiting for the report.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// List drills, newest first.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a drill's report (markdown or json).
    Show {
        id: String,
        #[arg(long, default_value = "markdown")]
        format: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Stop a drill (stopping an ended drill changes nothing).
    Stop {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Hand a lossy drill's uncorrected hits to a person (all of them unless --hit is given).
    Handover {
        id: String,
        /// A hit id; repeat for several.
        #[arg(long = "hit")]
        hits: Vec<String>,
        /// Who takes them over and why.
        #[arg(long)]
        note: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// The kill switch: stop every drill and refuse new ones.
    #[command(subcommand)]
    KillSwitch(KillSwitchCmd),
    /// Routine drills on a cron schedule.
    #[command(subcommand)]
    Schedule(ScheduleCmd),
    /// Windows in which no drill starts.
    #[command(subcommand)]
    Blackout(BlackoutCmd),
}

#[derive(clap::Subcommand)]
pub enum ScheduleCmd {
    /// Run SPEC at every cron time (`sec min hour day month weekday`, UTC).
    Add {
        name: String,
        #[arg(long)]
        cron: String,
        spec: PathBuf,
        #[arg(long)]
        pairs: Option<usize>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Schedules with their last firing.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    Rm {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(clap::Subcommand)]
pub enum BlackoutCmd {
    /// A fixed window (`--from`, `--to`, RFC 3339) or a recurring one (`--cron` starts,
    /// each `--duration` long, e.g. `--cron "0 0 0 28 * *" --duration 4d`).
    Add {
        #[arg(long)]
        reason: String,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        cron: Option<String>,
        #[arg(long)]
        duration: Option<humantime::Duration>,
        #[command(flatten)]
        conn: Conn,
    },
    List {
        #[command(flatten)]
        conn: Conn,
    },
    Rm {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

async fn schedule(cmd: ScheduleCmd) -> anyhow::Result<()> {
    match cmd {
        ScheduleCmd::Add {
            name,
            cron,
            spec,
            pairs,
            conn,
        } => {
            let text = std::fs::read_to_string(&spec)
                .with_context(|| format!("failed to read {}", spec.display()))?;
            steadfast_drill::parse_spec(&text)?;
            let v = conn
                .call(
                    Method::POST,
                    "/api/v1/drill-schedules",
                    Some(json!({ "name": name, "cron": cron, "spec": text, "pairs": pairs })),
                )
                .await?;
            println!("{}", v["id"].as_str().unwrap_or(""));
            Ok(())
        }
        ScheduleCmd::List { conn } => {
            let v = conn
                .call(Method::GET, "/api/v1/drill-schedules", None)
                .await?;
            println!("{:<22} {:<20} {:<24} LAST FIRING", "ID", "CRON", "NAME");
            for s in v.as_array().into_iter().flatten() {
                let last = s["history"].as_array().and_then(|h| h.last());
                let last = match last {
                    Some(f) if f["decision"] == "start" => {
                        format!("started {}", f["drill"].as_str().unwrap_or(""))
                    }
                    Some(f) => format!("skipped: {}", f["reason"].as_str().unwrap_or("")),
                    None => "-".into(),
                };
                println!(
                    "{:<22} {:<20} {:<24} {last}",
                    s["id"].as_str().unwrap_or(""),
                    s["cron"].as_str().unwrap_or(""),
                    s["name"].as_str().unwrap_or(""),
                );
            }
            Ok(())
        }
        ScheduleCmd::Rm { id, conn } => {
            conn.call(
                Method::DELETE,
                &format!("/api/v1/drill-schedules/{id}"),
                None,
            )
            .await?;
            eprintln!("schedule {id} deleted");
            Ok(())
        }
    }
}

async fn blackout(cmd: BlackoutCmd) -> anyhow::Result<()> {
    match cmd {
        BlackoutCmd::Add {
            reason,
            from,
            to,
            cron,
            duration,
            conn,
        } => {
            let body = json!({ "reason": reason, "from": from, "to": to, "cron": cron,
                               "duration_secs": duration.map(|d| d.as_secs()) });
            let v = conn
                .call(Method::POST, "/api/v1/drill-blackouts", Some(body))
                .await?;
            println!("{}", v["id"].as_str().unwrap_or(""));
            Ok(())
        }
        BlackoutCmd::List { conn } => print(
            &conn
                .call(Method::GET, "/api/v1/drill-blackouts", None)
                .await?,
        ),
        BlackoutCmd::Rm { id, conn } => {
            conn.call(
                Method::DELETE,
                &format!("/api/v1/drill-blackouts/{id}"),
                None,
            )
            .await?;
            eprintln!("blackout {id} removed");
            Ok(())
        }
    }
}

/// Longest `drill run` waits for a report.
const DRILL_WAIT_SECS_MAX: u64 = 24 * 3600;

pub async fn drill(cmd: DrillCmd) -> anyhow::Result<()> {
    match cmd {
        DrillCmd::Run {
            spec,
            pairs,
            no_wait,
            conn,
        } => {
            let text = std::fs::read_to_string(&spec)
                .with_context(|| format!("failed to read {}", spec.display()))?;
            // Checked here first, so that a typo names its field before anything is sent.
            let parsed = steadfast_drill::parse_spec(&text)?;
            let d = conn
                .call(
                    Method::POST,
                    "/api/v1/drills",
                    Some(json!({ "spec": text, "pairs": pairs })),
                )
                .await?;
            let id = d["id"].as_str().unwrap_or("").to_string();
            let started = conn
                .call(Method::POST, &format!("/api/v1/drills/{id}/start"), None)
                .await?;
            match started["pending_approval"]["id"].as_u64() {
                Some(a) => eprintln!(
                    "drill {id} ({}) waits for a second person: `steadfast approve {a}`",
                    parsed.name
                ),
                None => eprintln!("drill {id} ({}) started", parsed.name),
            }
            if no_wait {
                println!("{id}");
                return Ok(());
            }
            let pb = indicatif::ProgressBar::new_spinner();
            pb.set_message(format!("drill {id}: injecting and waiting for discoveries"));
            let started = std::time::Instant::now();
            let d = loop {
                pb.tick();
                let d = conn
                    .call(Method::GET, &format!("/api/v1/drills/{id}"), None)
                    .await?;
                if !matches!(d["state"].as_str(), Some("pending" | "running")) {
                    break d;
                }
                if started.elapsed().as_secs() > DRILL_WAIT_SECS_MAX {
                    bail!("drill {id} is still running; `steadfast drill show {id}` later");
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            };
            pb.finish_and_clear();
            eprintln!("drill {id} ended: {}", d["state"].as_str().unwrap_or(""));
            if let Some(c) = d["correction"]["state"].as_str() {
                eprintln!("  corrections: {c}");
                if let Some(a) = d["correction"]["approval"]
                    .as_u64()
                    .filter(|_| c == "awaiting_approval")
                {
                    eprintln!("  a second person approves them with `steadfast approve {a}`");
                }
            }
            if let Some(e) = d["error"].as_str() {
                eprintln!("  {e}");
            }
            if d["report"].is_null() {
                std::process::exit(2);
            }
            show(&conn, &id, "markdown").await?;
            if d["report"]["passed"] != true {
                std::process::exit(2);
            }
            Ok(())
        }
        DrillCmd::List { conn } => {
            let v = conn.call(Method::GET, "/api/v1/drills", None).await?;
            println!(
                "{:<20} {:<10} {:<16} {:>9} {:>10}  NAME",
                "ID", "STATE", "CREATED BY", "INJECTED", "DISCOVERED"
            );
            for d in v.as_array().into_iter().flatten() {
                println!(
                    "{:<20} {:<10} {:<16} {:>9} {:>10}  {}",
                    d["id"].as_str().unwrap_or(""),
                    d["state"].as_str().unwrap_or(""),
                    d["created_by"].as_str().unwrap_or(""),
                    d["report"]["injected"]
                        .as_u64()
                        .map(|n| n.to_string())
                        .unwrap_or("-".into()),
                    d["report"]["discovered"]
                        .as_u64()
                        .map(|n| n.to_string())
                        .unwrap_or("-".into()),
                    d["name"].as_str().unwrap_or(""),
                );
            }
            Ok(())
        }
        DrillCmd::Show { id, format, conn } => show(&conn, &id, &format).await,
        DrillCmd::Stop { id, conn } => {
            let d = conn
                .call(Method::POST, &format!("/api/v1/drills/{id}/stop"), None)
                .await?;
            eprintln!("drill {id} is {}", d["state"].as_str().unwrap_or(""));
            Ok(())
        }
        DrillCmd::Handover {
            id,
            hits,
            note,
            conn,
        } => {
            let body = json!({ "hits": (!hits.is_empty()).then_some(hits), "note": note });
            let v = conn
                .call(
                    Method::POST,
                    &format!("/api/v1/drills/{id}/handover"),
                    Some(body),
                )
                .await?;
            eprintln!(
                "{} hits handed over; drill {id} is {}",
                v["handed_over"].as_array().map_or(0, |a| a.len()),
                v["state"].as_str().unwrap_or("")
            );
            Ok(())
        }
        DrillCmd::KillSwitch(cmd) => killswitch(cmd).await,
        DrillCmd::Schedule(cmd) => schedule(cmd).await,
        DrillCmd::Blackout(cmd) => blackout(cmd).await,
    }
}

async fn show(conn: &Conn, id: &str, format: &str) -> anyhow::Result<()> {
    match format {
        "json" => print(
            &conn
                .call(Method::GET, &format!("/api/v1/drills/{id}"), None)
                .await?,
        ),
        "markdown" => {
            let text = conn
                .text(&format!("/api/v1/drills/{id}/report?format=markdown"))
                .await?;
            print!("{text}");
            Ok(())
        }
        f => bail!("unknown format {f:?} (markdown or json)"),
    }
}

#[derive(clap::Subcommand)]
pub enum RunbookCmd {
    /// List the configured runbooks with their last verification and execution.
    List {
        /// table or json.
        #[arg(long, default_value = "table")]
        format: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Run a runbook's verification (its dry run) now; exits 1 when it does not pass.
    Verify {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Execute a runbook; under four-eyes this asks a second person to approve, and the
    /// change is made only then.
    Run {
        name: String,
        /// Why; recorded with the run and in the audit log.
        #[arg(long)]
        reason: String,
        /// Execute although its last verification did not pass.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// A runbook's executions (or verifications), newest first.
    Runs {
        name: String,
        /// execute or verify.
        #[arg(long, default_value = "execute")]
        kind: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        conn: Conn,
    },
}

fn when(v: &Value) -> String {
    v.as_i64()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

/// One run as a line: outcome, when, status, duration, who, message.
fn run_line(r: &Value) -> String {
    format!(
        "{:<8} {:<20} {:>6} {:>7}  {:<16} {:<16} {}",
        r["outcome"].as_str().unwrap_or(""),
        when(&r["started_at"]),
        r["status"].as_u64().map_or("-".into(), |s| s.to_string()),
        r["duration_ms"]
            .as_u64()
            .map_or("-".into(), |d| format!("{d}ms")),
        r["requested_by"].as_str().unwrap_or(""),
        r["approved_by"].as_str().unwrap_or("-"),
        r["message"].as_str().unwrap_or(""),
    )
}

pub async fn runbooks(cmd: RunbookCmd) -> anyhow::Result<()> {
    match cmd {
        RunbookCmd::List { format, conn } => {
            let v = conn.call(Method::GET, "/api/v1/runbooks", None).await?;
            if format == "json" {
                return print(&v);
            }
            println!(
                "{:<28} {:<10} {:<20} {:<28} {:<30} DESCRIPTION",
                "NAME", "VERIFIED", "AT", "SERVICES", "FAULTS"
            );
            for rb in v.as_array().into_iter().flatten() {
                let last = &rb["last_verification"];
                let join = |k: &str| {
                    rb[k]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                };
                println!(
                    "{:<28} {:<10} {:<20} {:<28} {:<30} {}",
                    rb["name"].as_str().unwrap_or(""),
                    last["outcome"].as_str().unwrap_or("never"),
                    when(&last["started_at"]),
                    join("services"),
                    join("fault_types"),
                    rb["description"].as_str().unwrap_or(""),
                );
                if last["outcome"].as_str().is_some_and(|o| o != "ok") {
                    println!("    {}", last["message"].as_str().unwrap_or(""));
                }
            }
            Ok(())
        }
        RunbookCmd::Verify { name, conn } => {
            let r = conn
                .call(
                    Method::POST,
                    &format!("/api/v1/runbooks/{}/verify", urlencode(&name)),
                    None,
                )
                .await?;
            if r["outcome"] != "ok" {
                bail!(
                    "runbook {name}'s verification did not pass: {}",
                    r["message"].as_str().unwrap_or("")
                );
            }
            println!(
                "runbook {name} verified in {} ms: {}",
                r["duration_ms"],
                r["message"].as_str().unwrap_or("")
            );
            Ok(())
        }
        RunbookCmd::Run {
            name,
            reason,
            force,
            conn,
        } => {
            let v = conn
                .call(
                    Method::POST,
                    &format!("/api/v1/runbooks/{}/execute", urlencode(&name)),
                    Some(json!({ "reason": reason, "force": force })),
                )
                .await?;
            if let Some(p) = v.get("pending_approval") {
                eprintln!(
                    "runbook {name} requested as approval {}; a second person with the runbook-executor role runs `steadfast approve {}`, and only then is it executed",
                    p["id"], p["id"]
                );
                return Ok(());
            }
            println!(
                "runbook {name} executed (run {}): {}",
                v["id"],
                v["message"].as_str().unwrap_or("")
            );
            Ok(())
        }
        RunbookCmd::Runs {
            name,
            kind,
            limit,
            conn,
        } => {
            let v = conn
                .call(
                    Method::GET,
                    &format!(
                        "/api/v1/runbooks/{}/runs?kind={}&limit={limit}",
                        urlencode(&name),
                        urlencode(&kind)
                    ),
                    None,
                )
                .await?;
            println!(
                "{:<8} {:<20} {:>6} {:>7}  {:<16} {:<16} MESSAGE",
                "OUTCOME", "AT", "STATUS", "TIME", "BY", "APPROVER"
            );
            for r in v.as_array().into_iter().flatten() {
                println!("{}", run_line(r));
            }
            Ok(())
        }
    }
}
