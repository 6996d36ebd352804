//! The control plane's routes: sessions, tokens, users, four-eyes approvals, the kill
//! switch and the audit log. Access decisions are in the route table (`api.rs`); what is
//! checked here is what the table cannot express: that an approver is not the requester
//! and holds the permission of the action approved.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use steadfast_store::control::{ApprovalRow, AuditFilter, AuditRecord, TokenRow, UserRow};
use steadfast_store::{ControlError, ControlStore};
use utoipa::ToSchema;

use crate::api::{append_audit, ApiError, AuditNote, ErrorBody, Shared, Source};
use crate::auth::{self, Caller, Permission, Role, TokenKind, TokenSpec};
use crate::pipeline::wall_ms;

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        match e {
            ControlError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            ControlError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            ControlError::Full(m) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "limit_reached", m).retry(60)
            }
            e @ (ControlError::Sql(_) | ControlError::Io(_)) => {
                ApiError::internal("the control store failed", e)
            }
        }
    }
}

/// Runs `f` on the control store on a blocking thread.
pub(crate) async fn with_control<T: Send + 'static, E: Into<ApiError> + Send + 'static>(
    s: &Shared,
    f: impl FnOnce(&mut ControlStore) -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError> {
    let control = s.control.clone();
    tokio::task::spawn_blocking(move || f(&mut control.lock().expect("control store lock")))
        .await
        .map_err(|e| ApiError::internal("the control store task failed", e))?
        .map_err(Into::into)
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text()))
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_body", message)
}

/// Why an action is taken; recorded in the audit log.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    pub reason: String,
}

fn reason(b: Result<Json<Reason>, JsonRejection>) -> Result<String, ApiError> {
    let r = body(b)?.reason;
    if r.trim().is_empty() {
        return Err(bad("`reason` must say why"));
    }
    Ok(r)
}

// ---- sessions ------------------------------------------------------------------------

/// A local user's credentials.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub user: String,
    pub password: String,
}

/// Signs a local user in: answers a session token with the user's role and scope.
#[utoipa::path(post, path = "/api/v1/sessions", request_body = Login,
    responses((status = 201, description = "session token (shown once)"), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn login(
    State(s): State<Shared>,
    Source(source): Source,
    b: Result<Json<Login>, JsonRejection>,
) -> Result<Response, ApiError> {
    let login = body(b)?;
    let ip = source
        .parse()
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    if !s.auth.login_allowed(ip) {
        s.metrics.auth_denied("rate_limited");
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many sign-in attempts from this address",
        )
        .retry(60));
    }
    let name = login.user.clone();
    let user = with_control(&s, move |c| c.user(&name)).await?;
    let password = login.password;
    let verified = match user {
        Some(u) if u.disabled_at.is_none() => {
            let phc = u.password_phc.clone();
            // argon2 is deliberately slow: keep it off the async workers.
            let ok = tokio::task::spawn_blocking(move || auth::check_password(&password, &phc))
                .await
                .unwrap_or(false);
            ok.then_some(u)
        }
        _ => None,
    };
    let now = wall_ms();
    let mut rec = AuditRecord {
        at: now,
        actor: login.user.clone(),
        action: "session.create".into(),
        target: format!("user {}", login.user),
        source,
        result: "401 unauthorized".into(),
        approver: None,
        detail: json!({ "route": "POST /api/v1/sessions" }).to_string(),
    };
    let Some(user) = verified else {
        s.metrics.auth_denied("bad_credentials");
        append_audit(&s, rec).await?;
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong user name or password",
        ));
    };
    let spec = TokenSpec {
        subject: user.name.clone(),
        name: "session".into(),
        role: user.role.clone(),
        links: user.links.clone(),
        services: user.services.clone(),
        site: None,
        expires_in_secs: Some(s.cfg.auth.session_secs),
        rate_per_sec: None,
        body_bytes_max: None,
    };
    let (row, text) = auth::token_row(
        &spec,
        TokenKind::Session,
        &user.name,
        now,
        s.cfg.auth.session_secs,
    )
    .map_err(|e| ApiError::internal("the session token could not be made", e))?;
    let stored = row.clone();
    with_control(&s, move |c| c.insert_token(&stored)).await?;
    rec.result = "201".into();
    rec.detail = json!({ "route": "POST /api/v1/sessions", "token": row.id }).to_string();
    append_audit(&s, rec).await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "token": text, "id": row.id, "role": row.role, "expires_at": row.expires_at }),
        ),
    )
        .into_response())
}

