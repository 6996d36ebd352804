//! Network data over the real edges: Nginx access logs posted and tailed across a log
//! rotation and a restart (nothing lost, nothing twice), and NetFlow v9 / IPFIX datagrams
//! recorded from a real exporter (softflowd) sent over UDP, decoded and linked to the
//! connection they describe, through the journey of the user whose request it carried.

use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

fn line(host: &str, n: usize) -> String {
    format!(
        r#"{{"msec":"1700000000.{n:03}","host":"{host}","remote_addr":"127.0.0.1","remote_port":"5{n:04}","server_addr":"127.0.0.1","server_port":"8080","request_method":"GET","uri":"/r/{n}","status":"200","request_time":"0.002","upstream_response_time":"0.001","traceparent":"-"}}"#
    )
}

async fn count(s: &TestServer, sql: &str) -> i64 {
    let (code, v) = s
        .call(
            "post",
            "/api/v1/query",
            Some(&s.token),
            Some(json!({ "sql": sql })),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    v["rows"][0]["n"].as_i64().unwrap()
}

async fn wait_count(s: &TestServer, sql: &str, want: i64) {
    let mut last = -1;
    for _ in 0..100 {
        last = count(s, sql).await;
        if last == want {
            // Held steady: nothing more arrives a moment later.
            tokio::time::sleep(Duration::from_millis(600)).await;
            assert_eq!(count(s, sql).await, want, "{sql}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{sql}: {last}, not {want}");
}

fn append(path: &std::path::Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

#[tokio::test]
async fn nginx_lines_posted_or_tailed_across_rotation_and_restart_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.json");
    let mut cfg = config(&dir.path().join("data"));
    cfg.chain.nginx_logs = vec![log.clone()];
    let mut s = TestServer::start_with(cfg.clone()).await;

    // Posted: good lines stored, a bad one refused on its own with its line number.
    let body = format!("{}\nnot json\n{}\n", line("posted", 1), line("posted", 2));
    let r = s
        .http
        .post(format!("{}/v1/nginx", s.base))
        .bearer_auth(&s.token)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (&v["accepted"], &v["rejected"], &v["errors"][0]["line"]),
        (&json!(2), &json!(1), &json!(2)),
        "{v}"
    );
    let r = s
        .http
        .post(format!("{}/v1/nginx", s.base))
        .bearer_auth(&s.token)
        .body("nope\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        count(
            &s,
            "SELECT count(*) AS n FROM access_logs WHERE host = 'posted'"
        )
        .await,
        2
    );

    // Tailed: complete lines only, a partial one once it ends.
    let q = "SELECT count(*) AS n FROM access_logs WHERE host = 'tail'";
    append(
        &log,
        &format!(
            "{}\n{}\n{}\n",
            line("tail", 1),
            line("tail", 2),
            line("tail", 3)
        ),
    );
    wait_count(&s, q, 3).await;
    let partial = line("tail", 4);
    let (a, b) = partial.split_at(40);
    append(&log, a);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(count(&s, q).await, 3, "half a line waits");
    append(&log, &format!("{b}\n"));
    wait_count(&s, q, 4).await;

    // Rotation: the old file gets a last line after the rename, the new one two more.
    let rotated = dir.path().join("access.json.1");
    std::fs::rename(&log, &rotated).unwrap();
    append(&rotated, &format!("{}\n", line("tail", 5)));
    append(&log, &format!("{}\n{}\n", line("tail", 6), line("tail", 7)));
    wait_count(&s, q, 7).await;
    let uris = s
        .call(
            "post",
            "/api/v1/query",
            Some(&s.token),
            Some(json!({"sql": "SELECT uri FROM access_logs WHERE host = 'tail' ORDER BY time"})),
        )
        .await
        .1;
    let uris: Vec<&str> = uris["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["uri"].as_str().unwrap())
        .collect();
    assert_eq!(
        uris,
        ["/r/1", "/r/2", "/r/3", "/r/4", "/r/5", "/r/6", "/r/7"]
    );

    // A restart goes on where it stopped.
    s.stop().await;
    append(&log, &format!("{}\n", line("tail", 8)));
    let mut s = TestServer::start_with(cfg).await;
    wait_count(&s, q, 8).await;
    s.stop().await;
}

// ---- NetFlow / IPFIX from softflowd -----------------------------------------------------

/// Datagrams softflowd 1.1.0 exported (NetFlow v9, then IPFIX) for one recorded TCP
/// connection 10.1.2.3:40000 <-> 10.9.8.7:443: 5 packets from the client (100 bytes of
/// request), 3 from the server (200 bytes of answer).
const V9: &[u8] = include_bytes!("../../../chain/testdata/softflowd-v9.bin");
const IPFIX: &[u8] = include_bytes!("../../../chain/testdata/softflowd-ipfix.bin");

#[tokio::test]
async fn netflow_v9_and_ipfix_from_softflowd_are_linked_to_the_connection_they_describe() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("data"));
    cfg.chain.netflow_listen = Some("127.0.0.1:0".parse().unwrap());
    let mut s = TestServer::start_with(cfg).await;
    let collector = s.server.as_ref().unwrap().netflow_addr.unwrap();
    let exporter = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for d in [V9, IPFIX, &[0, 9, 0, 1, 2][..]] {
        exporter.send_to(d, collector).await.unwrap();
    }
    let q = "SELECT count(*) AS n FROM flows WHERE src_addr = '10.1.2.3' AND dst_addr = '10.9.8.7'";
    let mut n = 0;
    for _ in 0..50 {
        n = count(&s, q).await;
        if n >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, v) = s
        .call("post", "/api/v1/query", Some(&s.token), Some(json!({"sql":
            "SELECT version, src_port, dst_port, protocol, packets, bytes, community_id, \
             CAST(start_time AS BIGINT) / 1000000000 AS start_s FROM flows ORDER BY version, src_addr"})))
        .await;
    let flows = v["rows"].as_array().unwrap();
    assert_eq!(n, 2, "one flow per version from the client: {flows:?}");
    for version in [9, 10] {
        let out: Vec<&Value> = flows
            .iter()
            .filter(|f| f["version"] == version && f["src_port"] == 40000)
            .collect();
        assert_eq!(out.len(), 1, "v{version}: {flows:?}");
        let f = out[0];
        assert_eq!(
            (&f["dst_port"], &f["protocol"], &f["packets"]),
            (&json!(443), &json!(6), &json!(5)),
            "{f}"
        );
        assert_eq!(f["bytes"], json!(5 * 40 + 100), "{f}");
        // Recorded on 2026-12-02: the flow keeps the exporter's time, not the arrival's.
        let start = f["start_s"].as_i64().unwrap();
        assert!(
            (1_796_186_000..1_796_187_000).contains(&start),
            "the flow's own time: {f}"
        );
    }

    // The user's request went through that connection: the access log of the proxy it
    // reached names the connection and the trace; the journey finds the flow.
    let trace_hex = "5a".repeat(16);
    let otlp = json!({"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "edge-api"}}]},
        "scopeSpans": [{"spans": [{"traceId": trace_hex, "spanId": "5a5a5a5a5a5a5a5a", "name": "GET /balance", "kind": 2,
        "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000005000000",
        "attributes": [{"key": "user.id", "value": {"stringValue": "u-net"}}]}]}]}]});
    let r = s
        .http
        .post(format!("{}/v1/traces", s.base))
        .bearer_auth(&s.token)
        .json(&otlp)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let access = format!(
        r#"{{"msec":"1700000000.000","remote_addr":"10.1.2.3","remote_port":"40000","server_addr":"10.9.8.7","server_port":"443","request_method":"GET","uri":"/balance","status":"200","traceparent":"00-{trace_hex}-5a5a5a5a5a5a5a5a-01"}}"#
    );
    let r = s
        .http
        .post(format!("{}/v1/nginx", s.base))
        .bearer_auth(&s.token)
        .body(access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (code, j) = s.get("/api/v1/journeys?user=u-net").await;
    assert_eq!(code, 200, "{j}");
    let t = &j["traces"][0];
    assert_eq!(t["edge"].as_array().unwrap().len(), 1, "{t}");
    let linked = t["flows"].as_array().unwrap();
    assert_eq!(linked.len(), 4, "both directions, v9 and IPFIX: {t}");
    assert!(linked
        .iter()
        .all(|f| f["community_id"] == t["edge"][0]["community_id"]));
    s.stop().await;
}
