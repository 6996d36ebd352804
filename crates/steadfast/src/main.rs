//! The `steadfast` binary: argument parsing and wiring only.

mod client;
mod control;
mod demo;
mod input;
mod insight;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use steadfast_server::{Config, Server, DEFAULT_RULES};
use steadfast_verify::{parse_rules, Limits, RuleSet};

/// mimalloc: the services, the server and the engine allocate from many threads at once,
/// where glibc's allocator spends a fifth of the CPU.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "steadfast",
    version,
    about = "Real-time fund verification for payment systems"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run Steadfast on a simulated payment platform: server, services, traffic, live summary.
    Demo(demo::DemoArgs),
    /// Run the server: ingest API, verification engine, break store.
    Serve {
        /// Configuration file (TOML); every option has a default.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Rule file; overrides the configuration. Default: the shipped example rules.
        #[arg(long)]
        rules: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Start with a rule file that differs from the one the data was verified with.
        #[arg(long)]
        accept_new_rules: bool,
        /// OTLP/gRPC listener, unless the configuration sets `[chain] otlp_grpc_listen`.
        #[arg(long, default_value = "127.0.0.1:4317")]
        otlp_grpc_listen: std::net::SocketAddr,
        /// OTLP/HTTP listener, unless the configuration sets `[chain] otlp_http_listen`
        /// (the main listener takes OTLP/HTTP too).
        #[arg(long, default_value = "127.0.0.1:4318")]
        otlp_http_listen: std::net::SocketAddr,
        /// Serve OTLP on the main listener only.
        #[arg(long)]
        no_otlp_ports: bool,
    },
    /// Send NDJSON or CSV exports to a server, through the same validation.
    Ingest {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        conn: client::Conn,
        /// Records per request.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
    /// Run rules in batch over exported files and print the breaks (the T1 backstop).
    Verify {
        #[arg(long)]
        rules: PathBuf,
        /// NDJSON or CSV files, or a server's WAL directory (DATA_DIR/wal) to backtest a
        /// rule change on the records it was sent.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// table, json or csv.
        #[arg(long, default_value = "table")]
        format: String,
        /// Business-day time zone (IANA); overrides the rule file.
        #[arg(long)]
        timezone: Option<String>,
        /// Business-day cut-off (HH:MM local time); overrides the rule file.
        #[arg(long)]
        cutoff: Option<String>,
    },
    /// List breaks from a server.
    Breaks {
        #[command(flatten)]
        conn: client::Conn,
        #[command(flatten)]
        filter: client::BreakFilterArgs,
        /// table, json or csv.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Acknowledge, resolve or assign a break.
    BreakStatus {
        id: u64,
        /// acknowledged or resolved.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        owner: Option<String>,
        /// Why; recorded in the break's history.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Check a rule file and print its rules and version.
    Rules { file: PathBuf },
    /// Create, list and revoke API tokens.
    #[command(subcommand)]
    Token(control::TokenCmd),
    /// Add, list and disable local users (dashboard sign-in).
    #[command(subcommand)]
    User(control::UserCmd),
    /// Verify, list and export the audit log.
    #[command(subcommand)]
    Audit(control::AuditCmd),
    /// List four-eyes approval requests.
    Approvals {
        /// pending, approved, rejected, expired or failed.
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Approve another person's request; the action then runs.
    Approve {
        id: u64,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Reject a request; the action does not run.
    Reject {
        id: u64,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Alerts raised by the learned baselines (since the server started), newest first.
    Alerts {
        /// firing or resolved.
        #[arg(long)]
        state: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Incidents (merged alerts with their root-cause ranking); with an id, one in full.
    Incidents {
        id: Option<u64>,
        /// firing, resolved or interrupted (by a restart).
        #[arg(long)]
        state: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// The drills' kill switch.
    #[command(subcommand)]
    Killswitch(control::KillSwitchCmd),
    /// Pre-verified runbooks: list, verify (dry run), run (under four-eyes), history.
    #[command(subcommand)]
    Runbooks(control::RunbookCmd),
    /// Run, list, show and stop drills.
    #[command(subcommand)]
    Drill(control::DrillCmd),
    /// Run the fault-injection proxy in front of a service of a fund link (lossy drills and
    /// availability faults; the server assigns the drills).
    Proxy(ProxyArgs),
    /// Run SQL over the stored spans, logs and metrics (tables `spans`, `logs`, `metrics`).
    Query {
        sql: String,
        /// table or json.
        #[arg(long, default_value = "table")]
        format: String,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// A user's journey: their sessions and traces, front end to database, with where
    /// the time went and the fund records the traces wrote.
    Journey {
        user: String,
        /// Only traces from this time on (ms since the epoch).
        #[arg(long)]
        since_ms: Option<i64>,
        /// Newest traces shown (at most 200).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// table or json.
        #[arg(long, default_value = "table")]
        format: String,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Show who the token speaks for and its role.
    Whoami {
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Print the default configuration, documented.
    DefaultConfig,
}

#[derive(clap::Args)]
struct ProxyArgs {
    /// Proxy configuration file (TOML); the flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// How the server knows this proxy.
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// The service the proxy stands in front of, e.g. http://127.0.0.1:7404.
    #[arg(long)]
    upstream: Option<String>,
    /// The Steadfast server that assigns drills.
    #[arg(long)]
    controller: Option<String>,
    /// A file holding a token of the `proxy` role.
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A route: "METHOD PATH kind=KIND key=FIELD [side=request|response]"; repeat for
    /// several.
    #[arg(long = "route")]
    routes: Vec<String>,
}

/// Parses `POST /v1/bills kind=bill key=biz_id side=request`.
fn parse_route(text: &str) -> anyhow::Result<steadfast_proxy::Route> {
    let mut words = text.split_whitespace();
    let (Some(method), Some(path)) = (words.next(), words.next()) else {
        anyhow::bail!("route {text:?}: give METHOD PATH kind=KIND key=FIELD");
    };
    let mut route = steadfast_proxy::Route {
        method: method.to_uppercase(),
        path: path.into(),
        kind: String::new(),
        key: String::new(),
        side: Default::default(),
    };
    for w in words {
        match w.split_once('=') {
            Some(("kind", v)) => route.kind = v.into(),
            Some(("key", v)) => route.key = v.into(),
            Some(("side", "request")) => route.side = steadfast_drill::proxy::BodySide::Request,
            Some(("side", "response")) => route.side = steadfast_drill::proxy::BodySide::Response,
            _ => anyhow::bail!("route {text:?}: unknown part {w:?} (kind=, key=, side=)"),
        }
    }
    if route.kind.is_empty() || route.key.is_empty() {
        anyhow::bail!("route {text:?}: give kind= and key=");
    }
    Ok(route)
}

async fn proxy(a: ProxyArgs) -> anyhow::Result<()> {
    let mut cfg = match &a.config {
        Some(p) => steadfast_proxy::ProxyConfig::parse(
            &std::fs::read_to_string(p)
                .with_context(|| format!("failed to read {}", p.display()))?,
        )?,
        None => steadfast_proxy::ProxyConfig::default(),
    };
    if let Some(v) = a.name {
        cfg.name = v;
    }
    if let Some(v) = a.listen {
        cfg.listen = v;
    }
    if let Some(v) = a.upstream {
        cfg.upstream = v;
    }
    if let Some(v) = a.data_dir {
        cfg.data_dir = v;
    }
    if a.controller.is_some() || a.token_file.is_some() {
        let c = cfg
            .controller
            .get_or_insert(steadfast_proxy::ControllerConfig {
                url: String::new(),
                token_file: None,
                token: None,
                ca_cert: None,
            });
        if let Some(v) = a.controller {
            c.url = v;
        }
        if let Some(v) = a.token_file {
            c.token_file = Some(v);
        }
    }
    for r in &a.routes {
        cfg.routes.push(parse_route(r)?);
    }
    if cfg.controller.is_none() {
        eprintln!("no --controller: the proxy forwards, but no drill can be assigned to it");
    }
    let p = steadfast_proxy::Proxy::start(cfg).await?;
    eprintln!("proxy listening on {}", p.addr);
    tokio::signal::ctrl_c().await?;
    p.stop().await;
    Ok(())
}

/// JSON rows as an aligned text table, columns in first-seen order.
/// A journey as a table: one row per trace with its time breakdown in milliseconds and
/// the fund records it wrote.
fn journey_table(j: &serde_json::Value) -> String {
    let ms = |v: &serde_json::Value| format!("{:.1}", v.as_f64().unwrap_or(0.0) / 1e6);
    let mut out = format!(
        "user {}: {} session(s), {} trace(s)\n",
        j["user"].as_str().unwrap_or(""),
        j["sessions"].as_array().map_or(0, |a| a.len()),
        j["traces"].as_array().map_or(0, |a| a.len())
    );
    let rows: Vec<serde_json::Value> = j["traces"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let b = &t["breakdown"];
            let funds: Vec<String> = t["fund_records"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| {
                    let minor = f["amount_minor"].as_i64().unwrap_or(0);
                    let code = f["currency"].as_str().unwrap_or("");
                    let amount = match steadfast_model::Currency::from_code(code) {
                        Ok(c) => format!("{} {code}", steadfast_model::format_minor(minor as i128, c)),
                        Err(_) => format!("{minor} minor units of {code}"),
                    };
                    format!(
                        "{} {} {amount}",
                        f["kind"].as_str().unwrap_or(""),
                        f["record_id"].as_str().unwrap_or(""),
                    )
                })
                .collect();
            serde_json::json!({
                "trace": t["trace_id"], "root": format!("{} {}", t["root_service"].as_str().unwrap_or(""), t["root_name"].as_str().unwrap_or("")),
                "ms": ms(&t["duration_ns"]), "client": ms(&b["client_ns"]), "network": ms(&b["network_ns"]),
                "server": ms(&b["server_ns"]), "db": ms(&b["database_ns"]), "spans": t["spans"], "errors": t["errors"],
                "funds": funds.join("; "),
            })
        })
        .collect();
    out += &rows_table(&rows);
    out
}

fn rows_table(rows: &[serde_json::Value]) -> String {
    let mut cols: Vec<String> = Vec::new();
    for r in rows {
        for k in r
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            if !cols.contains(&k) {
                cols.push(k);
            }
        }
    }
    let cell = |r: &serde_json::Value, c: &str| match &r[c] {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let widths: Vec<usize> = cols
        .iter()
        .map(|c| {
            rows.iter()
                .map(|r| cell(r, c).len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
                .min(60)
        })
        .collect();
    let mut out = String::new();
    let line = |vals: Vec<String>| -> String {
        vals.iter()
            .zip(&widths)
            .map(|(v, w)| format!("{:<w$}", v.chars().take(*w).collect::<String>(), w = *w))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
            + "\n"
    };
    out += &line(cols.clone());
    for r in rows {
        out += &line(cols.iter().map(|c| cell(r, c)).collect());
    }
    out += &format!("({} rows)\n", rows.len());
    out
}

fn main() -> std::process::ExitCode {
    match run_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole cause chain on one line, without a backtrace.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(cli.command))
}

fn load_rules(path: Option<&PathBuf>) -> anyhow::Result<Arc<RuleSet>> {
    let (text, name) = match path {
        Some(p) => (
            std::fs::read_to_string(p)
                .with_context(|| format!("failed to read {}", p.display()))?,
            p.display().to_string(),
        ),
        None => (
            DEFAULT_RULES.to_string(),
            "the shipped example rules".to_string(),
        ),
    };
    let rules = parse_rules(&text).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    Ok(Arc::new(rules))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Proxy(a) => proxy(a).await,
        Command::Serve {
            config,
            rules,
            data_dir,
            listen,
            accept_new_rules,
            otlp_grpc_listen,
            otlp_http_listen,
            no_otlp_ports,
        } => {
            let mut cfg = match &config {
                Some(p) => Config::load(p)?,
                None => Config::default(),
            };
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if rules.is_some() {
                cfg.rules = rules;
            }
            if no_otlp_ports {
                cfg.chain.otlp_grpc_listen = None;
                cfg.chain.otlp_http_listen = None;
            } else {
                cfg.chain.otlp_grpc_listen.get_or_insert(otlp_grpc_listen);
                cfg.chain.otlp_http_listen.get_or_insert(otlp_http_listen);
            }
            let rule_set = load_rules(cfg.rules.as_ref())?;
            let server = Server::start(cfg.clone(), rule_set.clone(), accept_new_rules).await?;
            let scheme = if server.tls { "https" } else { "http" };
            eprintln!(
                "steadfast is verifying {} rules (version {})",
                rule_set.rules.len(),
                rule_set.version
            );
            eprintln!(
                "  API:     {scheme}://{}/api/v1  (OpenAPI: {scheme}://{}/api/v1/openapi.json)",
                server.addr, server.addr
            );
            eprintln!("  metrics: {scheme}://{}/metrics", server.addr);
            if let Some(a) = server.otlp_grpc_addr {
                eprintln!("  OTLP:    gRPC {a}");
            }
            if let Some(a) = server.otlp_http_addr {
                eprintln!("  OTLP:    HTTP {scheme}://{a}/v1/traces, /v1/metrics, /v1/logs");
            }
            let has_admin = steadfast_store::ControlStore::open(&cfg.data_dir)
                .and_then(|c| c.has_live("admin", chrono::Utc::now().timestamp_millis()))
                .unwrap_or(false);
            if !has_admin {
                eprintln!("  no admin can sign in yet; only /healthz and /metrics are open. Create the first admin token with:");
                eprintln!(
                    "    steadfast token create --local --data-dir {} --role admin --subject YOUR_NAME",
                    cfg.data_dir.display()
                );
            }
            shutdown_signal().await;
            eprintln!("stopping: draining the pipeline and writing a checkpoint");
            server.shutdown().await;
            Ok(())
        }
        Command::Demo(args) => demo::run(args).await,
        Command::Ingest { files, conn, batch } => {
            client::ingest(&conn, &files, batch.clamp(1, 100_000)).await
        }
        Command::Verify {
            rules,
            inputs,
            format,
            timezone,
            cutoff,
        } => verify(&rules, &inputs, &format, timezone, cutoff),
        Command::Breaks {
            conn,
            filter,
            format,
        } => client::breaks(&conn, &filter, &format).await,
        Command::BreakStatus {
            id,
            status,
            owner,
            reason,
            conn,
        } => client::break_status(&conn, id, status, owner, reason).await,
        Command::Rules { file } => {
            let rules = load_rules(Some(&file))?;
            println!("{}: version {}", file.display(), rules.version);
            for r in &rules.rules {
                let kind = serde_json::to_value(&r.kind)?
                    .get("type")
                    .and_then(|t| t.as_str())
                    .unwrap_or("")
                    .to_string();
                println!(
                    "  {:<24} {:<13} link={}",
                    r.name,
                    kind,
                    r.link.as_deref().unwrap_or("-")
                );
            }
            Ok(())
        }
        Command::Token(cmd) => control::token(cmd).await,
        Command::User(cmd) => control::user(cmd).await,
        Command::Audit(cmd) => control::audit(cmd).await,
        Command::Approvals { status, conn } => control::approvals(status, &conn).await,
        Command::Approve { id, reason, conn } => control::decide(id, true, reason, &conn).await,
        Command::Reject { id, reason, conn } => control::decide(id, false, reason, &conn).await,
        Command::Alerts { state, json, conn } => insight::alerts(&conn, &state, json).await,
        Command::Incidents {
            id,
            state,
            json,
            conn,
        } => insight::incidents(&conn, id, &state, json).await,
        Command::Killswitch(cmd) => control::killswitch(cmd).await,
        Command::Runbooks(cmd) => control::runbooks(cmd).await,
        Command::Drill(cmd) => control::drill(cmd).await,
        Command::Query { sql, format, conn } => {
            let v = conn
                .call(
                    reqwest::Method::POST,
                    "/api/v1/query",
                    Some(serde_json::json!({ "sql": sql })),
                )
                .await?;
            let rows = v["rows"].as_array().cloned().unwrap_or_default();
            match format.as_str() {
                "json" => println!("{}", serde_json::to_string_pretty(&rows)?),
                "table" => print!("{}", rows_table(&rows)),
                other => anyhow::bail!("unknown --format {other:?} (table or json)"),
            }
            if v["truncated"] == true {
                eprintln!(
                    "(more rows than shown: the answer is cut at 10 000; add a LIMIT or a WHERE)"
                );
            }
            Ok(())
        }
        Command::Journey {
            user,
            since_ms,
            limit,
            format,
            conn,
        } => {
            let mut url = reqwest::Url::parse("http://localhost/api/v1/journeys")?;
            url.query_pairs_mut()
                .append_pair("user", &user)
                .append_pair("limit", &limit.to_string());
            if let Some(t) = since_ms {
                url.query_pairs_mut()
                    .append_pair("since_ms", &t.to_string());
            }
            let path = format!("{}?{}", url.path(), url.query().unwrap_or(""));
            let v = conn.call(reqwest::Method::GET, &path, None).await?;
            match format.as_str() {
                "json" => println!("{}", serde_json::to_string_pretty(&v)?),
                "table" => print!("{}", journey_table(&v)),
                other => anyhow::bail!("unknown --format {other:?} (table or json)"),
            }
            Ok(())
        }
        Command::Whoami { conn } => {
            let v = conn
                .call(reqwest::Method::GET, "/api/v1/whoami", None)
                .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        Command::DefaultConfig => {
            print!("{}", Config::default_toml());
            Ok(())
        }
    }
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{elapsed}} eta {{eta}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn verify(
    rules: &PathBuf,
    inputs: &[PathBuf],
    format: &str,
    timezone: Option<String>,
    cutoff: Option<String>,
) -> anyhow::Result<()> {
    let mut set = (*load_rules(Some(rules))?).clone();
    if timezone.is_some() || cutoff.is_some() {
        // Re-validate through the rule parser so a bad zone or cut-off gets the same error.
        let tz = timezone.unwrap_or(set.business_day.timezone.clone());
        let co = cutoff.unwrap_or(format!(
            "{:02}:{:02}",
            set.business_day.cutoff_minutes / 60,
            set.business_day.cutoff_minutes % 60
        ));
        let probe = parse_rules(&format!(
            "[business_day]\ncutoff = {co:?}\ntimezone = {tz:?}\n"
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        set.business_day = probe.business_day;
    }
    // Records are verified as they are read: NDJSON files are parsed a block at a time on
    // a thread of their own while the engine works on the previous block, so neither the
    // whole file nor all its records are held. Any invalid record still refuses the run
    // before a break is printed.
    let started = std::time::Instant::now();
    let mut verifier =
        steadfast_verify::BatchVerifier::new(Arc::new(set), Limits::unbounded_batch());
    for path in inputs {
        if path.is_dir() {
            // A server's WAL directory: backtest on the records it was sent.
            let before = verifier.records();
            let mut batches = 0usize;
            steadfast_store::Wal::read_all(path, |entry| {
                if let steadfast_store::WalItem::Batch(rs) = entry.item {
                    batches += 1;
                    verifier.feed(rs);
                }
            })
            .with_context(|| format!("failed to read the WAL in {}", path.display()))?;
            eprintln!(
                "{}: {} records from {batches} WAL batches",
                path.display(),
                verifier.records() - before
            );
            continue;
        }
        let len = std::fs::metadata(path)
            .with_context(|| format!("failed to read {}", path.display()))?
            .len();
        let pb = bar(len, &path.display().to_string());
        let errors = if input::is_ndjson(path)? {
            let file = std::fs::File::open(path)
                .with_context(|| format!("failed to open {}", path.display()))?;
            let mut errors = Vec::new();
            for block in steadfast_model::wire::parse_ndjson_stream(file) {
                let block = block.with_context(|| format!("failed to read {}", path.display()))?;
                pb.inc(block.bytes);
                if errors.is_empty() && block.errors.is_empty() {
                    verifier.feed(block.records);
                }
                errors.extend(block.errors);
            }
            errors
        } else {
            let (r, errors) = input::read_file(path, |n| pb.inc(n))?;
            verifier.feed(r);
            errors
        };
        pb.finish_and_clear();
        input::refuse_errors(path, &errors)?;
    }
    let total = verifier.records();
    let events = verifier.finish();
    let breaks: Vec<_> = steadfast_verify::breaks_with_resolution(&events)
        .into_iter()
        .filter(|(_, resolved)| !resolved)
        .map(|(b, _)| b)
        .collect();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "verified {total} records in {secs:.2} s ({:.0} records/s): {} open breaks",
        total as f64 / secs.max(1e-9),
        breaks.len()
    );
    match format {
        "json" => {
            for b in &breaks {
                println!("{}", serde_json::to_string(b)?);
            }
        }
        "csv" => {
            let mut w = csv::Writer::from_writer(std::io::stdout());
            w.write_record([
                "id", "rule", "kind", "key", "side", "field", "expected", "actual", "evidence",
                "message",
            ])?;
            for b in &breaks {
                let ev: Vec<&str> = b.evidence.iter().map(|e| e.record_id.as_str()).collect();
                w.write_record([
                    b.id.to_string(),
                    b.rule.clone(),
                    b.kind.as_str().into(),
                    b.key.clone(),
                    b.side.clone().unwrap_or_default(),
                    b.field.clone().unwrap_or_default(),
                    b.expected.clone().unwrap_or_default(),
                    b.actual.clone().unwrap_or_default(),
                    ev.join(" "),
                    b.message.clone(),
                ])?;
            }
            w.flush()?;
        }
        _ => {
            println!(
                "{:>6}  {:<20} {:<22} {:<20} MESSAGE",
                "ID", "RULE", "KIND", "KEY"
            );
            for b in &breaks {
                println!(
                    "{:>6}  {:<20} {:<22} {:<20} {}",
                    b.id,
                    b.rule,
                    b.kind.as_str(),
                    b.key,
                    b.message
                );
            }
        }
    }
    if !breaks.is_empty() {
        std::process::exit(2);
    }
    Ok(())
}