/// Signs out: revokes the token the request carries.
#[utoipa::path(delete, path = "/api/v1/sessions", responses((status = 200, description = "revoked")), security(("token" = [])))]
pub async fn logout(State(s): State<Shared>, caller: Caller) -> Result<Response, ApiError> {
    let id = caller.token_id.clone();
    let now = wall_ms();
    with_control(&s, move |c| c.revoke_token(&id, now)).await?;
    s.auth.forget(&caller.token_id);
    Ok(AuditNote {
        action: Some("session.revoke".into()),
        target: Some(format!("token {}", caller.token_id)),
        ..Default::default()
    }
    .attach(Json(json!({ "revoked": caller.token_id })).into_response()))
}

/// Who the token speaks for, its role, scope and what it may do.
#[utoipa::path(get, path = "/api/v1/whoami", responses((status = 200, description = "the caller")), security(("token" = [])))]
pub async fn whoami(caller: Caller) -> Json<Value> {
    Json(json!({
        "subject": caller.subject,
        "token": caller.token_id,
        "role": caller.role.as_str(),
        "scope": caller.scope,
        "source": caller.source,
    }))
}

// ---- tokens --------------------------------------------------------------------------

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TokenQuery {
    /// Include revoked and expired tokens.
    all: Option<bool>,
}

/// Tokens (never their secrets), newest first.
#[utoipa::path(get, path = "/api/v1/tokens", params(TokenQuery), responses((status = 200, description = "tokens")), security(("token" = [])))]
pub async fn list_tokens(
    State(s): State<Shared>,
    q: Result<Query<TokenQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<TokenRow>>, ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let now = wall_ms();
    let all = q.all.unwrap_or(false);
    Ok(Json(with_control(&s, move |c| c.tokens(all, now)).await?))
}

/// Creates a token; its text is in this answer only (it is stored hashed).
#[utoipa::path(post, path = "/api/v1/tokens", request_body = TokenSpec,
    responses((status = 201, description = "the token, shown once"), (status = 400, body = ErrorBody)), security(("token" = [])))]
pub async fn create_token(
    State(s): State<Shared>,
    caller: Caller,
    b: Result<Json<TokenSpec>, JsonRejection>,
) -> Result<Response, ApiError> {
    let spec = body(b)?;
    for l in &spec.links {
        if s.pipeline.rules.link(l).is_none() {
            return Err(bad(format!("unknown fund link {l:?}")));
        }
    }
    let (row, text) = auth::token_row(
        &spec,
        TokenKind::Api,
        &caller.subject,
        wall_ms(),
        s.cfg.auth.token_lifetime_secs_default,
    )
    .map_err(bad)?;
    let stored = row.clone();
    with_control(&s, move |c| c.insert_token(&stored)).await?;
    let note = AuditNote {
        action: Some("token.create".into()),
        target: Some(format!("token {}", row.id)),
        detail: json!({ "subject": row.subject, "role": row.role, "links": row.links, "services": row.services, "site": row.site, "expires_at": row.expires_at }),
        approver: None,
    };
    let mut out = serde_json::to_value(&row).expect("token rows serialize");
    out["token"] = text.into();
    Ok(note.attach((StatusCode::CREATED, Json(out)).into_response()))
}

