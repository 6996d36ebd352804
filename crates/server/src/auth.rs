//! Access control: roles and the permissions they grant, the access decision every route
//! carries, tokens (minting, verification with a short cache, per-token rate limits),
//! passwords, and scopes.
//!
//! The role table is pure data ([`Role::permits`]); the route table in `api.rs` gives each
//! route an [`Access`]; the `guard` middleware applies both to every request, so a route
//! cannot be reached without a decision.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use steadfast_model::Millis;
use steadfast_store::control::{sha256, TokenRow, TOKENS_LIVE_MAX};
use steadfast_store::ControlStore;
use steadfast_verify::RuleSet;

/// What a role may do. Every route needs exactly one of these (or is public).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Read breaks, rules, status, approvals, the kill switch.
    Read,
    /// Write fund records and telemetry.
    Ingest,
    /// Send browser beacons for one site (publishable keys).
    Beacon,
    /// Acknowledge, assign and resolve breaks.
    BreakWork,
    /// Run lossless drills.
    DrillLossless,
    /// Run lossy drills (tampering with real traffic).
    DrillLossy,
    /// Pull the kill switch. Never needs approval.
    KillSwitchPull,
    /// Release the kill switch.
    KillSwitchRelease,
    /// Correct data after a drill or an incident.
    Correction,
    /// Execute runbooks.
    RunbookExecute,
    /// Approve or reject another person's four-eyes request (the approver must also hold
    /// the permission of the action itself).
    Approve,
    /// Anything a signed-in caller does about its own session (who am I, sign out).
    Session,
    /// Read and verify the audit log.
    Audit,
    /// Sync a fault-injection proxy: take its drill assignment, hand in its hits.
    ProxySync,
    /// Tokens, users, roles and rules.
    Admin,
}

/// The access decision of a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Open without a token: health, metrics, the API description, signing in.
    Public,
    Need(Permission),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Viewer,
    Ingest,
    Operator,
    DrillAdmin,
    RunbookExecutor,
    Admin,
    /// A browser's publishable key: beacons for its site and nothing else.
    Beacon,
    /// A fault-injection proxy (`steadfast proxy`): its sync and nothing else.
    Proxy,
}

impl Role {
    pub const ALL: [Role; 8] = [
        Role::Viewer,
        Role::Ingest,
        Role::Operator,
        Role::DrillAdmin,
        Role::RunbookExecutor,
        Role::Admin,
        Role::Beacon,
        Role::Proxy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Ingest => "ingest",
            Role::Operator => "operator",
            Role::DrillAdmin => "drill-admin",
            Role::RunbookExecutor => "runbook-executor",
            Role::Admin => "admin",
            Role::Beacon => "beacon",
            Role::Proxy => "proxy",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// The role table. Operators may pull the kill switch (anyone running drills must be
    /// able to stop them all); releasing it is for drill admins.
    pub fn permits(self, p: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Viewer => matches!(p, Read | Session),
            Role::Ingest => matches!(p, Ingest | Session),
            Role::Operator => matches!(
                p,
                Read | Session | BreakWork | DrillLossless | KillSwitchPull | Approve
            ),
            Role::DrillAdmin => matches!(
                p,
                Read | Session
                    | BreakWork
                    | DrillLossless
                    | DrillLossy
                    | KillSwitchPull
                    | KillSwitchRelease
                    | Correction
                    | Approve
            ),
            Role::RunbookExecutor => matches!(p, Read | Session | RunbookExecute | Approve),
            Role::Admin => !matches!(p, Beacon),
            Role::Beacon => matches!(p, Beacon),
            Role::Proxy => matches!(p, ProxySync | Session),
        }
    }
}

/// The fund links and services (record sources) a caller may touch; both empty means all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    pub links: Vec<String>,
    pub services: Vec<String>,
}

impl Scope {
    pub fn is_unscoped(&self) -> bool {
        self.links.is_empty() && self.services.is_empty()
    }

