//! The web dashboard's edge: sign-in with a session cookie, and one handler per page that
//! asks the server's own API for its data and hands the answers to `steadfast_web`.
//!
//! Every read and every action goes through the API router itself (an in-process call,
//! no network), under the signed-in person's token. So the dashboard cannot see or do
//! anything its user could not do with `curl`: the same role table, scopes, masking,
//! four-eyes rules, rate limits and audit log apply, and a refusal arrives here as the
//! API's own error, which the page shows.
//!
//! Cross-site requests: the cookie is `HttpOnly; SameSite=Strict` (`Secure` under TLS),
//! and every POST must come from a page of this server (its `Origin`, or failing that
//! its `Referer`, names this host), so another site can neither read nor act through
//! it. Pages send `Content-Security-Policy: default-src 'self'` with no script at all.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{ConnectInfo, Form, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use serde::Deserialize;
use serde_json::{json, Value};
use steadfast_web::layout::{Ctx, Flash, Range};
use steadfast_web::pages;
use tower::ServiceExt;

use crate::pipeline::wall_ms;
use crate::tls::ConnInfo;

/// The session cookie: the signed-in person's API token.
const SESSION_COOKIE: &str = "steadfast_session";
/// The outcome of the last action, shown once by the next page.
const FLASH_COOKIE: &str = "steadfast_flash";
/// The flash cookie's value at most, encoded (browsers keep cookies up to 4 KiB).
const FLASH_BYTES_MAX: usize = 3_500;
/// The largest API answer a page reads (journeys and long break lists are the big ones).
const API_ANSWER_BYTES_MAX: usize = 32 << 20;
/// Breaks listed on one page.
const BREAKS_PAGE_MAX: usize = 200;
/// A drill's breaks read for its live figures (the API's page bound).
const DRILL_BREAKS_MAX: usize = 1000;
/// Audit entries listed on one page.
const AUDIT_PAGE_MAX: usize = 200;
/// How often a running drill's page reloads itself.
const LIVE_REFRESH_SECS: u32 = 2;

/// The drill templates offered on the drills page: the specs shipped in `examples/`.
const TEMPLATES: [(&str, &str); 2] = [
    (
        "bills a cent high (lossless)",
        include_str!("../../../examples/drill-pay-to-bill.toml"),
    ),
    (
        "tampered bills through the proxy (lossy)",
        include_str!("../../../examples/drill-lossy-bills.toml"),
    ),
];

#[derive(Clone)]
pub(crate) struct Dash {
    /// The API router (with its guard): where every page's data and action goes.
    api: Router,
    /// Cookies are marked `Secure` when the server speaks TLS.
    secure: bool,
}

/// The dashboard's routes, to be merged beside the API's.
pub(crate) fn router(api: Router, secure: bool) -> Router {
    let d = Dash { api, secure };
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/assets/app.css", get(stylesheet))
        .route("/ui/signin", get(signin_page).post(signin))
        .route("/ui/signout", post(signout))
        .route("/ui/", get(overview))
        .route("/ui/breaks", get(breaks))
        .route("/ui/breaks/{id}", get(break_detail))
        .route("/ui/breaks/{id}/status", post(break_status))
        .route("/ui/drills", get(drills).post(drill_create))
        .route("/ui/drills/{id}", get(drill_detail))
        .route("/ui/drills/{id}/{action}", post(drill_action))
        .route("/ui/killswitch", get(killswitch_page))
        .route("/ui/killswitch/{action}", post(killswitch_change))
        .route("/ui/services", get(services))
        .route("/ui/services/{name}", get(service))
        .route("/ui/journeys", get(journeys))
        .route("/ui/incidents", get(incidents))
        .route("/ui/incidents/{id}", get(incident))
        .route("/ui/runbooks/{name}/execute", post(runbook_execute))
        .route("/ui/approvals", get(approvals))
        .route("/ui/approvals/{id}/{decision}", post(approval_decide))
        .route("/ui/audit", get(audit))
        .layer(axum::middleware::from_fn(same_origin_posts))
        .layer(axum::middleware::map_response(security_headers))
        .layer(axum::middleware::from_fn(server_timing))
        .with_state(d)
}