/// Revokes a token at once.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", params(("id" = String, Path)),
    responses((status = 200, description = "revoked"), (status = 404, body = ErrorBody)), security(("token" = [])))]
pub async fn revoke_token(
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let now = wall_ms();
    let key = id.clone();
    let row = with_control(&s, move |c| c.revoke_token(&key, now)).await?;
    s.auth.forget(&id);
    Ok(AuditNote {
        action: Some("token.revoke".into()),
        target: Some(format!("token {id}")),
        detail: json!({ "subject": row.subject, "role": row.role }),
        approver: None,
    }
    .attach(Json(row).into_response()))
}

// ---- users ---------------------------------------------------------------------------

/// A local user for signing in to the dashboard.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub name: String,
    pub password: String,
    pub role: String,
    #[serde(default)]
    pub links: Vec<String>,
    #[serde(default)]
    pub services: Vec<String>,
}

/// Builds a user row, hashing the password with argon2; a readable error otherwise.
pub fn user_row(u: NewUser, created_by: &str, now: i64) -> Result<UserRow, String> {
    let role = Role::parse(&u.role).ok_or_else(|| format!("unknown role {:?}", u.role))?;
    if role == Role::Beacon {
        return Err("a user cannot have the beacon role".into());
    }
    let name = u.name.trim();
    let name_ok = !name.is_empty()
        && name.len() <= auth::NAME_LEN_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c));
    if !name_ok {
        return Err(format!(
            "a user name is 1 to {} characters of letters, digits and . _ @ -",
            auth::NAME_LEN_MAX
        ));
    }
    Ok(UserRow {
        name: name.into(),
        role: role.as_str().into(),
        links: u.links,
        services: u.services,
        created_at: now,
        created_by: created_by.into(),
        disabled_at: None,
        password_phc: auth::hash_password(&u.password)?,
    })
}

/// Local users (never their password hashes).
#[utoipa::path(get, path = "/api/v1/users", responses((status = 200, description = "users")), security(("token" = [])))]
pub async fn list_users(State(s): State<Shared>) -> Result<Json<Vec<UserRow>>, ApiError> {
    Ok(Json(with_control(&s, |c| c.users()).await?))
}

/// Creates a local user (password hashed with argon2).
#[utoipa::path(post, path = "/api/v1/users", request_body = NewUser,
    responses((status = 201, description = "created"), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)), security(("token" = [])))]
pub async fn create_user(
    State(s): State<Shared>,
    caller: Caller,
    b: Result<Json<NewUser>, JsonRejection>,
) -> Result<Response, ApiError> {
    let u = body(b)?;
    let by = caller.subject.clone();
    let row = tokio::task::spawn_blocking(move || user_row(u, &by, wall_ms()))
        .await
        .map_err(|e| ApiError::internal("the password task failed", e))?
        .map_err(bad)?;
    let stored = row.clone();
    with_control(&s, move |c| c.insert_user(&stored)).await?;
    Ok(AuditNote {
        action: Some("user.create".into()),
        target: Some(format!("user {}", row.name)),
        detail: json!({ "role": row.role, "links": row.links, "services": row.services }),
        approver: None,
    }
    .attach((StatusCode::CREATED, Json(row)).into_response()))
}

/// Disables a user and revokes its sessions.
#[utoipa::path(delete, path = "/api/v1/users/{name}", params(("name" = String, Path)),
    responses((status = 200, description = "disabled"), (status = 404, body = ErrorBody)), security(("token" = [])))]
pub async fn disable_user(
    State(s): State<Shared>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let now = wall_ms();
    let key = name.clone();
    let row = with_control(&s, move |c| c.disable_user(&key, now)).await?;
    Ok(AuditNote {
        action: Some("user.disable".into()),
        target: Some(format!("user {name}")),
        ..Default::default()
    }
    .attach(Json(row).into_response()))
}

// ---- four-eyes approvals -------------------------------------------------------------