    /// Whether records of `source` may be written: the source is named, or is in the
    /// chain of a named link.
    pub fn allows_source(&self, source: &str, rules: &RuleSet) -> bool {
        self.is_unscoped()
            || self.services.iter().any(|s| s == source)
            || rules
                .links
                .iter()
                .any(|l| self.links.contains(&l.name) && l.chain.iter().any(|s| s == source))
    }

    /// The rule set as the caller may see it: its rules, the links they or the scope
    /// name, and the sources of those; the whole set for an unscoped caller.
    pub fn narrow(&self, rules: &RuleSet) -> RuleSet {
        let Some(visible) = self.visible_rules(rules) else {
            return rules.clone();
        };
        let kept: Vec<_> = rules
            .rules
            .iter()
            .filter(|r| visible.contains(&r.name))
            .cloned()
            .collect();
        let links: Vec<_> = rules
            .links
            .iter()
            .filter(|l| {
                self.links.contains(&l.name)
                    || kept.iter().any(|r| r.link.as_ref() == Some(&l.name))
            })
            .cloned()
            .collect();
        let sources = rules
            .sources
            .iter()
            .filter(|s| {
                self.services.contains(&s.name)
                    || links.iter().any(|l| l.chain.contains(&s.name))
                    || kept
                        .iter()
                        .any(|r| r.sides().iter().any(|side| side.source == s.name))
            })
            .cloned()
            .collect();
        RuleSet {
            version: rules.version.clone(),
            business_day: rules.business_day.clone(),
            sources,
            links,
            rules: kept,
        }
    }

    /// The rules whose breaks the caller may see; `None` for all.
    pub fn visible_rules(&self, rules: &RuleSet) -> Option<Vec<String>> {
        if self.is_unscoped() {
            return None;
        }
        Some(
            rules
                .rules
                .iter()
                .filter(|r| {
                    r.link.as_ref().is_some_and(|l| self.links.contains(l))
                        || r.sides().iter().any(|s| self.services.contains(&s.source))
                })
                .map(|r| r.name.clone())
                .collect(),
        )
    }
}

/// Who is calling, as the guard proved it. Handlers take it from the request.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The person or machine; four-eyes compares subjects.
    pub subject: String,
    pub token_id: String,
    pub role: Role,
    pub scope: Scope,
    /// For a publishable key: the site (origin) it may send beacons for. A beacon route
    /// refuses a request whose `Origin` is not this site.
    pub site: Option<String>,
    /// The largest body this caller may send: its token's limit or the server's.
    pub body_bytes_max: usize,
    /// The peer address.
    pub source: String,
}

impl Caller {
    /// Whether a beacon carrying this `Origin` header may be taken with this key.
    pub fn beacon_origin_allowed(&self, origin: Option<&str>) -> bool {
        match (&self.site, origin) {
            (Some(site), Some(origin)) => {
                site.trim_end_matches('/') == origin.trim_end_matches('/')
            }
            _ => false,
        }
    }
}

// ---- tokens --------------------------------------------------------------------------

/// The kinds of token and the prefix each carries, so a leaked key says what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    Api,
    Session,
    Publishable,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Api => "api",
            TokenKind::Session => "session",
            TokenKind::Publishable => "publishable",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            TokenKind::Api => "sft",
            TokenKind::Session => "sfs",
            TokenKind::Publishable => "sfpk",
        }
    }
}

/// A freshly minted token: its id, the text shown once, and the hash that is stored.
pub struct Minted {
    pub id: String,
    pub text: String,
    pub secret_sha256: Vec<u8>,
}

pub fn mint(kind: TokenKind) -> Minted {
    use rand::RngCore;
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut id);
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let id = steadfast_store::control::hex(&id);
    let secret = steadfast_store::control::hex(&secret);
    Minted {
        text: format!("{}_{id}_{secret}", kind.prefix()),
        secret_sha256: sha256(secret.as_bytes()),
        id,
    }
}

