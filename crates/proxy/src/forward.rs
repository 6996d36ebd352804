//! Forwarding: every request goes to the upstream with its method, path, query, headers
//! (hop-by-hop ones dropped) and body. A request on a route no drill acts on streams
//! through unread; one on an armed route is read whole (at most `body_bytes_max`), shown
//! to the core, and sent on as the core decided.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use serde_json::Value;
use steadfast_drill::proxy::{BodySide, Decision, Seen};
use steadfast_drill::tamper::Action;

use crate::config::{CompiledRoute, HOLDING_MAX};
use crate::listener::Conn;
use crate::Edge;

pub(crate) fn router(edge: Arc<Edge>) -> Router {
    Router::new().fallback(handle).with_state(edge)
}

/// Headers that belong to one hop, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn end_to_end(headers: &HeaderMap, keep_length: bool) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (k, v) in headers {
        let name = k.as_str();
        if HOP_BY_HOP.contains(&name)
            || name == "host"
            || (!keep_length && name == "content-length")
        {
            continue;
        }
        out.append(k.clone(), v.clone());
    }
    out
}

fn plain(status: StatusCode) -> Response {
    let text = format!(
        "{{\"error\":{:?}}}",
        status.canonical_reason().unwrap_or("error")
    );
    (status, [(header::CONTENT_TYPE, "application/json")], text).into_response()
}

/// The business key at `path` in a JSON body: a string, or a number as written.
fn key_at(body: &Value, path: &str) -> String {
    let v = path.split('.').try_fold(body, |v, p| v.get(p));
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// The upstream client: hyper's pooled HTTP/1 client, TLS by rustls for https upstreams.
/// Bodies pass through as they are, lengths kept, with no copy on the way.
pub(crate) type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Body,
>;

pub(crate) fn client(cfg: &crate::ProxyConfig) -> anyhow::Result<Client> {
    use anyhow::Context as _;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(ca) = &cfg.upstream_ca_cert {
        for c in rustls::pki_types::CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("failed to read {}", ca.display()))?
        {
            roots
                .add(c.with_context(|| format!("{} holds a malformed certificate", ca.display()))?)
                .with_context(|| format!("{} holds an unusable CA certificate", ca.display()))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_millis(cfg.upstream_connect_timeout_ms)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(crate::config::UPSTREAM_IDLE_MAX)
            .build(https),
    )
}

struct Upstream {
    status: StatusCode,
    headers: HeaderMap,
    body: Body,
}

async fn send(
    edge: &Edge,
    parts: &axum::http::request::Parts,
    peer: std::net::SocketAddr,
    body: Body,
    same_body: bool,
) -> Result<Upstream, Response> {
    let base = edge.upstream.path().trim_end_matches('/');
    let path = match parts.uri.query() {
        Some(q) => format!("{base}{}?{q}", parts.uri.path()),
        None => format!("{base}{}", parts.uri.path()),
    };
    let authority = edge.upstream.authority();
    let uri = format!("{}://{authority}{path}", edge.upstream.scheme());
    let mut req = axum::http::Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = match uri.parse() {
        Ok(u) => u,
        Err(_) => return Err(plain(StatusCode::BAD_REQUEST)),
    };
    let headers = req.headers_mut();
    // A body read and sent anew gets its length from what is sent.
    *headers = end_to_end(&parts.headers, same_body);
    if let Ok(v) = HeaderValue::from_str(authority) {
        headers.insert(header::HOST, v);
    }
    if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
        headers.append(HeaderName::from_static("x-forwarded-for"), v);
    }
    let timeout = Duration::from_millis(edge.cfg.upstream_timeout_ms);
    match tokio::time::timeout(timeout, edge.client.request(req)).await {
        Ok(Ok(r)) => {
            let (p, body) = r.into_parts();
            Ok(Upstream {
                status: p.status,
                headers: end_to_end(&p.headers, true),
                body: Body::new(body),
            })
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "upstream unreachable");
            Err(plain(StatusCode::BAD_GATEWAY))
        }
        Err(_) => Err(plain(StatusCode::GATEWAY_TIMEOUT)),
    }
}

fn streamed(up: Upstream) -> Response {
    let mut r = Response::new(up.body);
    *r.status_mut() = up.status;
    *r.headers_mut() = up.headers;
    r
}