/// The permission an approver of `action` must hold besides `Approve`.
fn permission_of(action: &str) -> Option<Permission> {
    Some(match action {
        "killswitch.release" => Permission::KillSwitchRelease,
        "drill.lossy" => Permission::DrillLossy,
        "correction" => Permission::Correction,
        "runbook.execute" => Permission::RunbookExecute,
        "rules.change" => Permission::Admin,
        _ => return None,
    })
}

/// Who may decide a four-eyes request for `action`, in words: the roles holding both
/// `approve` and the action's own permission, and never the requester.
pub(crate) fn approver_text(action: &str) -> String {
    let roles: Vec<&str> = match permission_of(action) {
        Some(p) => crate::auth::Role::ALL
            .into_iter()
            .filter(|r| r.permits(Permission::Approve) && r.permits(p))
            .map(|r| r.as_str())
            .collect(),
        None => Vec::new(),
    };
    if roles.is_empty() {
        "no role may approve it".into()
    } else {
        format!("a different person with the role {}", roles.join(" or "))
    }
}

pub(crate) fn needs_approval(s: &Shared, action: &str) -> bool {
    s.cfg.approvals.required.iter().any(|a| a == action)
}

/// Records a four-eyes request and answers 202 with it.
pub(crate) async fn request_approval(
    s: &Shared,
    caller: &Caller,
    action: &str,
    target: &str,
    params: Value,
    reason: String,
) -> Result<Response, ApiError> {
    let row = file_approval(s, &caller.subject, action, target, params, reason).await?;
    let id = row.id;
    Ok(AuditNote {
        action: Some(format!("{action}.request")),
        target: Some(target.into()),
        detail: json!({ "approval": id, "reason": row.reason }),
        approver: None,
    }
    .attach(
        (
            StatusCode::ACCEPTED,
            Json(json!({ "pending_approval": row })),
        )
            .into_response(),
    ))
}

/// Stores a four-eyes request on `requester`'s name (a drill files its own correction
/// request on the name of the person who started it).
pub(crate) async fn file_approval(
    s: &Shared,
    requester: &str,
    action: &str,
    target: &str,
    params: Value,
    reason: String,
) -> Result<ApprovalRow, ApiError> {
    let now = wall_ms();
    let row = ApprovalRow {
        id: 0,
        action: action.into(),
        target: target.into(),
        params,
        reason,
        requested_by: requester.into(),
        requested_at: now,
        expires_at: now + s.cfg.approvals.ttl_secs as i64 * 1000,
        status: "pending".into(),
        decided_by: None,
        decided_at: None,
        decision_reason: None,
        result: None,
    };
    let stored = row.clone();
    let id = with_control(s, move |c| c.request_approval(&stored)).await?;
    Ok(ApprovalRow { id, ..row })
}

/// The drill an approval's parameters name.
fn drill_param(params: &Value) -> Result<String, ApiError> {
    params["drill"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| ApiError::internal("an approval names no drill", params.to_string()))
}