/// Splits a presented token into its id and secret; `None` when it has no token shape.
fn split_token(text: &str) -> Option<(&str, &str)> {
    let (_prefix, rest) = text.split_once('_')?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 12 && secret.len() == 64).then_some((id, secret))
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a new token is for.
#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    /// The person or machine the token speaks for.
    pub subject: String,
    /// A label, e.g. `billing reporter`.
    #[serde(default)]
    pub name: String,
    /// viewer, ingest, operator, drill-admin, runbook-executor, admin or beacon.
    pub role: String,
    #[serde(default)]
    pub links: Vec<String>,
    #[serde(default)]
    pub services: Vec<String>,
    /// For beacon keys: the site (origin) the key sends beacons for.
    #[serde(default)]
    pub site: Option<String>,
    /// Lifetime; the configured default when absent.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
    /// Requests per second; the configured default when absent.
    #[serde(default)]
    pub rate_per_sec: Option<u32>,
    /// Largest request body for this token (e.g. a small one for a browser's key); the
    /// server's `limits.body_bytes_max` when absent or larger.
    #[serde(default)]
    pub body_bytes_max: Option<u64>,
}

impl TokenSpec {
    /// A token of `role` for `subject`, unscoped, with the configured lifetime and limits.
    pub fn new(subject: &str, name: &str, role: Role) -> TokenSpec {
        TokenSpec {
            subject: subject.into(),
            name: name.into(),
            role: role.as_str().into(),
            links: vec![],
            services: vec![],
            site: None,
            expires_in_secs: None,
            rate_per_sec: None,
            body_bytes_max: None,
        }
    }
}

/// Longest token lifetime: ten years.
pub const TOKEN_LIFETIME_SECS_MAX: u64 = 10 * 365 * 86_400;
/// Longest subject or name.
pub const NAME_LEN_MAX: usize = 128;

/// Checks a token spec and builds the row to store; a readable error otherwise.
pub fn token_row(
    spec: &TokenSpec,
    kind: TokenKind,
    created_by: &str,
    now: Millis,
    default_lifetime_secs: u64,
) -> Result<(TokenRow, String), String> {
    let role = Role::parse(&spec.role).ok_or_else(|| {
        format!(
            "unknown role {:?} (one of: {})",
            spec.role,
            Role::ALL.map(|r| r.as_str()).join(", ")
        )
    })?;
    let subject = spec.subject.trim();
    if subject.is_empty() || subject.len() > NAME_LEN_MAX || spec.name.len() > NAME_LEN_MAX {
        return Err(format!(
            "`subject` must be 1 to {NAME_LEN_MAX} characters, `name` at most {NAME_LEN_MAX}"
        ));
    }
    let kind = if role == Role::Beacon {
        if spec.site.as_deref().is_none_or(|s| s.trim().is_empty()) {
            return Err("a beacon key needs the `site` it sends beacons for".into());
        }
        TokenKind::Publishable
    } else {
        if spec.site.is_some() {
            return Err("`site` is only for beacon keys".into());
        }
        kind
    };
    let lifetime = spec.expires_in_secs.unwrap_or(default_lifetime_secs);
    if lifetime == 0 || lifetime > TOKEN_LIFETIME_SECS_MAX {
        return Err(format!(
            "`expires_in_secs` must be between 1 and {TOKEN_LIFETIME_SECS_MAX}"
        ));
    }
    if spec.rate_per_sec == Some(0) {
        return Err("`rate_per_sec` must be at least 1".into());
    }
    if spec.body_bytes_max == Some(0) {
        return Err("`body_bytes_max` must be at least 1".into());
    }
    let minted = mint(kind);
    let row = TokenRow {
        id: minted.id,
        kind: kind.as_str().into(),
        subject: subject.into(),
        name: spec.name.clone(),
        role: role.as_str().into(),
        links: spec.links.clone(),
        services: spec.services.clone(),
        site: spec.site.clone(),
        rate_per_sec: spec.rate_per_sec,
        body_bytes_max: spec.body_bytes_max,
        created_at: now,
        created_by: created_by.into(),
        expires_at: Some(now.saturating_add(lifetime as i64 * 1000)),
        revoked_at: None,
        secret_sha256: minted.secret_sha256,
    };
    Ok((row, minted.text))
}