/// `Server-Timing: page;dur=…`: the time to gather and render a page (its body is whole
/// before it is answered), shown by browsers' developer tools and read by the benchmark.
async fn server_timing(req: Request, next: axum::middleware::Next) -> Response {
    let started = std::time::Instant::now();
    let mut resp = next.run(req).await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(v) = HeaderValue::from_str(&format!("page;dur={ms:.1}")) {
        resp.headers_mut().insert("server-timing", v);
    }
    resp
}

async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'none'; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        steadfast_web::STYLESHEET,
    )
        .into_response()
}

// ---- calling the API -----------------------------------------------------------------

/// An API answer: its status and JSON body (`null` when it had none or was not JSON).
pub(crate) struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    fn ok(&self) -> bool {
        self.status.is_success()
    }

    /// The body of a successful answer, or `null`.
    fn value(self) -> Value {
        if self.ok() {
            self.body
        } else {
            Value::Null
        }
    }

    /// What to tell the user about a refused or failed call.
    fn refusal(&self) -> String {
        let msg = self.body["message"].as_str().unwrap_or("no detail given");
        match self.status {
            StatusCode::FORBIDDEN => format!("Refused: {msg}"),
            StatusCode::UNAUTHORIZED => format!("Not signed in: {msg}"),
            StatusCode::TOO_MANY_REQUESTS => format!("Too many requests, try again shortly: {msg}"),
            s => format!("Failed ({}): {msg}", s.as_u16()),
        }
    }
}

/// One signed-in request: the token and where the request came from (so the API's audit
/// entries and rate limits see the real peer).
struct Session {
    token: String,
    conn: Option<ConnectInfo<ConnInfo>>,
}

impl Dash {
    async fn call(&self, s: &Session, method: Method, uri: &str, body: Option<Value>) -> Answer {
        // A token from a form may hold anything: one that is not header text is refused
        // here, as the API would refuse it.
        let Ok(bearer) = HeaderValue::from_str(&format!("Bearer {}", s.token)) else {
            return Answer {
                status: StatusCode::UNAUTHORIZED,
                body: json!({"message": "that is not a token (tokens are letters, digits and underscores)"}),
            };
        };
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, bearer);
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let built = req.body(match &body {
            Some(b) => Body::from(b.to_string()),
            None => Body::empty(),
        });
        let Ok(mut req) = built else {
            return Answer {
                status: StatusCode::BAD_REQUEST,
                body: json!({"message": "the dashboard built a request it could not send"}),
            };
        };
        if let Some(c) = &s.conn {
            req.extensions_mut().insert(c.clone());
        }
        let resp = match self.api.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = resp.status();
        let body = match axum::body::to_bytes(resp.into_body(), API_ANSWER_BYTES_MAX).await {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            Err(_) => json!({"message": "the answer was larger than the dashboard reads"}),
        };
        Answer { status, body }
    }

    async fn get(&self, s: &Session, uri: &str) -> Answer {
        self.call(s, Method::GET, uri, None).await
    }

    /// What every page shows besides its own data; `None` when the token no longer works.
    async fn ctx(&self, s: &Session, jar: &CookieJar) -> Option<Ctx> {
        let (who, ks, approvals) = tokio::join!(
            self.get(s, "/api/v1/whoami"),
            self.get(s, "/api/v1/killswitch"),
            self.get(s, "/api/v1/approvals?status=pending"),
        );
        if who.status == StatusCode::UNAUTHORIZED {
            return None;
        }
        Some(Ctx {
            subject: who.body["subject"].as_str().unwrap_or("?").to_string(),
            role: who.body["role"].as_str().unwrap_or("?").to_string(),
            killswitch: ks.value(),
            flash: read_flash(jar),
            now_ms: wall_ms(),
            approvals_pending: approvals.body.as_array().map_or(0, |a| a.len()),
            refresh_secs: None,
        })
    }
}

fn session(jar: &CookieJar, conn: Option<ConnectInfo<ConnInfo>>) -> Option<Session> {
    let token = jar.get(SESSION_COOKIE)?.value().to_string();
    (!token.is_empty()).then_some(Session { token, conn })
}

/// Where someone who is not signed in goes: the sign-in page, then back here.
fn to_signin(next: &str) -> Response {
    Redirect::to(&format!("/ui/signin?next={}", encode(next))).into_response()
}