/// Runs an action once it may run (approved, or not under four-eyes).
async fn run_action(
    s: &Shared,
    action: &str,
    params: &Value,
    by: &str,
    approver: Option<&str>,
    approval: Option<u64>,
    reason: &str,
) -> Result<Value, ApiError> {
    match action {
        "killswitch.release" => set_killswitch(s, false, by, reason).await,
        "drill.lossy" => crate::drills::start_approved(s, &drill_param(params)?, by).await,
        "correction" => {
            crate::lossy::book_corrections(s, &drill_param(params)?, by, approver).await
        }
        "runbook.execute" => {
            crate::runbooks::execute_approved(s, params, by, approver, approval, reason).await
        }
        other => Err(ApiError::internal(
            "an approved action has no executor",
            format!("action {other}"),
        )),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ApprovalQuery {
    /// pending, approved, rejected, expired or failed.
    status: Option<String>,
}

/// Four-eyes requests, newest first.
#[utoipa::path(get, path = "/api/v1/approvals", params(ApprovalQuery), responses((status = 200, description = "approvals")), security(("token" = [])))]
pub async fn list_approvals(
    State(s): State<Shared>,
    q: Result<Query<ApprovalQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<ApprovalRow>>, ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let now = wall_ms();
    Ok(Json(
        with_control(&s, move |c| c.approvals(q.status.as_deref(), now)).await?,
    ))
}

/// A decision's optional reason.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    reason: Option<String>,
}

async fn decide(
    s: &Shared,
    caller: &Caller,
    id: u64,
    approve: bool,
    decision: Decision,
) -> Result<Response, ApiError> {
    let row = with_control(s, move |c| c.approval(id))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("approval {id} does not exist"),
            )
        })?;
    let note = |extra: Value| AuditNote {
        action: Some(format!(
            "{}.{}",
            row.action,
            if approve { "approve" } else { "reject" }
        )),
        target: Some(format!("approval {id}")),
        detail: json!({ "requested_by": row.requested_by, "reason": decision.reason, "outcome": extra }),
        approver: approve.then(|| caller.subject.clone()),
    };
    if approve && row.requested_by == caller.subject {
        let err = ApiError::new(
            StatusCode::FORBIDDEN,
            "same_person",
            format!(
                "{} requested this; a different person must approve it",
                row.requested_by
            ),
        );
        return Ok(note(Value::Null).attach(err.into_response()));
    }
    let needed = permission_of(&row.action).ok_or_else(|| {
        ApiError::internal("an approval names an unknown action", row.action.clone())
    })?;
    if !caller.role.permits(needed) {
        let err = ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "the {} role may not decide {} (it needs {needed:?})",
                caller.role.as_str(),
                row.action
            ),
        );
        return Ok(note(Value::Null).attach(err.into_response()));
    }
    let by = caller.subject.clone();
    let why = decision.reason.clone();
    let status = if approve { "approved" } else { "rejected" };
    let decided = with_control(s, move |c| {
        c.decide_approval(id, status, &by, why.as_deref(), wall_ms())
    })
    .await?;
    if !approve {
        return Ok(note(Value::Null).attach(Json(decided).into_response()));
    }
    let ran = run_action(
        s,
        &row.action,
        &row.params,
        &row.requested_by,
        Some(&caller.subject),
        Some(id),
        &row.reason,
    )
    .await;
    let (ok, outcome) = match &ran {
        Ok(v) => (true, v.to_string()),
        Err(e) => (false, format!("{e:?}")),
    };
    let result = outcome.clone();
    let stored = with_control(s, move |c| c.approval_result(id, ok, &result)).await?;
    // The action itself, on the requester's name with the approver beside it.
    append_audit(
        s,
        AuditRecord {
            at: wall_ms(),
            actor: row.requested_by.clone(),
            action: row.action.clone(),
            target: row.target.clone(),
            source: caller.source.clone(),
            result: if ok { "done".into() } else { "failed".into() },
            approver: Some(caller.subject.clone()),
            detail: json!({ "approval": id, "reason": row.reason }).to_string(),
        },
    )
    .await?;
    ran?;
    Ok(note(json!(ok)).attach(Json(stored).into_response()))
}

/// Approves another person's request and runs the action. The approver must not be the
/// requester and must hold the action's permission.
#[utoipa::path(post, path = "/api/v1/approvals/{id}/approve", params(("id" = u64, Path)),
    responses((status = 200, description = "approved and run"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("token" = [])))]
pub async fn approve(
    State(s): State<Shared>,
    caller: Caller,
    Path(id): Path<u64>,
    b: Option<Json<Decision>>,
) -> Result<Response, ApiError> {
    decide(
        &s,
        &caller,
        id,
        true,
        b.map(|Json(d)| d).unwrap_or_default(),
    )
    .await
}