/// Creates a token directly in a data directory, for the local operator who has the
/// directory (the trust root): the first admin token, or a demo's session token. The
/// creation is audited with source `local`.
pub fn create_local_token(
    data_dir: &Path,
    spec: &TokenSpec,
    by: &str,
    default_lifetime_secs: u64,
) -> anyhow::Result<(TokenRow, String)> {
    let now = crate::pipeline::wall_ms();
    let (row, text) = token_row(spec, TokenKind::Api, by, now, default_lifetime_secs)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut store = ControlStore::open(data_dir)
        .with_context(|| format!("failed to open the control store in {}", data_dir.display()))?;
    store.insert_token(&row)?;
    store.append_audit(steadfast_store::control::AuditRecord {
        at: now,
        actor: by.into(),
        action: "token.create".into(),
        target: format!("token {}", row.id),
        source: "local".into(),
        result: "created".into(),
        approver: None,
        detail: serde_json::json!({ "subject": row.subject, "role": row.role, "links": row.links, "services": row.services, "expires_at": row.expires_at }).to_string(),
    })?;
    Ok((row, text))
}

/// Writes a secret to a file only its owner can read.
pub fn write_secret_file(path: &Path, secret: &str) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    use std::io::Write;
    let mut f = opts
        .open(path)
        .with_context(|| format!("failed to write {}", path.display()))?;
    f.write_all(secret.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Creates an admin token for a local session (the demo, tests) and writes it to
/// `DATA_DIR/admin.token`, owner-only. Returns the token text.
pub fn bootstrap_admin_token(data_dir: &Path, subject: &str) -> anyhow::Result<String> {
    let spec = TokenSpec {
        subject: subject.into(),
        name: "local session".into(),
        role: Role::Admin.as_str().into(),
        links: vec![],
        services: vec![],
        site: None,
        expires_in_secs: Some(7 * 86_400),
        rate_per_sec: Some(100_000),
        body_bytes_max: None,
    };
    let (_, text) = create_local_token(data_dir, &spec, "local", 7 * 86_400)?;
    write_secret_file(&data_dir.join("admin.token"), &text)?;
    Ok(text)
}

// ---- passwords -----------------------------------------------------------------------

/// Shortest password accepted for a local user.
pub const PASSWORD_LEN_MIN: usize = 12;
/// Longest password accepted (argon2 cost is per byte of input, so it is bounded).
pub const PASSWORD_LEN_MAX: usize = 1024;

pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    if password.len() < PASSWORD_LEN_MIN || password.len() > PASSWORD_LEN_MAX {
        return Err(format!(
            "a password must be {PASSWORD_LEN_MIN} to {PASSWORD_LEN_MAX} bytes long"
        ));
    }
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("password hashing failed: {e}"))
}