/// A page answer: the rendered page, with the flash cookie cleared once shown.
fn html(jar: CookieJar, markup: maud::Markup) -> Response {
    (
        jar.remove(Cookie::build(FLASH_COOKIE).path("/ui")),
        Html(markup.into_string()),
    )
        .into_response()
}

fn read_flash(jar: &CookieJar) -> Option<Flash> {
    let c = jar.get(FLASH_COOKIE)?;
    let text = percent_decode(c.value());
    let (kind, msg) = text.split_once(':')?;
    Some(match kind {
        "ok" => Flash::Ok(msg.to_string()),
        "pending" => Flash::Pending(msg.to_string()),
        _ => Flash::Error(msg.to_string()),
    })
}

/// After an action: back to `to`, carrying what happened.
fn after(jar: CookieJar, secure: bool, to: &str, flash: Flash) -> Response {
    let (kind, msg) = match &flash {
        Flash::Ok(m) => ("ok", m),
        Flash::Pending(m) => ("pending", m),
        Flash::Error(m) => ("error", m),
    };
    // A browser drops a cookie over 4 KiB: a long message is cut until it fits encoded.
    let mut text = format!("{kind}:{msg}");
    while encode(&text).len() > FLASH_BYTES_MAX {
        let mut cut = text.len() * 9 / 10;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    let cookie = Cookie::build((FLASH_COOKIE, encode(&text)))
        .path("/ui")
        .http_only(true)
        .secure(secure)
        .same_site(SameSite::Strict)
        .build();
    (jar.add(cookie), Redirect::to(to)).into_response()
}

/// The flash for an action's answer: done, waiting for a second person, or refused.
fn outcome(a: &Answer, done: &str) -> Flash {
    if a.status == StatusCode::ACCEPTED && !a.body["pending_approval"].is_null() {
        let p = &a.body["pending_approval"];
        Flash::Pending(format!(
            "Requested: approval #{} of {} by {} is waiting for a second person ({}); it expires at {} UTC. See Approvals.",
            p["id"],
            p["action"].as_str().unwrap_or("?"),
            p["requested_by"].as_str().unwrap_or("?"),
            crate::control_api::approver_text(p["action"].as_str().unwrap_or("")),
            steadfast_web::fmt::time(p["expires_at"].as_i64().unwrap_or(0)),
        ))
    } else if a.ok() {
        Flash::Ok(done.to_string())
    } else {
        Flash::Error(a.refusal())
    }
}

/// POSTs must come from this server's own pages: the `Origin` (or, failing that, the
/// `Referer`) names the host the request was sent to. That host is `Host`, or under
/// HTTP/2 the request's `:authority`, which browsers send instead.
fn same_origin(req: &Request) -> bool {
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let Some(host) = host else {
        return false;
    };
    let names_host = |url: &str| {
        url.strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .map(|rest| rest.split('/').next() == Some(host.as_str()))
            .unwrap_or(false)
    };
    match headers.get(header::ORIGIN).and_then(|h| h.to_str().ok()) {
        Some(origin) => names_host(origin),
        None => headers
            .get(header::REFERER)
            .and_then(|h| h.to_str().ok())
            .is_some_and(names_host),
    }
}

/// Refuses every POST that does not come from one of this server's pages, before any
/// handler (sign-in included) runs.
async fn same_origin_posts(req: Request, next: axum::middleware::Next) -> Response {
    if req.method() == Method::POST && !same_origin(&req) {
        return cross_site();
    }
    next.run(req).await
}

fn cross_site() -> Response {
    (
        StatusCode::FORBIDDEN,
        Html(steadfast_web::pages::control::refused_cross_site().into_string()),
    )
        .into_response()
}

use steadfast_web::fmt::{dec as percent_decode, enc as encode};

/// The common start of a page handler: a session and the page frame, or the way to get one.
macro_rules! signed_in {
    ($d:expr, $jar:expr, $conn:expr, $here:expr) => {{
        let Some(s) = session(&$jar, $conn) else {
            return to_signin(&$here);
        };
        let Some(ctx) = $d.ctx(&s, &$jar).await else {
            return to_signin(&$here);
        };
        (s, ctx)
    }};
}

/// The common start of an action handler (the origin was checked by
/// `same_origin_posts`): a session.
macro_rules! acting {
    ($jar:expr, $conn:expr) => {{
        let Some(s) = session(&$jar, $conn) else {
            return to_signin("/ui/");
        };
        s
    }};
}

// ---- sign-in -------------------------------------------------------------------------

#[derive(Deserialize)]
struct Next {
    next: Option<String>,
}

/// Only a path on this server is a place to go back to.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/ui") && !n.starts_with("//") => n.to_string(),
        _ => "/ui/".to_string(),
    }
}

