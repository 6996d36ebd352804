//! Access control end to end: the route × role walk, audit coverage, four-eyes, tokens,
//! sessions, scopes, rate limits and TLS.

use std::time::Duration;

use serde_json::{json, Value};
use steadfast_server::api::route_table;
use steadfast_server::auth::{Access, Role, TokenSpec};

use crate::support::*;

fn concrete(path: &str) -> String {
    path.replace("{id}", "1").replace("{name}", "nobody")
}

fn spec(subject: &str, role: &str) -> TokenSpec {
    TokenSpec {
        subject: subject.into(),
        name: String::new(),
        role: role.into(),
        links: vec![],
        services: vec![],
        site: None,
        expires_in_secs: None,
        rate_per_sec: None,
        body_bytes_max: None,
    }
}

/// The decision table comes from the router itself: every route is documented, and every
/// route answers every role (and no token) as its access decision says. A route added
/// without a decision cannot be built (`Api::route` takes one); one that the guard does
/// not enforce fails here.
#[tokio::test]
async fn every_route_answers_every_role_as_its_access_decision_says() {
    let mut s = TestServer::start().await;
    let (_, doc) = s.call("get", "/api/v1/openapi.json", None, None).await;
    let paths = doc["paths"].as_object().unwrap();
    let routes = route_table();
    let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(
        documented,
        routes.len(),
        "the OpenAPI document and the router differ"
    );
    assert!(routes.len() >= 26);
    let mut checked = 0;
    for r in &routes {
        assert!(
            paths.get(r.path).and_then(|p| p.get(r.method)).is_some(),
            "{} {} is missing from the OpenAPI document",
            r.method,
            r.path
        );
        let path = concrete(r.path);
        let body = (r.method != "get").then(|| json!({}));
        let (code, v) = s.call(r.method, &path, None, body.clone()).await;
        match r.access {
            Access::Public => assert!(
                code != 401 && code != 403,
                "{} {}: {code}",
                r.method,
                r.path
            ),
            Access::Need(_) => assert_eq!(code, 401, "{} {} without a token", r.method, r.path),
        }
        let _ = v;
        for role in Role::ALL {
            // A fresh token per call: signing out revokes the token it is called with.
            let token = s.token_for(role.as_str(), &format!("walker-{}", role.as_str()));
            let (code, v) = s.call(r.method, &path, Some(&token), body.clone()).await;
            let allowed = match r.access {
                Access::Public => true,
                Access::Need(p) => role.permits(p),
            };
            if allowed {
                assert!(
                    code != 401 && !(code == 403 && v["code"] == "forbidden"),
                    "{} {} must admit {role:?}: {code} {v}",
                    r.method,
                    r.path
                );
            } else {
                assert_eq!(
                    (code, v["code"].as_str()),
                    (403, Some("forbidden")),
                    "{} {} must refuse {role:?}",
                    r.method,
                    r.path
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, routes.len() * Role::ALL.len());
    let (code, _) = s.call("get", "/api/v1/breaks", Some("nope"), None).await;
    assert_eq!(code, 401);
    // HEAD runs the GET handler, so it is decided as GET; other methods never pass.
    assert_eq!(s.call("head", "/api/v1/breaks", None, None).await.0, 401);
    let viewer = s.token_for("viewer", "v");
    assert_eq!(
        s.call("put", "/api/v1/tokens", Some(&viewer), Some(json!({})))
            .await
            .0,
        405
    );
    s.stop().await;
}

async fn audit_entries(s: &TestServer) -> Vec<Value> {
    let (code, v) = s.get("/api/v1/audit?limit=1000").await;
    assert_eq!(code, 200, "{v}");
    v.as_array().unwrap().clone()
}

fn route_of(e: &Value) -> String {
    serde_json::from_str::<Value>(e["detail"].as_str().unwrap_or("{}")).unwrap_or_default()["route"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Every state-changing route of the table, called for real, leaves an entry with who,
/// what, from where and the result; the chain verifies.
#[tokio::test]
async fn every_state_changing_action_is_in_the_audit_log() {
    let mut s = TestServer::start().await;
    let second = s.token_for("admin", "second-admin");
    // A break to work.
    let (code, _) = s
        .post(
            "/api/v1/records",
            body(&[payment("p1", "O-1", "10.00"), bill("b1", "O-1", "10.01")]),
        )
        .await;
    assert_eq!(code, 200);
    let brk = s.wait_breaks("", |r| !r.is_empty()).await[0]["id"]
        .as_u64()
        .unwrap();
    let (code, tok) = s
        .call(
            "post",
            "/api/v1/tokens",
            Some(&s.token),
            Some(json!({"subject": "bot", "role": "viewer"})),
        )
        .await;
    assert_eq!(code, 201, "{tok}");
    let steps: Vec<(&str, String, Option<&str>, Value)> = vec![
        (
            "post",
            format!("/api/v1/breaks/{brk}/status"),
            None,
            json!({"status": "acknowledged", "reason": "looking"}),
        ),
        (
            "delete",
            format!("/api/v1/tokens/{}", tok["id"].as_str().unwrap()),
            None,
            Value::Null,
        ),
        (
            "post",
            "/api/v1/users".into(),
            None,
            json!({"name": "dana", "password": "a long enough secret", "role": "viewer"}),
        ),
        (
            "post",
            "/api/v1/sessions".into(),
            None,
            json!({"user": "dana", "password": "a long enough secret"}),
        ),
        ("delete", "/api/v1/users/dana".into(), None, Value::Null),
        (
            "post",
            "/api/v1/killswitch".into(),
            None,
            json!({"reason": "drill went wrong"}),
        ),
        (
            "delete",
            "/api/v1/killswitch".into(),
            None,
            json!({"reason": "all clear"}),
        ),
        (
            "post",
            "/api/v1/approvals/1/approve".into(),
            Some(&second),
            json!({"reason": "checked"}),
        ),
        (
            "post",
            "/api/v1/killswitch".into(),
            None,
            json!({"reason": "again"}),
        ),
        (
            "delete",
            "/api/v1/killswitch".into(),
            None,
            json!({"reason": "all clear"}),
        ),
        (
            "post",
            "/api/v1/approvals/2/reject".into(),
            Some(&second),
            json!({"reason": "not yet"}),
        ),
    ];
    for (method, path, token, b) in &steps {
        let (code, v) = s
            .call(
                method,
                path,
                Some(token.unwrap_or(&s.token)),
                Some(b.clone()),
            )
            .await;
        assert!(code < 300, "{method} {path}: {code} {v}");
    }
    // A drill: create, start (refused: the kill switch is still engaged), stop.
    let spec = "name = \"d\"\nrules = [\"payment-bill\"]\n[[faults]]\nkind = \"bill\"\nfield = \"amount\"\nmutation = { offset_minor = 1 }\n";
    let (code, d) = s
        .call(
            "post",
            "/api/v1/drills",
            Some(&s.token),
            Some(json!({"spec": spec, "pairs": 2})),
        )
        .await;
    assert_eq!(code, 201, "{d}");
    let id = d["id"].as_str().unwrap();
    assert_eq!(
        s.call(
            "post",
            &format!("/api/v1/drills/{id}/start"),
            Some(&s.token),
            None
        )
        .await
        .0,
        409
    );
    assert_eq!(
        s.call(
            "post",
            &format!("/api/v1/drills/{id}/stop"),
            Some(&s.token),
            None
        )
        .await
        .0,
        200
    );
    // A schedule and a blackout window, added and removed.
    let (code, sch) = s
        .call(
            "post",
            "/api/v1/drill-schedules",
            Some(&s.token),
            Some(json!({"name": "n", "cron": "0 0 3 * * *", "spec": spec})),
        )
        .await;
    assert_eq!(code, 201, "{sch}");
    let path = format!("/api/v1/drill-schedules/{}", sch["id"].as_str().unwrap());
    assert_eq!(s.call("delete", &path, Some(&s.token), None).await.0, 200);
    let (code, bo) = s
        .call(
            "post",
            "/api/v1/drill-blackouts",
            Some(&s.token),
            Some(json!({"reason": "close", "cron": "0 0 0 28 * *", "duration_secs": 86400})),
        )
        .await;
    assert_eq!(code, 201, "{bo}");
    let path = format!("/api/v1/drill-blackouts/{}", bo["id"].as_str().unwrap());
    assert_eq!(s.call("delete", &path, Some(&s.token), None).await.0, 200);
    // Handing over the hits of a drill that has none: refused, and audited all the same.
    let (code, _) = s
        .call(
            "post",
            "/api/v1/drills/drill-none/handover",
            Some(&s.token),
            Some(json!({"note": "ops on call"})),
        )
        .await;
    assert_eq!(code, 404);
    // Verifying and executing a runbook that is not configured: refused, and audited
    // (runbooks.rs runs configured ones).
    for step in ["verify", "execute"] {
        let (code, _) = s
            .call(
                "post",
                &format!("/api/v1/runbooks/nobody/{step}"),
                Some(&s.token),
                Some(json!({"reason": "failover"})),
            )
            .await;
        assert_eq!(code, 404);
    }
    // A query over the data chain: a read, but who asked what is kept.
    let (code, _) = s
        .call(
            "post",
            "/api/v1/query",
            Some(&s.token),
            Some(json!({"sql": "SELECT count(*) AS n FROM spans"})),
        )
        .await;
    assert_eq!(code, 200);
    // Signing out with a session token of its own.
    let (_, login) = s
        .call(
            "post",
            "/api/v1/users",
            Some(&s.token),
            Some(json!({"name": "erin", "password": "another long secret", "role": "operator"})),
        )
        .await;
    assert_eq!(login["name"], "erin");
    let (code, sess) = s
        .call(
            "post",
            "/api/v1/sessions",
            None,
            Some(json!({"user": "erin", "password": "another long secret"})),
        )
        .await;
    assert_eq!(code, 201);
    let session = sess["token"].as_str().unwrap().to_string();
    assert_eq!(
        s.call("get", "/api/v1/whoami", Some(&session), None)
            .await
            .1["role"],
        "operator"
    );
    assert_eq!(
        s.call("delete", "/api/v1/sessions", Some(&session), None)
            .await
            .0,
        200
    );
    assert_eq!(
        s.call("get", "/api/v1/whoami", Some(&session), None)
            .await
            .0,
        401,
        "a signed-out session is dead"
    );

    let entries = audit_entries(&s).await;
    let audited: Vec<String> = route_table()
        .iter()
        .filter(|r| r.is_audited())
        .map(|r| format!("{} {}", r.method.to_ascii_uppercase(), r.path))
        .collect();
    assert!(audited.len() >= 11, "{audited:?}");
    for route in &audited {
        assert!(
            entries.iter().any(|e| &route_of(e) == route),
            "no audit entry for {route}"
        );
    }
    for e in &entries {
        assert!(
            !e["actor"].as_str().unwrap().is_empty() && !e["result"].as_str().unwrap().is_empty(),
            "{e}"
        );
        assert!(e["source"] == "127.0.0.1" || e["source"] == "local", "{e}");
    }
    let ack = entries
        .iter()
        .find(|e| e["action"] == "break.status")
        .unwrap();
    assert_eq!(
        (ack["actor"].as_str(), ack["result"].as_str()),
        (Some("test"), Some("200"))
    );
    // Reads are not audited; ingest is recorded by the WAL, not here.
    assert!(!entries
        .iter()
        .any(|e| route_of(e).starts_with("GET ") || route_of(e) == "POST /api/v1/records"));
    let (_, check) = s.get("/api/v1/audit/verify").await;
    assert_eq!(check["ok"], true, "{check}");
    assert_eq!(check["entries"].as_u64().unwrap() as usize, entries.len());
    s.stop().await;
}

/// A lossy-drill-class action (releasing the kill switch) requested by one person and
/// approved by the same person is refused; a second person with the right role approves
/// and it runs; all of it is in the audit log.
#[tokio::test]
async fn four_eyes_needs_a_second_person_with_the_right_role() {
    let mut s = TestServer::start().await;
    let alice = s.token_for("drill-admin", "alice");
    let alice_again = s.token_for("drill-admin", "alice");
    let bob = s.token_for("drill-admin", "bob");
    let carol = s.token_for("operator", "carol");
    let state = |v: &Value| v["engaged"].as_bool().unwrap();

    // Pulling never waits for anyone, and an operator may pull.
    let (code, v) = s
        .call(
            "post",
            "/api/v1/killswitch",
            Some(&carol),
            Some(json!({"reason": "stop everything"})),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert!(state(&v));
    let (code, v) = s
        .call(
            "delete",
            "/api/v1/killswitch",
            Some(&alice),
            Some(json!({"reason": "drill over"})),
        )
        .await;
    assert_eq!(code, 202, "{v}");
    let id = v["pending_approval"]["id"].as_u64().unwrap();
    assert!(
        state(
            &s.call("get", "/api/v1/killswitch", Some(&bob), None)
                .await
                .1
        ),
        "nothing runs before approval"
    );

    for (who, token, code_want, why) in [
        ("alice", &alice, "same_person", "the requester"),
        (
            "alice",
            &alice_again,
            "same_person",
            "the requester with another token",
        ),
        (
            "carol",
            &carol,
            "forbidden",
            "an operator, who may not release",
        ),
    ] {
        let (code, v) = s
            .call(
                "post",
                &format!("/api/v1/approvals/{id}/approve"),
                Some(token),
                Some(json!({})),
            )
            .await;
        assert_eq!(
            (code, v["code"].as_str()),
            (403, Some(code_want)),
            "{who}: {why}: {v}"
        );
    }
    assert!(state(
        &s.call("get", "/api/v1/killswitch", Some(&bob), None)
            .await
            .1
    ));
    let (code, v) = s
        .call(
            "post",
            &format!("/api/v1/approvals/{id}/approve"),
            Some(&bob),
            Some(json!({"reason": "confirmed"})),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        (v["status"].as_str(), v["decided_by"].as_str()),
        (Some("approved"), Some("bob"))
    );
    assert!(
        !state(
            &s.call("get", "/api/v1/killswitch", Some(&bob), None)
                .await
                .1
        ),
        "approved: released"
    );
    let (code, _) = s
        .call(
            "post",
            &format!("/api/v1/approvals/{id}/approve"),
            Some(&bob),
            Some(json!({})),
        )
        .await;
    assert_eq!(code, 409, "an approval runs once");

    let entries = audit_entries(&s).await;
    let find = |action: &str, actor: &str| {
        entries
            .iter()
            .filter(|e| e["action"] == action && e["actor"] == actor)
            .map(|e| {
                (
                    e["result"].as_str().unwrap().to_string(),
                    e["approver"].as_str().map(String::from),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(find("killswitch.pull", "carol"), vec![("200".into(), None)]);
    assert_eq!(
        find("killswitch.release.request", "alice"),
        vec![("202".into(), None)]
    );
    assert_eq!(find("killswitch.release.approve", "alice").len(), 2);
    assert!(find("killswitch.release.approve", "alice")
        .iter()
        .all(|(r, _)| r == "403 same_person"));
    assert_eq!(
        find("killswitch.release.approve", "carol")[0].0,
        "403 forbidden"
    );
    assert_eq!(
        find("killswitch.release.approve", "bob")[0],
        ("200".into(), Some("bob".into()))
    );
    assert_eq!(
        find("killswitch.release", "alice"),
        vec![("done".into(), Some("bob".into()))]
    );
    s.stop().await;
}

#[tokio::test]
async fn tokens_expire_are_revoked_at_once_and_keep_to_their_scope_and_rate() {
    let mut s = TestServer::start().await;
    // Expiry.
    let (code, v) = s
        .call(
            "post",
            "/api/v1/tokens",
            Some(&s.token),
            Some(json!({"subject": "tmp", "role": "viewer", "expires_in_secs": 1})),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    let short = v["token"].as_str().unwrap().to_string();
    assert_eq!(
        s.call("get", "/api/v1/status", Some(&short), None).await.0,
        200
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (code, v) = s.call("get", "/api/v1/status", Some(&short), None).await;
    assert_eq!(code, 401);
    assert!(v["message"].as_str().unwrap().contains("expired"), "{v}");
    // Revocation takes effect on the next request.
    let viewer = s.token_for("viewer", "vic");
    assert_eq!(
        s.call("get", "/api/v1/status", Some(&viewer), None).await.0,
        200
    );
    let (_, list) = s.get("/api/v1/tokens").await;
    assert!(list.to_string().find("secret").is_none() && !list.to_string().contains(&viewer));
    let id = viewer.split('_').nth(1).unwrap();
    assert_eq!(
        s.call(
            "delete",
            &format!("/api/v1/tokens/{id}"),
            Some(&s.token),
            None
        )
        .await
        .0,
        200
    );
    let (code, v) = s.call("get", "/api/v1/status", Some(&viewer), None).await;
    assert_eq!(
        (code, v["message"].as_str().map(|m| m.contains("revoked"))),
        (401, Some(true))
    );
    // A tampered secret is not the token.
    let mut forged = s.token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    assert_eq!(
        s.call("get", "/api/v1/status", Some(&forged), None).await.0,
        401
    );

    // Scope: an ingest token for billing only.
    let billing = s.token_with(TokenSpec {
        services: vec!["billing".into()],
        ..spec("billing-reporter", "ingest")
    });
    let (code, v) = s
        .call(
            "post",
            "/api/v1/records",
            Some(&billing),
            Some(json!([
                bill("b1", "S-1", "5.00"),
                payment("p1", "S-1", "5.00")
            ])),
        )
        .await;
    assert_eq!(
        (code, v["code"].as_str()),
        (403, Some("out_of_scope")),
        "{v}"
    );
    assert_eq!(v["errors"][0]["index"], 1);
    let (code, _) = s
        .call(
            "post",
            "/api/v1/records",
            Some(&billing),
            Some(json!([bill("b1", "S-1", "5.00")])),
        )
        .await;
    assert_eq!(code, 200);
    // A viewer scoped to a link sees that link's breaks and no others.
    let (code, _) = s
        .post(
            "/api/v1/records",
            body(&[payment("p2", "S-2", "1.00"), bill("b2", "S-2", "2.00")]),
        )
        .await;
    assert_eq!(code, 200);
    s.wait_breaks("", |r| r.iter().any(|b| b["key"] == "S-2"))
        .await;
    let wallet_viewer = s.token_with(TokenSpec {
        links: vec!["wallet".into()],
        ..spec("w", "viewer")
    });
    let bill_viewer = s.token_with(TokenSpec {
        links: vec!["pay-to-bill".into()],
        ..spec("b", "viewer")
    });
    let (_, seen) = s
        .call("get", "/api/v1/breaks", Some(&bill_viewer), None)
        .await;
    assert!(seen.as_array().unwrap().iter().any(|b| b["key"] == "S-2"));
    let (_, unseen) = s
        .call("get", "/api/v1/breaks", Some(&wallet_viewer), None)
        .await;
    assert!(
        unseen
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["link"] == "wallet"),
        "{unseen}"
    );
    let id = seen
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["key"] == "S-2")
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    assert_eq!(
        s.call(
            "get",
            &format!("/api/v1/breaks/{id}"),
            Some(&wallet_viewer),
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        s.call(
            "get",
            &format!("/api/v1/breaks/{id}"),
            Some(&bill_viewer),
            None
        )
        .await
        .0,
        200
    );
    // Its rules and status are narrowed the same way: the wallet viewer sees neither
    // pay-to-bill's rules nor its open records and break counts.
    let names = |v: &Value| -> Vec<String> {
        v["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, all) = s.call("get", "/api/v1/rules", Some(&s.token), None).await;
    let (_, mine) = s
        .call("get", "/api/v1/rules", Some(&wallet_viewer), None)
        .await;
    let (all, mine_names) = (names(&all), names(&mine));
    assert!(
        !mine_names.is_empty() && mine_names.len() < all.len(),
        "{mine}"
    );
    assert!(
        mine["links"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["name"] == "wallet"),
        "{mine}"
    );
    let hidden: Vec<&String> = all.iter().filter(|r| !mine_names.contains(r)).collect();
    let (_, st) = s
        .call("get", "/api/v1/status", Some(&wallet_viewer), None)
        .await;
    let (_, full) = s.call("get", "/api/v1/status", Some(&s.token), None).await;
    for r in &hidden {
        assert!(st["open_records"].get(r.as_str()).is_none(), "{st}");
        assert!(st["unresolved_by_rule"].get(r.as_str()).is_none(), "{st}");
    }
    assert!(
        hidden
            .iter()
            .any(|r| full["unresolved_by_rule"].get(r.as_str()).is_some()),
        "the admin sees the hidden rule's unresolved breaks: {full}"
    );
    let total = |v: &Value| -> u64 {
        v["breaks"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum()
    };
    assert!(total(&st) < total(&full), "{st} against {full}");
    let (code, v) = s
        .call(
            "post",
            "/api/v1/tokens",
            Some(&s.token),
            Some(json!({"subject": "x", "role": "viewer", "links": ["no-such-link"]})),
        )
        .await;
    assert_eq!(code, 400, "{v}");

    // Rate: two requests a second, then 429 with Retry-After.
    let slow = s.token_with(TokenSpec {
        rate_per_sec: Some(2),
        body_bytes_max: None,
        ..spec("slow", "viewer")
    });
    let mut codes = vec![];
    for _ in 0..8 {
        let r = s
            .http
            .get(format!("{}/api/v1/status", s.base))
            .bearer_auth(&slow)
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
        }
        codes.push(r.status().as_u16());
    }
    assert_eq!(&codes[..2], &[200, 200]);
    assert!(codes[2..].contains(&429), "{codes:?}");

    // Size: a token with a small body limit gets 413 past it; the same body passes with
    // the server's limit.
    let small = s.token_with(TokenSpec {
        body_bytes_max: Some(300),
        ..spec("small", "ingest")
    });
    let big = body(&[
        payment("z1", "Z-1", "1.00"),
        bill("z2", "Z-1", "1.00"),
        payment("z3", "Z-3", "1.00"),
    ]);
    assert!(big.len() > 300);
    let (code, v) = s
        .call_raw("post", "/api/v1/records", &small, big.clone())
        .await;
    assert_eq!(
        (code, v["code"].as_str()),
        (413, Some("body_too_large")),
        "{v}"
    );
    assert!(v["message"].as_str().unwrap().contains("300 bytes"), "{v}");
    let (code, _) = s.call_raw("post", "/api/v1/records", &s.token, big).await;
    assert_eq!(code, 200);
    s.stop().await;
}

#[tokio::test]
async fn users_sign_in_with_their_password_and_nothing_else() {
    let mut s = TestServer::start().await;
    let (code, v) = s
        .call(
            "post",
            "/api/v1/users",
            Some(&s.token),
            Some(json!({"name": "ops", "password": "short", "role": "viewer"})),
        )
        .await;
    assert_eq!(code, 400, "a short password is refused: {v}");
    let (code, v) = s
        .call(
            "post",
            "/api/v1/users",
            Some(&s.token),
            Some(json!({"name": "ops", "password": "twelve chars or more", "role": "operator"})),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    assert!(v.get("password_phc").is_none() && !v.to_string().contains("argon2"));
    assert_eq!(
        s.call(
            "post",
            "/api/v1/users",
            Some(&s.token),
            Some(json!({"name": "ops", "password": "twelve chars or more", "role": "operator"}))
        )
        .await
        .0,
        409
    );
    let (code, v) = s
        .call(
            "post",
            "/api/v1/sessions",
            None,
            Some(json!({"user": "ops", "password": "twelve chars or morf"})),
        )
        .await;
    assert_eq!(
        (code, v["message"].as_str()),
        (401, Some("wrong user name or password"))
    );
    let (code, v) = s
        .call(
            "post",
            "/api/v1/sessions",
            None,
            Some(json!({"user": "nobody", "password": "twelve chars or more"})),
        )
        .await;
    assert_eq!(
        (code, v["message"].as_str()),
        (401, Some("wrong user name or password")),
        "unknown users answer the same"
    );
    let (code, v) = s
        .call(
            "post",
            "/api/v1/sessions",
            None,
            Some(json!({"user": "ops", "password": "twelve chars or more"})),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    let session = v["token"].as_str().unwrap().to_string();
    assert!(session.starts_with("sfs_"));
    let (_, me) = s.call("get", "/api/v1/whoami", Some(&session), None).await;
    assert_eq!(
        (me["subject"].as_str(), me["role"].as_str()),
        (Some("ops"), Some("operator"))
    );
    // Disabling the user ends its sessions.
    assert_eq!(
        s.call("delete", "/api/v1/users/ops", Some(&s.token), None)
            .await
            .0,
        200
    );
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the token cache
    assert_eq!(
        s.call("get", "/api/v1/whoami", Some(&session), None)
            .await
            .0,
        401
    );
    assert_eq!(
        s.call(
            "post",
            "/api/v1/sessions",
            None,
            Some(json!({"user": "ops", "password": "twelve chars or more"}))
        )
        .await
        .0,
        401
    );
    // Sign-in attempts from one address are limited.
    let mut last = 0;
    for _ in 0..12 {
        last = s
            .call(
                "post",
                "/api/v1/sessions",
                None,
                Some(json!({"user": "ops", "password": "wrong but long enough"})),
            )
            .await
            .0;
    }
    assert_eq!(last, 429);
    s.stop().await;
}

#[tokio::test]
async fn the_audit_log_is_exported_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    let out = dir.path().join("audit.jsonl");
    cfg.audit.export_file = Some(out.clone());
    let mut s = TestServer::start_with(cfg).await;
    for i in 0..3 {
        let (code, _) = s
            .call(
                "post",
                "/api/v1/killswitch",
                Some(&s.token),
                Some(json!({"reason": format!("pull {i}")})),
            )
            .await;
        assert_eq!(code, 200);
    }
    let mut lines = vec![];
    for _ in 0..100 {
        lines = std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect();
        if lines.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The bootstrap token's creation, then the three pulls, in order and chained.
    assert_eq!(lines.len(), 4, "{lines:?}");
    let entries: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for w in entries.windows(2) {
        assert_eq!(w[1]["prev_hash"], w[0]["hash"]);
        assert_eq!(
            w[1]["seq"].as_u64().unwrap(),
            w[0]["seq"].as_u64().unwrap() + 1
        );
    }
    assert_eq!(entries[3]["action"], "killswitch.pull");
    s.stop().await;
}

#[tokio::test]
async fn the_audit_log_reaches_a_siem_webhook_in_order_despite_failures() {
    let (hook, received, calls) = webhook_receiver(2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.audit.webhook_url = Some(hook);
    let mut s = TestServer::start_with(cfg).await;
    for i in 0..3 {
        let (code, _) = s
            .call(
                "post",
                "/api/v1/killswitch",
                Some(&s.token),
                Some(json!({"reason": format!("pull {i}")})),
            )
            .await;
        assert_eq!(code, 200);
    }
    for _ in 0..150 {
        if received.lock().unwrap().len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = received.lock().unwrap().clone();
    let seqs: Vec<u64> = got.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        [1, 2, 3, 4],
        "every entry once, in order, after two refusals"
    );
    assert!(*calls.lock().unwrap() >= 3);
    s.stop().await;
}

// ---- transport -----------------------------------------------------------------------

struct Pki {
    ca_pem: String,
    server_cert: String,
    server_key: String,
    client_identity: String,
}

fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "steadfast test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names).unwrap();
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &ca_cert, &ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(
        vec!["localhost".into(), "127.0.0.1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = leaf(
        vec!["billing-reporter".into()],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    Pki {
        ca_pem: ca_cert.pem(),
        server_cert,
        server_key,
        client_identity: format!("{client_cert}{client_key}"),
    }
}

#[tokio::test]
async fn tls_works_end_to_end_and_ingest_can_require_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let mut cfg = config(&dir.path().join("data"));
    cfg.tls.cert = Some(write("server.pem", &pki.server_cert));
    cfg.tls.key = Some(write("server.key", &pki.server_key));
    cfg.tls.client_ca = Some(write("ca.pem", &pki.ca_pem));
    cfg.tls.ingest_requires_client_cert = true;
    let mut s = TestServer::start_with(cfg).await;
    assert!(s.server.as_ref().unwrap().tls);
    let addr = s.server.as_ref().unwrap().addr;
    let base = format!("https://127.0.0.1:{}", addr.port());
    let ca = reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap();
    let plain_client = reqwest::Client::builder()
        .add_root_certificate(ca.clone())
        .build()
        .unwrap();
    let with_cert = reqwest::Client::builder()
        .add_root_certificate(ca)
        .identity(reqwest::Identity::from_pem(pki.client_identity.as_bytes()).unwrap())
        .build()
        .unwrap();

    let r = plain_client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = plain_client
        .get(format!("{base}/api/v1/status"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "reads need no client certificate");
    let batch = body(&[payment("p1", "T-1", "1.00"), bill("b1", "T-1", "1.00")]);
    let r = plain_client
        .post(format!("{base}/api/v1/records"))
        .bearer_auth(&s.token)
        .body(batch.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "client_cert_required"
    );
    let r = with_cert
        .post(format!("{base}/api/v1/records"))
        .bearer_auth(&s.token)
        .body(batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    // Plain HTTP to the TLS port gets no answer; an untrusting client refuses the server.
    assert!(
        reqwest::get(format!("http://127.0.0.1:{}/healthz", addr.port()))
            .await
            .is_err()
    );
    assert!(reqwest::get(format!("{base}/healthz")).await.is_err());
    s.stop().await;
}

#[tokio::test]
async fn plain_http_on_a_non_loopback_address_needs_the_explicit_setting() {
    let dir = tempfile::tempdir().unwrap();
    let rules = std::sync::Arc::new(
        steadfast_verify::parse_rules(steadfast_server::DEFAULT_RULES).unwrap(),
    );
    let mut cfg = config(dir.path());
    cfg.listen = "0.0.0.0:0".parse().unwrap();
    let err = match steadfast_server::Server::start(cfg.clone(), rules.clone(), false).await {
        Ok(_) => panic!("plain HTTP on 0.0.0.0 must not start"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("refusing to serve plain HTTP") && err.contains("allow_plain_http"),
        "{err}"
    );
    cfg.allow_plain_http = true;
    let server = steadfast_server::Server::start(cfg, rules, false)
        .await
        .unwrap();
    assert!(!server.tls);
    server.shutdown().await;
}

#[tokio::test]
async fn account_values_are_masked_except_for_roles_configured_to_see_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.masking.unmasked_roles = vec!["drill-admin".into()];
    let mut s = TestServer::start_with(cfg).await;
    let mut p = payment("p1", "M-1", "1.00");
    p["account"] = json!("6222020200112233");
    let mut b = bill("b1", "M-1", "1.00");
    b["attributes"] = json!({"payer_account": "6222020200119999"});
    assert_eq!(s.post("/api/v1/records", body(&[p, b])).await.0, 200);
    s.wait_breaks("", |r| !r.is_empty()).await;
    let viewer = s.token_for("viewer", "v");
    let drill_admin = s.token_for("drill-admin", "d");
    let (_, masked) = s.call("get", "/api/v1/breaks", Some(&viewer), None).await;
    assert_eq!(masked[0]["expected"], "************2233");
    let (_, full) = s
        .call("get", "/api/v1/breaks", Some(&drill_admin), None)
        .await;
    assert_eq!(full[0]["expected"], "6222020200112233");
    s.stop().await;
}