/// Rejects a request; the action does not run.
#[utoipa::path(post, path = "/api/v1/approvals/{id}/reject", params(("id" = u64, Path)),
    responses((status = 200, description = "rejected"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("token" = [])))]
pub async fn reject(
    State(s): State<Shared>,
    caller: Caller,
    Path(id): Path<u64>,
    b: Option<Json<Decision>>,
) -> Result<Response, ApiError> {
    decide(
        &s,
        &caller,
        id,
        false,
        b.map(|Json(d)| d).unwrap_or_default(),
    )
    .await
}

// ---- the kill switch -----------------------------------------------------------------

const KILLSWITCH_KEY: &str = "killswitch";

/// The kill switch's state: engaged, it stops every running drill and refuses new ones.
#[derive(Serialize, Deserialize, Default, Clone)]
pub struct KillSwitch {
    pub engaged: bool,
    pub since: Option<i64>,
    pub by: Option<String>,
    pub reason: Option<String>,
}

/// Reads the kill switch from the control store (drills consult this before starting).
pub fn killswitch_state(c: &ControlStore) -> Result<KillSwitch, ControlError> {
    Ok(c.setting(KILLSWITCH_KEY)?
        .and_then(|v| serde_json::from_str(&v).ok())
        .unwrap_or_default())
}

async fn set_killswitch(
    s: &Shared,
    engaged: bool,
    by: &str,
    reason: &str,
) -> Result<Value, ApiError> {
    let state = KillSwitch {
        engaged,
        since: Some(wall_ms()),
        by: Some(by.into()),
        reason: Some(reason.into()),
    };
    let text = serde_json::to_string(&state).expect("kill switch serializes");
    with_control(s, move |c| c.set_setting(KILLSWITCH_KEY, &text)).await?;
    // Proxies learn of it on their long poll at once.
    s.proxies.bump();
    Ok(serde_json::to_value(state).expect("kill switch serializes"))
}

/// The kill switch.
#[utoipa::path(get, path = "/api/v1/killswitch", responses((status = 200, description = "state")), security(("token" = [])))]
pub async fn killswitch(State(s): State<Shared>) -> Result<Json<KillSwitch>, ApiError> {
    Ok(Json(with_control(&s, |c| killswitch_state(c)).await?))
}

/// Pulls the kill switch: every drill stops and none starts until it is released. Never
/// needs approval.
#[utoipa::path(post, path = "/api/v1/killswitch", request_body = Reason,
    responses((status = 200, description = "engaged"), (status = 400, body = ErrorBody)), security(("token" = [])))]
pub async fn pull_killswitch(
    State(s): State<Shared>,
    caller: Caller,
    b: Result<Json<Reason>, JsonRejection>,
) -> Result<Response, ApiError> {
    let why = reason(b)?;
    let mut state = set_killswitch(&s, true, &caller.subject, &why).await?;
    // Engaged first, so that a drill that looks now sees it; then tell the running ones.
    s.drills.stop_all();
    // Return only once every live proxy has applied it (or say which did not).
    let v = s.proxies.version();
    state["proxies"] = serde_json::to_value(
        s.proxies
            .wait_applied(
                v,
                std::time::Duration::from_millis(crate::lossy::KILL_ACK_WAIT_MS),
            )
            .await,
    )
    .expect("acks serialize");
    Ok(AuditNote {
        action: Some("killswitch.pull".into()),
        target: Some("killswitch".into()),
        detail: json!({ "reason": why }),
        approver: None,
    }
    .attach(Json(state).into_response()))
}

/// Releases the kill switch; under four-eyes (the default) this records a request that a
/// second person approves.
#[utoipa::path(delete, path = "/api/v1/killswitch", request_body = Reason,
    responses((status = 200, description = "released"), (status = 202, description = "approval requested"), (status = 400, body = ErrorBody)),
    security(("token" = [])))]
