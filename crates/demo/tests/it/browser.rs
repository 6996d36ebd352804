//! A real browser: headless Chromium (Debian's `chromium`, driven over WebDriver by
//! `chromedriver`) loads a shop page with Steadfast's `/rum.js`, a click calls the shop's
//! backend (instrumented with OpenTelemetry, exporting to the same server), and the
//! user's journey links the page view, the click's fetch, the backend's server span and
//! its database call in one trace.

use std::sync::Arc;
use std::time::Duration;

use axum::response::Html;
use serde_json::{json, Value};
use steadfast_demo::telemetry::{server_span, Cx, OtlpConfig, Telemetry};
use steadfast_server::{Config, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_in_chromium_is_linked_from_page_view_to_the_backends_database_call() {
    if !crate::support::browser_present() {
        return;
    }
    let _turn = crate::support::shared_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        data_dir: dir.path().join("steadfast"),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    std::fs::create_dir_all(&cfg.data_dir).unwrap();
    let admin = steadfast_server::bootstrap_admin_token(&cfg.data_dir, "test").unwrap();
    let rules = Arc::new(steadfast_verify::parse_rules(steadfast_server::DEFAULT_RULES).unwrap());
    let server = Server::start(cfg, rules, false).await.unwrap();
    let steadfast = format!("http://{}", server.addr);
    let http = reqwest::Client::new();

    // The shop: a page with the agent and a button, and an instrumented backend.
    let shop_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shop = format!("http://{}", shop_listener.local_addr().unwrap());
    let r = http
        .post(format!("{steadfast}/api/v1/tokens"))
        .bearer_auth(&admin)
        .json(&json!({"subject": "shop-site", "name": "shop rum", "role": "beacon", "site": shop}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let key = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let telemetry = Arc::new(
        Telemetry::new(
            "shop-api",
            &OtlpConfig {
                enabled: true,
                endpoint: steadfast.clone(),
                metrics_interval_secs: 60,
                token: Some(admin.clone()),
            },
        )
        .unwrap(),
    );
    let page = format!(
        r#"<!doctype html><html><head><title>shop</title>
<script src="{steadfast}/rum.js" data-key="{key}" data-site="shop" data-user="browser-user-1"></script>
</head><body><button id="pay" onclick="fetch('/api/pay', {{method: 'POST'}}).then(r => r.text()).then(t => document.getElementById('out').textContent = t)">Pay</button>
<div id="out"></div></body></html>"#
    );
    let t = telemetry.clone();
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(move || async move { Html(page.clone()) }),
        )
        .route(
            "/api/pay",
            axum::routing::post(move |axum::Extension(cx): axum::Extension<Cx>| {
                let t = t.clone();
                async move {
                    t.db_span(&cx.0, "INSERT payments", || {
                        std::thread::sleep(Duration::from_millis(5))
                    });
                    "paid"
                }
            }),
        )
        .layer(axum::middleware::from_fn_with_state(
            telemetry.clone(),
            server_span,
        ));
    tokio::spawn(async move { axum::serve(shop_listener, app).await.unwrap() });

    // The browser.
    let chromium = crate::support::Browser::start().await;
    let browser = &chromium.client;
    browser.goto(&shop).await.unwrap();
    let button = browser
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(fantoccini::Locator::Id("pay"))
        .await
        .unwrap();
    // The agent has loaded and reported the page view before the click.
    browser
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(fantoccini::Locator::Css("body"))
        .await
        .unwrap();
    for _ in 0..100 {
        let ready = browser
            .execute(
                "return !!(window.steadfast && document.readyState === 'complete')",
                vec![],
            )
            .await
            .unwrap();
        if ready == json!(true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    button.click().await.unwrap();
    let mut answered = String::new();
    for _ in 0..100 {
        answered = browser
            .find(fantoccini::Locator::Id("out"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if answered == "paid" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answered, "paid");
    let trace_id = browser
        .execute(
            "window.steadfast.flush(); return window.steadfast.traceId()",
            vec![],
        )
        .await
        .unwrap();
    let trace_id = trace_id.as_str().unwrap().to_string();

    // The journey: page view -> click's fetch -> backend server span -> database call.
    let mut journey = Value::Null;
    let mut linked = false;
    for _ in 0..100 {
        let r = http
            .get(format!("{steadfast}/api/v1/journeys?user=browser-user-1"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        journey = r.json().await.unwrap();
        let spans = journey["traces"][0]["spans_list"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let find = |name: &str, service: &str| {
            spans
                .iter()
                .find(|s| s["name"] == name && s["service"] == service)
                .cloned()
        };
        if let (Some(page), Some(fetch), Some(srv), Some(db)) = (
            find("page load /", "rum:shop"),
            find("POST /api/pay", "rum:shop"),
            find("POST /api/pay", "shop-api"),
            spans
                .iter()
                .find(|s| {
                    s["service"] == "shop-api"
                        && s["db_statement"].is_null()
                        && s["name"].as_str().is_some_and(|n| n.starts_with("sqlite"))
                })
                .cloned(),
        ) {
            assert_eq!(
                fetch["parent_span_id"], page["span_id"],
                "the fetch is under the page view"
            );
            assert_eq!(
                srv["parent_span_id"], fetch["span_id"],
                "the backend continues the click's traceparent"
            );
            assert_eq!(db["parent_span_id"], srv["span_id"]);
            linked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(linked, "{journey:#}");
    let t = &journey["traces"][0];
    assert_eq!(t["trace_id"], trace_id);
    assert_eq!(t["root_service"], "rum:shop");
    assert!(
        t["breakdown"]["network_ns"].as_i64().unwrap() > 0,
        "{}",
        t["breakdown"]
    );
    assert!(
        t["breakdown"]["database_ns"].as_i64().unwrap() > 0,
        "{}",
        t["breakdown"]
    );
    assert_eq!(journey["sessions"].as_array().unwrap().len(), 1);
    chromium.close().await;
    let t2 = telemetry.clone();
    tokio::task::spawn_blocking(move || t2.shutdown())
        .await
        .unwrap();
    server.shutdown().await;
}