fn whole(status: StatusCode, mut headers: HeaderMap, body: Bytes) -> Response {
    headers.remove(header::CONTENT_LENGTH);
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

/// A body sent at most `bytes_per_sec`: a tenth of a second's worth at a time.
fn throttled(body: Bytes, bytes_per_sec: u64) -> Body {
    let chunk = (bytes_per_sec / 10).max(1) as usize;
    let stream = futures_util::stream::unfold(body, move |mut rest| async move {
        if rest.is_empty() {
            return None;
        }
        let part = rest.split_to(chunk.min(rest.len()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((Ok::<Bytes, Infallible>(part), rest))
    });
    Body::from_stream(stream)
}

async fn read_whole(edge: &Edge, body: Body) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, edge.cfg.body_bytes_max)
        .await
        .map_err(|_| plain(StatusCode::BAD_GATEWAY))
}

/// Shows the core one body; records a hit durably before it takes effect.
async fn decide(
    edge: &Arc<Edge>,
    route: &CompiledRoute,
    side: BodySide,
    body: &[u8],
) -> Option<Decision> {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let key = json
        .as_ref()
        .map(|j| key_at(j, &route.route.key))
        .unwrap_or_default();
    let decided = {
        let mut a = edge.active.lock().expect("active lock");
        a.decide(
            &Seen {
                kind: &route.route.kind,
                route: &route.label,
                side,
                key: &key,
                body: json.as_ref(),
            },
            edge.now_ms(),
        )
    };
    let mut d = match decided {
        Ok(Some(d)) => d,
        Ok(None) => return None,
        Err(e) => {
            // A failed injection is no injection: the request goes on as it came.
            tracing::warn!(route = %route.label, key = %key, error = %e, "tampering failed; forwarded unchanged");
            return None;
        }
    };
    // Hits travel in wall-clock time: the server measures discovery against its breaks.
    d.hit.hit.at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.as_millis() as i64);
    let e = edge.clone();
    let hit = d.hit.clone();
    match tokio::task::spawn_blocking(move || e.journal.append(&hit)).await {
        Ok(Ok(())) => {}
        other => {
            tracing::error!(error = ?other, "a hit could not be journaled; forwarded unchanged");
            return None;
        }
    }
    edge.outbox.notify_one();
    if d.hit.dry_run {
        return None;
    }
    edge.tampered.fetch_add(1, Ordering::Relaxed);
    Some(d)
}

/// Holds a request until its drill ends (or the proxy stops), then resets it.
async fn hold(edge: &Edge, conn: &Conn, drill: &str) -> Response {
    if edge.holding.fetch_add(1, Ordering::AcqRel) >= HOLDING_MAX {
        edge.holding.fetch_sub(1, Ordering::AcqRel);
        conn.reset();
        return plain(StatusCode::SERVICE_UNAVAILABLE);
    }
    let mut changed = edge.changed.subscribe();
    loop {
        let left = {
            let a = edge.active.lock().expect("active lock");
            match a.deadline(drill) {
                Some(d) if !a.killswitch() => d - edge.now_ms(),
                _ => 0,
            }
        };
        if left <= 0 || edge.cfg_stopping() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(left as u64)) => {}
            r = changed.changed() => if r.is_err() { break },
        }
    }
    edge.holding.fetch_sub(1, Ordering::AcqRel);
    conn.reset();
    plain(StatusCode::SERVICE_UNAVAILABLE)
}

/// Availability faults that answer in place of the upstream; `None` for the others.
async fn answer_instead(edge: &Edge, conn: &Conn, d: &Decision) -> Option<Response> {
    match d.action {
        Action::Respond(status) => Some(plain(
            StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
        )),
        Action::Reset => {
            conn.reset();
            Some(plain(StatusCode::SERVICE_UNAVAILABLE))
        }
        Action::Timeout(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Some(plain(StatusCode::GATEWAY_TIMEOUT))
        }
        Action::BlackHole => Some(hold(edge, conn, &d.hit.drill).await),
        _ => None,
    }
}

fn outcome(edge: &Edge, route: &CompiledRoute, error: bool) {
    if error {
        edge.errors.fetch_add(1, Ordering::Relaxed);
    }
    let ended = {
        let mut a = edge.active.lock().expect("active lock");
        let before = a.len();
        a.outcome(&route.route.kind, error);
        a.len() != before
    };
    if ended {
        edge.changed.send_modify(|v| *v += 1);
        edge.outbox.notify_one();
    }
}

