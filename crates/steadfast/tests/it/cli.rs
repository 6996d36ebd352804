use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_steadfast");
const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/rules.toml");

fn line(id: &str, source: &str, kind: &str, key: (&str, &str), amount: &str, t: i64) -> String {
    format!(
        r#"{{"record_id":"{id}","source":"{source}","kind":"{kind}","keys":{{"{}":"{}"}},"amount":"{amount}","currency":"EUR","status":"SUCCESS","event_time":{t}}}"#,
        key.0, key.1
    )
}

#[test]
fn verify_reports_the_breaks_of_an_export_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let t = 1_700_000_000_000i64;
    let mut lines = Vec::new();
    for i in 0..500 {
        let amount = if i == 123 { "9.99" } else { "10.00" };
        lines.push(line(
            &format!("p{i}"),
            "payment-core",
            "payment",
            ("order_no", &format!("O{i}")),
            "10.00",
            t + i * 10,
        ));
        if i != 321 {
            lines.push(line(
                &format!("b{i}"),
                "billing",
                "bill",
                ("biz_id", &format!("O{i}")),
                amount,
                t + i * 10 + 5,
            ));
        }
    }
    let path = dir.path().join("yesterday.ndjson");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let out = Command::new(BIN)
        .args(["verify", "--rules", RULES, "--format", "csv"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{csv}");
    assert!(
        rows.iter().any(|r| r.contains("amount_mismatch,O123")),
        "{csv}"
    );
    assert!(
        rows.iter()
            .any(|r| r.contains("missing_counterpart,O321,right")),
        "{csv}"
    );

    // The same export without the faults verifies clean.
    let clean: Vec<String> = lines
        .iter()
        .map(|l| l.replace("\"9.99\"", "\"10.00\""))
        .collect();
    let mut clean = clean.join("\n");
    clean.push('\n');
    clean.push_str(&line(
        "b321",
        "billing",
        "bill",
        ("biz_id", "O321"),
        "10.00",
        t + 3215,
    ));
    std::fs::write(&path, clean).unwrap();
    let out = Command::new(BIN)
        .args(["verify", "--rules", RULES])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_bad_input_file_is_refused_with_the_record_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.ndjson");
    std::fs::write(
        &path,
        line(
            "p1",
            "payment-core",
            "payment",
            ("order_no", "O1"),
            "1.234",
            0,
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["verify", "--rules", RULES])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("record 1 (p1)") && err.contains("more decimals than EUR allows"),
        "{err}"
    );
}

#[test]
fn a_rule_file_with_a_typo_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(RULES).unwrap().replacen(
        "compare = [\"amount\"",
        "compare = [\"amonut\"",
        1,
    );
    let line_no = text.lines().position(|l| l.contains("amonut")).unwrap() + 1;
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN).arg("rules").arg(&path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("line {line_no}")) && err.contains("unknown field `amonut`"),
        "{err}"
    );
}