async fn signin_page(jar: CookieJar, Query(q): Query<Next>) -> Response {
    let next = safe_next(q.next.as_deref());
    html(
        jar.clone(),
        pages::control::signin(&next, read_flash(&jar).as_ref()),
    )
}

#[derive(Deserialize)]
struct SignIn {
    token: Option<String>,
    user: Option<String>,
    password: Option<String>,
    next: Option<String>,
}

async fn signin(
    State(d): State<Dash>,
    Conn(conn): Conn,
    jar: CookieJar,
    Form(f): Form<SignIn>,
) -> Response {
    let next = safe_next(f.next.as_deref());
    let back = format!("/ui/signin?next={}", encode(&next));
    let token = match (f.token.as_deref().map(str::trim), f.user.as_deref()) {
        (Some(t), _) if !t.is_empty() => t.to_string(),
        (_, Some(user)) if !user.trim().is_empty() => {
            let anon = Session {
                token: String::new(),
                conn: conn.clone(),
            };
            let a = d
                .call(
                    &anon,
                    Method::POST,
                    "/api/v1/sessions",
                    Some(json!({"user": user.trim(), "password": f.password.unwrap_or_default()})),
                )
                .await;
            match a.body["token"].as_str() {
                Some(t) if a.ok() => t.to_string(),
                _ => return after(jar, d.secure, &back, Flash::Error(a.refusal())),
            }
        }
        _ => {
            return after(
                jar,
                d.secure,
                &back,
                Flash::Error("Enter a token, or a user name and password".into()),
            )
        }
    };
    // The token must work before it becomes the session.
    let s = Session {
        token: token.clone(),
        conn,
    };
    let who = d.get(&s, "/api/v1/whoami").await;
    if !who.ok() {
        return after(jar, d.secure, &back, Flash::Error(who.refusal()));
    }
    let cookie = Cookie::build((SESSION_COOKIE, token))
        .path("/ui")
        .http_only(true)
        .secure(d.secure)
        .same_site(SameSite::Strict)
        .build();
    after(
        jar.add(cookie),
        d.secure,
        &next,
        Flash::Ok(format!(
            "Signed in as {} ({})",
            who.body["subject"].as_str().unwrap_or("?"),
            who.body["role"].as_str().unwrap_or("?")
        )),
    )
}

async fn signout(State(d): State<Dash>, Conn(conn): Conn, jar: CookieJar) -> Response {
    if let Some(s) = session(&jar, conn) {
        // A session token (from a user's sign-in) ends with it; an API token stays valid
        // and is only forgotten by this browser.
        if s.token.starts_with("sfs_") {
            d.call(&s, Method::DELETE, "/api/v1/sessions", None).await;
        }
    }
    let jar = jar.remove(Cookie::build(SESSION_COOKIE).path("/ui"));
    after(jar, d.secure, "/ui/signin", Flash::Ok("Signed out".into()))
}

// ---- pages ---------------------------------------------------------------------------

type Params = Query<HashMap<String, String>>;