async fn handle(
    State(edge): State<Arc<Edge>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    req: Request,
) -> Response {
    edge.requests.fetch_add(1, Ordering::Relaxed);
    let route = edge
        .routes
        .iter()
        .find(|r| r.matches(req.method().as_str(), req.uri().path()));
    let armed = route.is_some() && !edge.active.lock().expect("active lock").is_empty();
    let (parts, body) = req.into_parts();
    let Some(route) = route.filter(|_| armed) else {
        return match send(&edge, &parts, conn.peer, body, true).await {
            Ok(up) => {
                if up.status.is_server_error() {
                    edge.errors.fetch_add(1, Ordering::Relaxed);
                }
                streamed(up)
            }
            Err(r) => {
                edge.errors.fetch_add(1, Ordering::Relaxed);
                r
            }
        };
    };
    let bytes = match axum::body::to_bytes(body, edge.cfg.body_bytes_max).await {
        Ok(b) => b,
        Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE),
    };
    let mut throttle = None;
    let mut body_out = bytes.clone();
    let mut duplicate = None;
    if route.route.side == BodySide::Request {
        if let Some(d) = decide(&edge, route, BodySide::Request, &bytes).await {
            if let Some(r) = answer_instead(&edge, &conn, &d).await {
                return r;
            }
            match d.action {
                Action::Replace(v) => body_out = serde_json::to_vec(&v).expect("JSON").into(),
                Action::Duplicate(v) => {
                    duplicate = Some(Bytes::from(serde_json::to_vec(&v).expect("JSON")))
                }
                // The upstream never sees it; the client is told it was accepted.
                Action::Drop => {
                    return (
                        StatusCode::ACCEPTED,
                        [(header::CONTENT_TYPE, "application/json")],
                        "{}",
                    )
                        .into_response()
                }
                Action::Delay(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                Action::Throttle(bps) => throttle = Some(bps),
                _ => {}
            }
        }
    }
    let up = match send(&edge, &parts, conn.peer, Body::from(body_out), false).await {
        Ok(up) => up,
        Err(r) => {
            outcome(&edge, route, true);
            return r;
        }
    };
    outcome(&edge, route, up.status.is_server_error());
    if let Some(copy) = duplicate {
        // The resend under a new record id; its answer is the upstream's business.
        if let Err(r) = send(&edge, &parts, conn.peer, Body::from(copy), false).await {
            tracing::warn!(status = %r.status(), "the duplicate could not be sent");
        }
    }
    if route.route.side == BodySide::Request && throttle.is_none() {
        return streamed(up);
    }
    let (status, headers) = (up.status, up.headers.clone());
    let mut resp = match read_whole(&edge, up.body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if route.route.side == BodySide::Response {
        if let Some(d) = decide(&edge, route, BodySide::Response, &resp).await {
            if let Some(r) = answer_instead(&edge, &conn, &d).await {
                return r;
            }
            match d.action {
                Action::Replace(v) => resp = serde_json::to_vec(&v).expect("JSON").into(),
                Action::Drop => return plain(StatusCode::BAD_GATEWAY),
                Action::Delay(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                Action::Throttle(bps) => throttle = Some(bps),
                _ => {}
            }
        }
    }
    match throttle {
        Some(bps) => {
            let mut headers = headers;
            headers.remove(header::CONTENT_LENGTH);
            let mut r = Response::new(throttled(resp, bps));
            *r.status_mut() = status;
            *r.headers_mut() = headers;
            r
        }
        None => whole(status, headers, resp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("host", "a"),
            ("content-length", "3"),
            ("authorization", "Bearer x"),
            ("x-trace", "t"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let out = end_to_end(&h, false);
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 2);
        assert!(names.contains(&"authorization") && names.contains(&"x-trace"));
        assert!(end_to_end(&h, true).contains_key("content-length"));
    }

    #[test]
    fn keys_are_read_from_strings_and_numbers() {
        let b = serde_json::json!({"biz_id": "ORD-1", "n": 42, "a": {"b": "x"}});
        assert_eq!(key_at(&b, "biz_id"), "ORD-1");
        assert_eq!(key_at(&b, "n"), "42");
        assert_eq!(key_at(&b, "a.b"), "x");
        assert_eq!(key_at(&b, "missing"), "");
    }
}
