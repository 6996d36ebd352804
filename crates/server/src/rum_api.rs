//! Digital experience: the browser agent (`GET /rum.js`), its beacons (`POST /v1/rum`,
//! with a publishable `beacon` key whose site must be the page's `Origin`; CORS), and the
//! same events from apps (`POST /v1/app-events`, an ingest token).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::api::{ApiError, Shared};
use crate::auth::Caller;

const AGENT: &str = include_str!("../assets/rum.js");

/// The browser agent.
#[utoipa::path(get, path = "/rum.js", responses((status = 200, description = "the agent (JavaScript)")))]
pub async fn agent() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        AGENT,
    )
        .into_response()
}

fn cors(origin: Option<&HeaderValue>, mut r: Response) -> Response {
    if let Some(o) = origin {
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o.clone());
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    r
}

/// The CORS preflight of a beacon. It admits any origin to ask; the beacon itself is
/// refused unless its key's site is that origin.
#[utoipa::path(options, path = "/v1/rum", responses((status = 204, description = "preflight answered")))]
pub async fn preflight(headers: HeaderMap) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    cors(headers.get(header::ORIGIN), r)
}

async fn take(s: &Shared, body: Bytes) -> Result<Response, ApiError> {
    let d = tokio::task::spawn_blocking(move || steadfast_chain::rum::decode(&body))
        .await
        .map_err(|e| ApiError::internal("the beacon task failed", e))?
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "bad_beacon", m))?;
    let accepted = d.rows.len();
    crate::chain_api::store_sampled(s, d.rows).await?;
    Ok(
        Json(json!({ "accepted": accepted, "rejected": d.rejected, "message": d.message }))
            .into_response(),
    )
}

/// A beacon of the browser agent: a publishable key, from a page of the key's site.
#[utoipa::path(post, path = "/v1/rum", request_body(content = String, content_type = "application/json"),
    responses((status = 200, description = "stored; events refused on their own counted"), (status = 400, body = crate::api::ErrorBody), (status = 403, body = crate::api::ErrorBody)),
    security(("token" = [])))]
pub async fn beacon(
    State(s): State<Shared>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let origin = headers.get(header::ORIGIN);
    if !caller.beacon_origin_allowed(origin.and_then(|o| o.to_str().ok())) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "bad_origin",
            "a beacon key works only from pages of its site (the Origin header)",
        ));
    }
    Ok(cors(origin, take(&s, body).await?))
}

/// The same events from an app (JSON), with an ingest token.
#[utoipa::path(post, path = "/v1/app-events", request_body(content = String, content_type = "application/json"),
    responses((status = 200, description = "stored"), (status = 400, body = crate::api::ErrorBody)), security(("token" = [])))]
pub async fn app_events(State(s): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    take(&s, body).await
}