/// The request's peer, handed on to the API calls it makes (absent in tests that call
/// the router without a listener).
struct Conn(Option<ConnectInfo<ConnInfo>>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Conn {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Conn, Self::Rejection> {
        Ok(Conn(
            parts.extensions.get::<ConnectInfo<ConnInfo>>().cloned(),
        ))
    }
}

async fn overview(
    State(d): State<Dash>,
    Conn(conn): Conn,
    jar: CookieJar,
    Query(q): Params,
) -> Response {
    let (s, ctx) = signed_in!(d, jar, conn, "/ui/");
    // The services' health over the last 15 minutes unless another range is chosen.
    let range = Range::parse(
        Some(q.get("range").map_or("15m", String::as_str)),
        ctx.now_ms,
    );
    let map = format!("/api/v1/service-map?since_ms={}", range.from_ms);
    let (status, rules, incidents, drills, map) = tokio::join!(
        d.get(&s, "/api/v1/status"),
        d.get(&s, "/api/v1/rules"),
        d.get(&s, "/api/v1/incidents?state=firing&limit=100"),
        d.get(&s, "/api/v1/drills"),
        d.get(&s, &map),
    );
    let data = pages::overview::Data {
        status: status.value(),
        rules: rules.value(),
        incidents: incidents.value(),
        drills: drills.value(),
        service_map: map.value(),
        range,
    };
    html(jar, pages::overview::render(&ctx, &data))
}

async fn breaks(
    State(d): State<Dash>,
    Conn(conn): Conn,
    jar: CookieJar,
    Query(q): Params,
) -> Response {
    let (s, ctx) = signed_in!(d, jar, conn, "/ui/breaks");
    let mut api = format!("/api/v1/breaks?order=newest&limit={BREAKS_PAGE_MAX}");
    for key in ["rule", "link", "kind", "status", "drill"] {
        if let Some(v) = q.get(key).filter(|v| !v.is_empty()) {
            api.push_str(&format!("&{key}={}", encode(v)));
        }
    }
    let range = q
        .get("range")
        .filter(|r| !r.is_empty() && r.as_str() != "all");
    if let Some(r) = range {
        let from = Range::parse(Some(r), ctx.now_ms).from_ms;
        let since = steadfast_model::format_millis(from);
        api.push_str(&format!("&since={}", encode(&since)));
    }
    let (list, rules) = tokio::join!(d.get(&s, &api), d.get(&s, "/api/v1/rules"));
    let error = (!list.ok()).then(|| list.refusal());
    html(
        jar,
        pages::breaks::list(&ctx, &list.value(), &rules.value(), &q, error.as_deref()),
    )
}

async fn break_detail(
    State(d): State<Dash>,
    Conn(conn): Conn,
    jar: CookieJar,
    Path(id): Path<u64>,
) -> Response {
    let here = format!("/ui/breaks/{id}");
    let (s, ctx) = signed_in!(d, jar, conn, here);
    let a = d.get(&s, &format!("/api/v1/breaks/{id}")).await;
    if !a.ok() {
        return html(jar, pages::control::not_found(&ctx, &a.refusal()));
    }
    html(jar, pages::breaks::detail(&ctx, &a.body))
}

#[derive(Deserialize)]
struct StatusForm {
    status: String,
    reason: String,
}

async fn break_status(
    State(d): State<Dash>,
    Conn(conn): Conn,
    jar: CookieJar,
    Path(id): Path<u64>,
    Form(f): Form<StatusForm>,
) -> Response {
    let s = acting!(jar, conn);
    let a = d
        .call(
            &s,
            Method::POST,
            &format!("/api/v1/breaks/{id}/status"),
            Some(json!({"status": f.status, "reason": f.reason})),
        )
        .await;
    let flash = outcome(&a, &format!("Break {id} is now {}", f.status));
    after(jar, d.secure, &format!("/ui/breaks/{id}"), flash)
}

async fn drills(
    State(d): State<Dash>,
    Conn(conn): Conn,
    jar: CookieJar,
    Query(q): Params,
) -> Response {
    let (s, ctx) = signed_in!(d, jar, conn, "/ui/drills");
    let (list, schedules) = tokio::join!(
        d.get(&s, "/api/v1/drills"),
        d.get(&s, "/api/v1/drill-schedules")
    );
    let templates: Vec<pages::drills::Template> = TEMPLATES
        .iter()
        .map(|(name, spec)| pages::drills::Template { name, spec })
        .collect();
    html(
        jar,
        pages::drills::list(
            &ctx,
            &list.value(),
            &schedules.value(),
            &templates,
            q.get("template").map(String::as_str),
        ),
    )
}

#[derive(Deserialize)]
struct NewDrillForm {
    spec: String,
    pairs: Option<String>,
}

async fn drill_create(
    State(d): State<Dash>,
    Conn(conn): Conn,
    jar: CookieJar,
    Form(f): Form<NewDrillForm>,
) -> Response {
    let s = acting!(jar, conn);
    let pairs = match f.pairs.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
        None => Value::Null,
        Some(p) => match p.parse::<u64>() {
            Ok(n) => json!(n),
            Err(_) => {
                let msg = format!("Pairs must be a whole number, not {p:?}");
                return after(jar, d.secure, "/ui/drills", Flash::Error(msg));
            }
        },
    };
    // A JSON spec goes as an object, anything else as TOML text (the API takes both).
    let spec = serde_json::from_str::<Value>(&f.spec)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| Value::String(f.spec.clone()));
    let a = d
        .call(
            &s,
            Method::POST,
            "/api/v1/drills",
            Some(json!({"spec": spec, "pairs": pairs})),
        )
        .await;
    match a.body["id"].as_str() {
        Some(id) if a.ok() => {
            let to = format!("/ui/drills/{}", encode(id));
            after(
                jar,
                d.secure,
                &to,
                Flash::Ok(format!("Drill {id} created; start it when ready")),
            )
        }
        _ => after(jar, d.secure, "/ui/drills", Flash::Error(a.refusal())),
    }
}