pub fn check_password(password: &str, phc: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    password.len() <= PASSWORD_LEN_MAX
        && PasswordHash::new(phc).is_ok_and(|h| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
}

// ---- verification --------------------------------------------------------------------

/// How long a token row is trusted from the cache before it is read again; a token revoked
/// through another process (the CLI on the data directory) stops working within this.
const TOKEN_CACHE_SECS: u64 = 1;
/// Distinct source addresses the sign-in limiter tracks; past it, it starts afresh.
const LOGIN_LIMITER_KEYS_MAX: usize = 100_000;

pub enum Denied {
    /// No token, a malformed one, or one that is unknown, revoked or expired.
    Unauthenticated(&'static str),
    /// Over the token's request rate; retry after this many seconds.
    RateLimited(u64),
}

struct Cached {
    row: TokenRow,
    fetched: Instant,
    limiter: Arc<DefaultDirectRateLimiter>,
    rate: u32,
}

pub struct Auth {
    cache: Mutex<HashMap<String, Cached>>,
    default_rate_per_sec: u32,
    login: Mutex<DefaultKeyedRateLimiter<std::net::IpAddr>>,
    login_quota: Quota,
}

fn quota(per_sec: u32) -> Quota {
    let n = NonZeroU32::new(per_sec.max(1)).expect("at least one");
    // A burst of one second's worth, so a client sending evenly is never refused.
    Quota::per_second(n).allow_burst(n)
}

impl Auth {
    pub fn new(default_rate_per_sec: u32, logins_per_min_per_ip: u32) -> Auth {
        let per_min = NonZeroU32::new(logins_per_min_per_ip.max(1)).expect("at least one");
        Auth {
            cache: Mutex::new(HashMap::new()),
            default_rate_per_sec,
            login: Mutex::new(RateLimiter::keyed(Quota::per_minute(per_min))),
            login_quota: Quota::per_minute(per_min),
        }
    }

    /// Verifies a presented token against the store (through the cache) and charges its
    /// rate limit.
    pub fn verify(
        &self,
        store: &Mutex<ControlStore>,
        presented: &str,
        now: Millis,
    ) -> Result<(TokenRow, Role), Denied> {
        let (id, secret) = split_token(presented).ok_or(Denied::Unauthenticated(
            "the token is malformed; tokens look like sft_<id>_<secret>",
        ))?;
        let fresh = {
            let cache = self.cache.lock().expect("token cache lock");
            cache
                .get(id)
                .filter(|c| c.fetched.elapsed() < Duration::from_secs(TOKEN_CACHE_SECS))
                .map(|c| (c.row.clone(), c.limiter.clone()))
        };
        let (row, limiter) = match fresh {
            Some(hit) => hit,
            None => {
                let row = store
                    .lock()
                    .expect("control store lock")
                    .token(id)
                    .map_err(|e| {
                        tracing::error!(error = %e, "token lookup failed");
                        Denied::Unauthenticated("the token could not be checked")
                    })?
                    .ok_or(Denied::Unauthenticated("unknown token"))?;
                self.remember(row)
            }
        };
        if !constant_time_eq(&sha256(secret.as_bytes()), &row.secret_sha256) {
            return Err(Denied::Unauthenticated("unknown token"));
        }
        if row.revoked_at.is_some() {
            return Err(Denied::Unauthenticated("the token was revoked"));
        }
        if !row.live_at(now) {
            return Err(Denied::Unauthenticated("the token has expired"));
        }
        let role = Role::parse(&row.role).ok_or(Denied::Unauthenticated(
            "the token's role is not known to this server",
        ))?;
        if let Err(not_until) = limiter.check() {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            return Err(Denied::RateLimited(wait.as_secs().max(1)));
        }
        Ok((row, role))
    }

    fn remember(&self, row: TokenRow) -> (TokenRow, Arc<DefaultDirectRateLimiter>) {
        let rate = row.rate_per_sec.unwrap_or(self.default_rate_per_sec);
        let mut cache = self.cache.lock().expect("token cache lock");
        if cache.len() >= TOKENS_LIVE_MAX && !cache.contains_key(&row.id) {
            // Only live tokens are cached normally; past the bound, start afresh (rate
            // limiter state is lost for a moment, which errs towards admitting).
            cache.clear();
        }
        let limiter = match cache.get(&row.id) {
            Some(c) if c.rate == rate => c.limiter.clone(),
            _ => Arc::new(RateLimiter::direct(quota(rate))),
        };
        cache.insert(
            row.id.clone(),
            Cached {
                row: row.clone(),
                fetched: Instant::now(),
                limiter: limiter.clone(),
                rate,
            },
        );
        (row, limiter)
    }

    /// Drops a token from the cache (after revocation through this server).
    pub fn forget(&self, id: &str) {
        self.cache.lock().expect("token cache lock").remove(id);
    }

    /// Charges a sign-in attempt from `ip`; `false` when over the limit.
    pub fn login_allowed(&self, ip: std::net::IpAddr) -> bool {
        let mut login = self.login.lock().expect("login limiter lock");
        if login.len() > LOGIN_LIMITER_KEYS_MAX {
            login.retain_recent();
            if login.len() > LOGIN_LIMITER_KEYS_MAX {
                *login = RateLimiter::keyed(self.login_quota);
            }
        }
        login.check_key(&ip).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_table_keeps_its_promises() {
        use Permission::*;
        // Only admins manage tokens; nobody but beacon keys sends beacons.
        for r in Role::ALL {
            assert_eq!(r.permits(Admin), r == Role::Admin, "{r:?}");
            assert_eq!(r.permits(Beacon), r == Role::Beacon, "{r:?}");
        }
        assert!(!Role::Viewer.permits(BreakWork));
        assert!(!Role::Ingest.permits(Read));
        assert!(Role::Operator.permits(DrillLossless) && !Role::Operator.permits(DrillLossy));
        assert!(
            Role::Operator.permits(KillSwitchPull) && !Role::Operator.permits(KillSwitchRelease)
        );
        assert!(Role::DrillAdmin.permits(Correction) && !Role::DrillAdmin.permits(RunbookExecute));
        assert!(Role::RunbookExecutor.permits(RunbookExecute));
    }

    #[test]
    fn tokens_have_their_shape_and_verify_only_with_their_secret() {
        let m = mint(TokenKind::Api);
        let (id, secret) = split_token(&m.text).unwrap();
        assert_eq!(id, m.id);
        assert!(constant_time_eq(
            &sha256(secret.as_bytes()),
            &m.secret_sha256
        ));
        assert!(m.text.starts_with("sft_"));
        assert!(mint(TokenKind::Publishable).text.starts_with("sfpk_"));
        assert!(split_token("sft_short_x").is_none());
    }

    #[test]
    fn a_beacon_key_speaks_only_for_its_site() {
        let caller = |site: Option<&str>| Caller {
            subject: "shop".into(),
            token_id: "0".into(),
            role: Role::Beacon,
            scope: Scope::default(),
            site: site.map(String::from),
            body_bytes_max: 1024,
            source: "127.0.0.1".into(),
        };
        let key = caller(Some("https://shop.example"));
        assert!(key.beacon_origin_allowed(Some("https://shop.example")));
        assert!(key.beacon_origin_allowed(Some("https://shop.example/")));
        assert!(!key.beacon_origin_allowed(Some("https://evil.example")));
        assert!(!key.beacon_origin_allowed(None), "no Origin, no beacon");
        assert!(!caller(None).beacon_origin_allowed(Some("https://shop.example")));
    }

    #[test]
    fn passwords_hash_with_argon2_and_check() {
        let phc = hash_password("correct horse battery").unwrap();
        assert!(phc.starts_with("$argon2"));
        assert!(check_password("correct horse battery", &phc));
        assert!(!check_password("correct horse batterz", &phc));
        assert!(hash_password("short").is_err());
    }

    #[test]
    fn bad_token_specs_are_refused_with_a_reason() {
        let spec = |role: &str, site: Option<&str>| TokenSpec {
            subject: "alice".into(),
            name: String::new(),
            role: role.into(),
            links: vec![],
            services: vec![],
            site: site.map(String::from),
            expires_in_secs: None,
            rate_per_sec: None,
            body_bytes_max: None,
        };
        let err = |s: TokenSpec| token_row(&s, TokenKind::Api, "t", 0, 60).err().unwrap();
        assert!(err(spec("root", None)).contains("unknown role"));
        assert!(err(spec("beacon", None)).contains("site"));
        assert!(err(spec("viewer", Some("x"))).contains("only for beacon"));
        let (row, text) = token_row(
            &spec("beacon", Some("https://shop.example")),
            TokenKind::Api,
            "t",
            0,
            60,
        )
        .unwrap();
        assert_eq!(
            (row.kind.as_str(), row.expires_at),
            ("publishable", Some(60_000))
        );
        assert!(text.starts_with("sfpk_"));
    }
}