pub async fn release_killswitch(
    State(s): State<Shared>,
    caller: Caller,
    b: Result<Json<Reason>, JsonRejection>,
) -> Result<Response, ApiError> {
    let why = reason(b)?;
    if needs_approval(&s, "killswitch.release") {
        return request_approval(
            &s,
            &caller,
            "killswitch.release",
            "killswitch",
            json!({}),
            why,
        )
        .await;
    }
    let state = run_action(
        &s,
        "killswitch.release",
        &Value::Null,
        &caller.subject,
        None,
        None,
        &why,
    )
    .await?;
    Ok(AuditNote {
        action: Some("killswitch.release".into()),
        target: Some("killswitch".into()),
        detail: json!({ "reason": why }),
        approver: None,
    }
    .attach(Json(state).into_response()))
}

// ---- the audit log -------------------------------------------------------------------

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Entries after this sequence number (cursor paging).
    after_seq: Option<u64>,
    actor: Option<String>,
    action: Option<String>,
    /// Only entries about this target, e.g. `drill d-42`.
    target: Option<String>,
    /// `oldest` first (default, for paging with `after_seq`) or `newest` first.
    order: Option<String>,
    limit: Option<usize>,
    /// `json` (default) or `jsonl` (one entry per line, for a SIEM).
    format: Option<String>,
}

/// Audit entries in order, with their hashes.
#[utoipa::path(get, path = "/api/v1/audit", params(AuditQuery), responses((status = 200, description = "entries")), security(("token" = [])))]
pub async fn list_audit(
    State(s): State<Shared>,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let newest_first = crate::api::newest_first(q.order.as_deref())?;
    let filter = AuditFilter {
        after_seq: q.after_seq.unwrap_or(0),
        actor: q.actor,
        action: q.action,
        target: q.target,
        newest_first,
        limit: q.limit.unwrap_or(100),
    };
    let entries = with_control(&s, move |c| c.audit(&filter)).await?;
    match q.format.as_deref() {
        None | Some("json") => Ok(Json(entries).into_response()),
        Some("jsonl") => {
            let mut text = String::new();
            for e in &entries {
                text += &serde_json::to_string(e).expect("audit entries serialize");
                text.push('\n');
            }
            Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], text).into_response())
        }
        Some(f) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("unknown format {f:?} (json or jsonl)"),
        )),
    }
}

/// Checks the whole audit chain and names the first entry that does not hold.
#[utoipa::path(get, path = "/api/v1/audit/verify", responses((status = 200, description = "the check")), security(("token" = [])))]
pub async fn verify_audit(State(s): State<Shared>) -> Result<Json<Value>, ApiError> {
    // A connection of its own: a long chain must not hold up token checks meanwhile.
    let dir = s.cfg.data_dir.clone();
    let check = tokio::task::spawn_blocking(move || ControlStore::open(&dir)?.verify_audit())
        .await
        .map_err(|e| ApiError::internal("the audit check failed", e))??;
    Ok(Json(json!({
        "ok": check.fault.is_none(),
        "entries": check.entries,
        "head_seq": check.head_seq,
        "fault": check.fault,
    })))
}

/// Creates a local user directly in a data directory (the local operator's path, like
/// `create_local_token`); audited with source `local`.
pub fn create_local_user(
    data_dir: &std::path::Path,
    u: NewUser,
    by: &str,
) -> anyhow::Result<UserRow> {
    let now = wall_ms();
    let row = user_row(u, by, now).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut store = ControlStore::open(data_dir)?;
    store.insert_user(&row)?;
    store.append_audit(AuditRecord {
        at: now,
        actor: by.into(),
        action: "user.create".into(),
        target: format!("user {}", row.name),
        source: "local".into(),
        result: "created".into(),
        approver: None,
        detail: json!({ "role": row.role, "links": row.links, "services": row.services })
            .to_string(),
    })?;
    Ok(row)
}