async fn drill_detail(
    State(d): State<Dash>,
    Conn(conn): Conn,
    jar: CookieJar,
    Path(id): Path<String>,
    Query(q): Params,
) -> Response {
    let here = format!("/ui/drills/{}", encode(&id));
    let (s, mut ctx) = signed_in!(d, jar, conn, here);
    let window = q.get("window").map(String::as_str);
    let drill = d.get(&s, &format!("/api/v1/drills/{}", encode(&id))).await;
    if !drill.ok() {
        return html(jar, pages::control::not_found(&ctx, &drill.refusal()));
    }
    let report = format!("/api/v1/drills/{}/report?format=json", encode(&id));
    let found = format!(
        "/api/v1/breaks?drill={}&limit={DRILL_BREAKS_MAX}",
        encode(&id)
    );
    let (report, found) = tokio::join!(d.get(&s, &report), d.get(&s, &found));
    if matches!(drill.body["state"].as_str(), Some("running" | "correcting")) {
        ctx.refresh_secs = Some(LIVE_REFRESH_SECS);
    }
    let report = report.ok().then_some(report.body);
    html(
        jar,
        pages::drills::detail(&ctx, &drill.body, report.as_ref(), &found.value(), window),
    )
}

async fn drill_action(
    State(d): State<Dash>,
    Conn(conn): Conn,
    jar: CookieJar,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    let s = acting!(jar, conn);
    let to = format!("/ui/drills/{}", encode(&id));
    let (uri, done, body) = match action.as_str() {
        "start" => ("start", "Drill started", json!({})),
        "stop" => (
            "stop",
            "Drill stopped",
            json!({"reason": "stopped from the dashboard"}),
        ),
        _ => {
            return after(
                jar,
                d.secure,
                &to,
                Flash::Error(format!("No such drill action {action:?}")),
            )
        }
    };
    let a = d
        .call(
            &s,
            Method::POST,
            &format!("/api/v1/drills/{}/{uri}", encode(&id)),
            Some(body),
        )
        .await;
    after(jar, d.secure, &to, outcome(&a, done))
}

async fn killswitch_page(State(d): State<Dash>, Conn(conn): Conn, jar: CookieJar) -> Response {
    let (_s, ctx) = signed_in!(d, jar, conn, "/ui/killswitch");
    html(jar, pages::control::killswitch(&ctx))
}

#[derive(Deserialize)]
struct ReasonForm {
    reason: String,
}

