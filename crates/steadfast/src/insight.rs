//! `steadfast alerts` and `steadfast incidents`: the baselines' alerts and the merged
//! incidents with their root-cause ranking, as tables (or JSON).

use reqwest::Method;
use serde_json::Value;

use crate::client::Conn;

fn query(path: &str, state: &Option<String>) -> anyhow::Result<String> {
    Ok(match state {
        Some(s) if s.chars().all(|c| c.is_ascii_lowercase()) => format!("{path}?state={s}"),
        Some(s) => anyhow::bail!("--state {s:?}: firing, resolved or interrupted"),
        None => path.to_string(),
    })
}

fn num(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.3}"))
}

pub async fn alerts(conn: &Conn, state: &Option<String>, json: bool) -> anyhow::Result<()> {
    let v = conn
        .call(Method::GET, &query("/api/v1/alerts", state)?, None)
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:>6}  {:<9} {:<9} {:<16} {:<20} {:<16} {:>10} {:>10} {:>5}  INCIDENT",
        "ID", "STATE", "SEVERITY", "RULE", "SERVICE", "METRIC", "VALUE", "EXPECTED", "SCORE"
    );
    for a in v.as_array().into_iter().flatten() {
        println!(
            "{:>6}  {:<9} {:<9} {:<16} {:<20} {:<16} {:>10} {:>10} {:>5.2}  {}",
            a["id"],
            a["state"].as_str().unwrap_or(""),
            a["severity"].as_str().unwrap_or(""),
            a["rule"].as_str().unwrap_or(""),
            a["service"].as_str().unwrap_or(""),
            a["metric"].as_str().unwrap_or(""),
            num(&a["value"]),
            num(&a["expected"]),
            a["score_max"].as_f64().unwrap_or(0.0),
            a["incident"],
        );
    }
    Ok(())
}

pub async fn incidents(
    conn: &Conn,
    id: Option<u64>,
    state: &Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    if let Some(id) = id {
        let v = conn
            .call(Method::GET, &format!("/api/v1/incidents/{id}"), None)
            .await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            print_incident(&v);
        }
        return Ok(());
    }
    let v = conn
        .call(Method::GET, &query("/api/v1/incidents", state)?, None)
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:>6}  {:<12} {:<9} {:>6}  {:<24} {:<12} SERVICES",
        "ID", "STATE", "SEVERITY", "ALERTS", "LIKELY ROOT CAUSE", "FAULT"
    );
    for i in v.as_array().into_iter().flatten() {
        let services: Vec<&str> = i["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str())
            .collect();
        println!(
            "{:>6}  {:<12} {:<9} {:>6}  {:<24} {:<12} {}",
            i["id"],
            i["state"].as_str().unwrap_or(""),
            i["severity"].as_str().unwrap_or(""),
            i["alerts"].as_array().map_or(0, |a| a.len()),
            i["analysis"]["ranking"][0]["service"]
                .as_str()
                .unwrap_or("-"),
            i["analysis"]["fault_type"].as_str().unwrap_or("-"),
            services.join(", "),
        );
    }
    Ok(())
}

fn print_incident(i: &Value) {
    println!(
        "incident {} ({}, {}), opened at {} ms",
        i["id"],
        i["state"].as_str().unwrap_or(""),
        i["severity"].as_str().unwrap_or(""),
        i["opened_ms"]
    );
    println!("\nalerts:");
    for a in i["alerts"].as_array().into_iter().flatten() {
        println!(
            "  {:>6}  {:<16} {:<20} {:<16} value {} expected {}",
            a["id"],
            a["rule"].as_str().unwrap_or(""),
            a["service"].as_str().unwrap_or(""),
            a["metric"].as_str().unwrap_or(""),
            num(&a["value"]),
            num(&a["expected"])
        );
    }
    println!("\nlikely root causes:");
    for (n, c) in i["analysis"]["ranking"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        println!("  {}. {}", n + 1, c["explanation"].as_str().unwrap_or(""));
    }
    if let Some(f) = i["analysis"]["fault_type"].as_str() {
        println!("\nfault type: {f}");
    }
    for s in i["analysis"]["steps"].as_array().into_iter().flatten() {
        println!("  - {}", s.as_str().unwrap_or(""));
    }
    let runbooks = i["runbooks"].as_array().cloned().unwrap_or_default();
    if !runbooks.is_empty() {
        println!("\nrunbooks (`steadfast runbooks run NAME --reason ...`):");
        for r in runbooks {
            println!(
                "  {:<24} last verification: {}",
                r["name"].as_str().unwrap_or(""),
                r["last_verification"]["ok"]
                    .as_bool()
                    .map_or("never", |ok| if ok { "passed" } else { "FAILED" })
            );
        }
    }
}