#[test]
fn ingest_then_list_and_work_breaks_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = format!("http://127.0.0.1:{port}");
    // The first admin token, made on the data directory as the README says.
    let out = Command::new(BIN)
        .args([
            "token",
            "create",
            "--local",
            "--role",
            "admin",
            "--subject",
            "ops-lead",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("sft_"), "{token}");
    let child = Command::new(BIN)
        .args([
            "serve",
            "--no-otlp-ports",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // A failing assertion must not leave the server running.
    struct KillOnDrop(Option<std::process::Child>);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if let Some(c) = self.0.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut guard = KillOnDrop(Some(child));
    let cli = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .args(["--server", &server, "--token", &token])
            .output()
            .unwrap()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let csv = format!(
        "record_id,source,kind,key.order_no,key.biz_id,amount,currency,status,event_time\n\
         p1,payment-core,payment,CSV-1,,25.00,EUR,SUCCESS,{now}\n\
         b1,billing,bill,,CSV-1,25.50,EUR,,{now}\n"
    );
    let file = dir.path().join("export.csv");
    std::fs::write(&file, csv).unwrap();

    let mut ingested = None;
    for _ in 0..100 {
        let out = cli(&["ingest", file.to_str().unwrap()]);
        if out.status.success() {
            ingested = Some(out);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = ingested.expect("the server never accepted the file");
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 records acknowledged"));
    // The accepted records are in the data chain too, for SQL and journeys.
    let out = cli(&[
        "query",
        "SELECT record_id, amount_minor, scale FROM fund_records ORDER BY record_id",
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        rows,
        serde_json::json!([
            {"record_id": "b1", "amount_minor": 2550, "scale": 2},
            {"record_id": "p1", "amount_minor": 2500, "scale": 2}
        ])
    );
    let out = cli(&["journey", "nobody"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no span of user"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut listed = String::new();
    for _ in 0..100 {
        let out = cli(&["breaks", "--format", "csv"]);
        listed = String::from_utf8(out.stdout).unwrap();
        if listed.contains("amount_mismatch") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let row = listed
        .lines()
        .find(|l| l.contains("amount_mismatch"))
        .unwrap_or_else(|| panic!("no break listed: {listed}"));
    assert!(
        row.contains("CSV-1") && row.contains("25.00 EUR") && row.contains("25.50 EUR"),
        "{row}"
    );
    let id = row.split(',').next().unwrap().to_string();

    let out = cli(&[
        "break-status",
        &id,
        "--status",
        "acknowledged",
        "--owner",
        "ops",
        "--reason",
        "checking the bill",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("acknowledged, owned by ops"));
    let out = cli(&["break-status", &id, "--status", "open", "--reason", "x"]);
    assert!(!out.status.success(), "a break cannot go back to open");

    // A lossless drill from a spec file, run to its report.
    let spec = dir.path().join("drill.toml");
    std::fs::write(
        &spec,
        "name = \"bills a cent high\"\nrules = [\"payment-bill\"]\n[[faults]]\nkind = \"bill\"\nfield = \"amount\"\nmutation = { offset_minor = 1 }\nlimits = { hits_max = 3 }\n",
    )
    .unwrap();
    let out = cli(&["drill", "run", spec.to_str().unwrap()]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("**PASSED**") && report.contains("| faults injected | 3 |"),
        "{report}"
    );
    let out = cli(&["drill", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("completed"));
    // A nightly routine drill, kept out of month-end close.
    let out = cli(&[
        "drill",
        "schedule",
        "add",
        "nightly",
        "--cron",
        "0 0 2 * * *",
        spec.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&[
        "drill",
        "blackout",
        "add",
        "--reason",
        "month-end close",
        "--cron",
        "0 0 0 28 * *",
        "--duration",
        "4d",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["drill", "schedule", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("nightly"));
    let out = cli(&["drill", "blackout", "list"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"duration_secs\": 345600"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::fs::write(&spec, "name = \"typo\"\nrules = [\"payment-bill\"]\n[[faults]]\nkind = \"bill\"\nmutation = { offset_minor = 1 }\n").unwrap();
    let out = cli(&["drill", "run", spec.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("faults[0].field"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A viewer token made through the API can read but not work breaks.
    let out = cli(&[
        "token",
        "create",
        "--role",
        "viewer",
        "--subject",
        "auditor",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let viewer = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let as_viewer = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .args(["--server", &server, "--token", &viewer])
            .output()
            .unwrap()
    };
    assert!(as_viewer(&["breaks"]).status.success());
    let out = as_viewer(&["break-status", &id, "--status", "resolved", "--reason", "x"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The audit log has it all, on the people's names.
    let out = cli(&["audit", "list", "--format", "jsonl"]);
    let audit: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by = |actor: &str, action: &str| {
        audit
            .iter()
            .filter(|e| e["actor"] == actor && e["action"] == action)
            .map(|e| e["result"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(by("ops-lead", "break.status"), ["200"], "{audit:?}");
    assert_eq!(by("ops-lead", "token.create"), ["201"], "{audit:?}");
    assert_eq!(
        by("auditor", "POST /api/v1/breaks/{id}/status"),
        ["403 forbidden"],
        "the refused attempt is recorded: {audit:?}"
    );
    let out = Command::new(BIN)
        .args(["audit", "verify", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Backtest: the server's own WAL run through the rules in batch finds the same break.
    let out = Command::new(BIN)
        .args(["verify", "--rules", RULES, "--format", "csv"])
        .arg(dir.path().join("wal"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("amount_mismatch,CSV-1"));

    let mut child = guard.0.take().unwrap();
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success(), "a clean shutdown exits 0");
}

/// `steadfast demo` runs the platform, and Ctrl-C stops everything cleanly: every
/// acknowledged record verified, nothing left listening, no break on a faultless run.
#[test]
fn demo_runs_and_stops_cleanly_on_ctrl_c() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let mut child = std::process::Command::new(BIN)
        .args([
            "demo",
            "--rate",
            "200",
            "--users",
            "500",
            "--duration",
            "300s",
            "--listen",
            "127.0.0.1:0",
            "--platform-port",
            "0",
        ])
        .arg("--data-dir")
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stderr = child.stderr.take().unwrap();
    let mut child = KillOnDrop(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    let mut gateway = None;
    while gateway.is_none() {
        let l = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("no gateway line ({e}) in {lines:#?}"));
        if let Some(rest) = l.trim_start().strip_prefix("gateway") {
            gateway = rest
                .split_whitespace()
                .next()
                .map(|u| u.trim_start_matches("http://").to_string());
        }
        lines.push(l);
    }
    let gateway = gateway.unwrap();
    std::thread::sleep(std::time::Duration::from_secs(4));
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGINT) };
    let status = child.0.wait().unwrap();
    lines.extend(rx.iter());
    let text = lines.join("\n");
    assert!(status.success(), "{text}");
    let done = lines
        .iter()
        .find(|l| l.starts_with("done:"))
        .unwrap_or_else(|| panic!("{text}"));
    let number_before = |word: &str| -> u64 {
        let i = done.find(word).unwrap();
        done[..i]
            .split_whitespace()
            .last()
            .unwrap()
            .parse()
            .unwrap()
    };
    let acknowledged = number_before(" records acknowledged");
    let verified = number_before(" verified");
    assert!(acknowledged > 500, "{done}");
    assert_eq!(verified, acknowledged, "{done}");
    assert!(text.contains("breaks by status: {}"), "{text}");
    assert!(
        std::net::TcpStream::connect(&gateway).is_err(),
        "the gateway still listens"
    );
    assert!(data.join("steadfast").join("admin.token").exists());

    // A directory the demo did not make is never wiped.
    let other = dir.path().join("precious");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("ledger.csv"), "keep me").unwrap();
    let out = std::process::Command::new(BIN)
        .args([
            "demo",
            "--duration",
            "1s",
            "--listen",
            "127.0.0.1:0",
            "--platform-port",
            "0",
            "--data-dir",
        ])
        .arg(&other)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("was not made by `steadfast demo`"));
    assert_eq!(
        std::fs::read_to_string(other.join("ledger.csv")).unwrap(),
        "keep me"
    );
}

/// `steadfast audit verify` names the first entry that was altered, deleted or moved.
#[test]
fn audit_verify_names_the_first_tampered_entry() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..6 {
        let out = Command::new(BIN)
            .args([
                "token",
                "create",
                "--local",
                "--role",
                "viewer",
                "--subject",
            ])
            .arg(format!("user{i}"))
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let verify = |d: &std::path::Path| {
        let out = Command::new(BIN)
            .args(["audit", "verify", "--data-dir"])
            .arg(d)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap())
    };
    let (code, text) = verify(dir.path());
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("6 entries"), "{text}");
    let cases = [
        ("UPDATE audit SET actor = 'someone-else' WHERE seq = 3", "entry 3:"),
        ("DELETE FROM audit WHERE seq = 4", "entry 5:"),
        (
            "UPDATE audit SET seq = 100 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 5; UPDATE audit SET seq = 5 WHERE seq = 100;",
            "entry 2:",
        ),
        ("DELETE FROM audit WHERE seq = 6", "entry 6:"),
    ];
    for (sql, named) in cases {
        let copy = tempfile::tempdir().unwrap();
        for f in ["control.db", "control.db-wal", "audit.head"] {
            if dir.path().join(f).exists() {
                std::fs::copy(dir.path().join(f), copy.path().join(f)).unwrap();
            }
        }
        let db = rusqlite::Connection::open(copy.path().join("control.db")).unwrap();
        db.execute_batch(sql).unwrap();
        drop(db);
        let (code, text) = verify(copy.path());
        assert_eq!(code, Some(1), "{sql}: {text}");
        assert!(text.contains(named), "{sql}: expected {named} in {text}");
    }
}