/// Pulls (`POST /ui/killswitch/pull`) or releases (`.../release`) the kill switch.
async fn killswitch_change(
    State(d): State<Dash>,
    Conn(conn): Conn,
    jar: CookieJar,
    Path(action): Path<String>,
    Form(f): Form<ReasonForm>,
) -> Response {
    let s = acting!(jar, conn);
    let (method, done) = match action.as_str() {
        "pull" => (
            Method::POST,
            "Kill switch engaged: every drill is stopping and none may start",
        ),
        "release" => (
            Method::DELETE,
            "Kill switch released: drills may start again",
        ),
        _ => {
            let msg = format!("No such kill switch action {action:?}");
            return after(jar, d.secure, "/ui/killswitch", Flash::Error(msg));
        }
    };
    let body = Some(json!({"reason": f.reason}));
    let a = d.call(&s, method, "/api/v1/killswitch", body).await;
    // Engaged, but a proxy that did not confirm may still be tampering: say which.
    let unconfirmed: Vec<String> = a.body["proxies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["stopped"] == false)
        .map(|p| p["proxy"].as_str().unwrap_or("?").to_string())
        .collect();
    let flash = if a.ok() && !unconfirmed.is_empty() {
        Flash::Error(format!(
            "Kill switch engaged, but these proxies have not confirmed they stopped: {}. Check them now.",
            unconfirmed.join(", ")
        ))
    } else {
        outcome(&a, done)
    };
    after(jar, d.secure, "/ui/killswitch", flash)
}

async fn services(
    State(d): State<Dash>,
    Conn(conn): Conn,
    jar: CookieJar,
    Query(q): Params,
) -> Response {
    let (s, ctx) = signed_in!(d, jar, conn, "/ui/services");
    let range = Range::parse(q.get("range").map(String::as_str), ctx.now_ms);
    let map = format!("/api/v1/service-map?since_ms={}", range.from_ms);
    let (map, alerts) = tokio::join!(d.get(&s, &map), d.get(&s, "/api/v1/alerts?limit=500"),);
    html(
        jar,
        pages::services::map(&ctx, &map.value(), &alerts.value(), &range),
    )
}

async fn service(
    State(d): State<Dash>,
    Conn(conn): Conn,
    jar: CookieJar,
    Path(name): Path<String>,
    Query(q): Params,
) -> Response {
    let here = format!("/ui/services/{}", encode(&name));
    let (s, ctx) = signed_in!(d, jar, conn, here);
    let range = Range::parse(q.get("range").map(String::as_str), ctx.now_ms);
    let (list, alerts) = tokio::join!(
        d.get(&s, "/api/v1/series"),
        d.get(&s, "/api/v1/alerts?limit=500"),
    );
    let metrics: Vec<String> = list.body["series"]
        .as_array()
        .or(list.body.as_array())
        .into_iter()
        .flatten()
        .filter(|e| e["service"].as_str() == Some(name.as_str()))
        .filter_map(|e| e["metric"].as_str().map(str::to_string))
        .collect();
    let mut series = Vec::with_capacity(metrics.len());
    for m in metrics {
        let a = d
            .get(
                &s,
                &format!(
                    "/api/v1/series?service={}&metric={}",
                    encode(&name),
                    encode(&m)
                ),
            )
            .await;
        series.push((m, a.value()));
    }
    html(
        jar,
        pages::services::service(&ctx, &name, &series, &alerts.value(), &range),
    )
}

async fn journeys(
    State(d): State<Dash>,
    Conn(conn): Conn,
    jar: CookieJar,
    Query(q): Params,
) -> Response {
    let (s, ctx) = signed_in!(d, jar, conn, "/ui/journeys");
    let range = Range::parse(q.get("range").map(String::as_str), ctx.now_ms);
    let user = q.get("user").map(|u| u.trim()).filter(|u| !u.is_empty());
    // The user list and the journey at once: neither waits for the other.
    let users = format!("/api/v1/journeys/users?since_ms={}", range.from_ms);
    let traces = pages::journeys::traces_choice(q.get("traces").map(String::as_str));
    let journey = user.map(|u| {
        format!(
            "/api/v1/journeys?user={}&since_ms={}&limit={traces}",
            encode(u),
            range.from_ms
        )
    });
    let (users, journey) = tokio::join!(d.get(&s, &users), async {
        match &journey {
            Some(path) => Some(d.get(&s, path).await.value()),
            None => None,
        }
    });
    html(
        jar,
        pages::journeys::search(&ctx, &users.value(), user, journey.as_ref(), &range, traces),
    )
}

async fn incidents(State(d): State<Dash>, Conn(conn): Conn, jar: CookieJar) -> Response {
    let (s, ctx) = signed_in!(d, jar, conn, "/ui/incidents");
    let list = d.get(&s, "/api/v1/incidents?limit=200").await;
    html(jar, pages::incidents::list(&ctx, &list.value()))
}

async fn incident(
    State(d): State<Dash>,
    Conn(conn): Conn,
    jar: CookieJar,
    Path(id): Path<String>,
) -> Response {
    let here = format!("/ui/incidents/{}", encode(&id));
    let (s, ctx) = signed_in!(d, jar, conn, here);
    let inc = format!("/api/v1/incidents/{}", encode(&id));
    let (inc, runbooks) = tokio::join!(d.get(&s, &inc), d.get(&s, "/api/v1/runbooks"),);
    if !inc.ok() {
        return html(jar, pages::control::not_found(&ctx, &inc.refusal()));
    }
    html(
        jar,
        pages::incidents::detail(&ctx, &inc.body, &runbooks.value()),
    )
}

async fn runbook_execute(
    State(d): State<Dash>,
    Conn(conn): Conn,
    headers: HeaderMap,
    jar: CookieJar,
    Path(name): Path<String>,
    Form(f): Form<ReasonForm>,
) -> Response {
    let s = acting!(jar, conn);
    let back = headers
        .get(header::REFERER)
        .and_then(|r| r.to_str().ok())
        .and_then(|r| r.find("/ui/").map(|i| r[i..].to_string()))
        .unwrap_or_else(|| "/ui/incidents".into());
    let a = d
        .call(
            &s,
            Method::POST,
            &format!("/api/v1/runbooks/{}/execute", encode(&name)),
            Some(json!({"reason": f.reason})),
        )
        .await;
    after(
        jar,
        d.secure,
        &safe_next(Some(&back)),
        outcome(&a, &format!("Runbook {name} executed")),
    )
}

async fn approvals(State(d): State<Dash>, Conn(conn): Conn, jar: CookieJar) -> Response {
    let (s, ctx) = signed_in!(d, jar, conn, "/ui/approvals");
    let list = d.get(&s, "/api/v1/approvals").await;
    let mut rows = list.value();
    // Who may decide each request, from the role table.
    if let Some(a) = rows.as_array_mut() {
        for r in a {
            let action = r["action"].as_str().unwrap_or("").to_string();
            r["approvers"] = json!(crate::control_api::approver_text(&action));
        }
    }
    html(jar, pages::control::approvals(&ctx, &rows))
}

#[derive(Deserialize)]
struct DecisionForm {
    reason: Option<String>,
}

async fn approval_decide(
    State(d): State<Dash>,
    Conn(conn): Conn,
    jar: CookieJar,
    Path((id, decision)): Path<(u64, String)>,
    Form(f): Form<DecisionForm>,
) -> Response {
    let s = acting!(jar, conn);
    let (verb, done) = match decision.as_str() {
        "approve" => (
            "approve",
            format!("Approval #{id} approved and carried out"),
        ),
        "reject" => ("reject", format!("Approval #{id} rejected")),
        _ => {
            return after(
                jar,
                d.secure,
                "/ui/approvals",
                Flash::Error(format!("No such decision {decision:?}")),
            )
        }
    };
    let body = json!({"reason": f.reason.filter(|r| !r.trim().is_empty())});
    let a = d
        .call(
            &s,
            Method::POST,
            &format!("/api/v1/approvals/{id}/{verb}"),
            Some(body),
        )
        .await;
    after(jar, d.secure, "/ui/approvals", outcome(&a, &done))
}

async fn audit(
    State(d): State<Dash>,
    Conn(conn): Conn,
    jar: CookieJar,
    Query(q): Params,
) -> Response {
    let (s, ctx) = signed_in!(d, jar, conn, "/ui/audit");
    let mut api = format!("/api/v1/audit?order=newest&limit={AUDIT_PAGE_MAX}");
    for key in ["actor", "action", "target"] {
        if let Some(v) = q.get(key).filter(|v| !v.is_empty()) {
            api.push_str(&format!("&{key}={}", encode(v)));
        }
    }
    let a = d.get(&s, &api).await;
    let error = (!a.ok()).then(|| a.refusal());
    html(
        jar,
        pages::control::audit(&ctx, &a.value(), &q, error.as_deref()),
    )
}

/// The dashboard's pages, for the benchmark and the browser test: path and what it shows.
pub const PAGES: [(&str, &str); 8] = [
    ("/ui/", "overview"),
    ("/ui/breaks", "breaks"),
    ("/ui/drills", "drills"),
    ("/ui/services", "service map"),
    ("/ui/journeys", "journeys"),
    ("/ui/incidents", "incidents"),
    ("/ui/approvals", "approvals"),
    ("/ui/audit", "audit log"),
];
