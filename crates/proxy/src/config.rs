//! The proxy's configuration: a TOML file (`steadfast proxy --config proxy.toml`), every
//! field with a default, and the command-line flags over it.
//!
//! ```toml
//! name = "billing"                       # how the server knows this proxy
//! listen = "127.0.0.1:7400"
//! upstream = "http://127.0.0.1:7404"     # the service the proxy stands in front of
//! data_dir = "steadfast-data"            # the hit journal lives here
//!
//! [controller]                           # the Steadfast server that assigns drills
//! url = "http://127.0.0.1:7300"
//! token_file = "proxy.token"             # a token of the `proxy` role
//!
//! [[routes]]                             # which requests carry which record kind
//! method = "POST"
//! path = "/v1/bills"                     # `*` matches any run, `?` one character
//! kind = "bill"
//! key = "biz_id"                         # the body field holding the business key
//! side = "request"                       # or "response"
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use steadfast_drill::proxy::BodySide;
use steadfast_server::TlsConfig;

/// Largest request or response body the proxy reads whole to tamper with; past it, 413
/// (request) or 502 (response). Bodies on routes no drill acts on stream through unread.
pub const BODY_BYTES_MAX_DEFAULT: usize = 1 << 20;
/// Idle connections kept to the upstream.
pub const UPSTREAM_IDLE_MAX: usize = 512;
/// Requests held by black-hole faults at once; past it a request is reset instead.
pub const HOLDING_MAX: u64 = 4_096;
/// How often drills past their TTL are ended when no request comes.
pub const EXPIRY_TICK_MS: u64 = 100;
/// The long poll asks the server to answer within this when nothing changes.
pub const SYNC_WAIT_MS: u64 = 20_000;
/// Pause after a failed sync before the next.
pub const SYNC_RETRY_MS: u64 = 500;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// HTTP method, e.g. `POST`; `*` for any.
    #[serde(default = "any")]
    pub method: String,
    /// A glob over the request path.
    pub path: String,
    /// The record kind the body carries; drill faults name it.
    pub kind: String,
    /// A field path into the JSON body holding the business key.
    pub key: String,
    #[serde(default)]
    pub side: BodySide,
}

fn any() -> String {
    "*".into()
}

impl Route {
    /// A route whose request bodies carry records of `kind`, keyed by the field `key`.
    pub fn request(method: &str, path: &str, kind: &str, key: &str) -> Route {
        Route {
            method: method.into(),
            path: path.into(),
            kind: kind.into(),
            key: key.into(),
            side: BodySide::Request,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// The Steadfast server's base URL.
    pub url: String,
    /// A file holding a `proxy`-role token (the token itself never goes in this file).
    pub token_file: Option<PathBuf>,
    /// The token, when given directly (tests, `steadfast demo`); never logged.
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
    /// A PEM CA to trust for the server's certificate, besides the system's.
    pub ca_cert: Option<PathBuf>,
}

impl ControllerConfig {
    /// A controller at `url`, authenticated with a token given directly.
    pub fn with_token(url: &str, token: String) -> ControllerConfig {
        ControllerConfig {
            url: url.into(),
            token_file: None,
            token: Some(token),
            ca_cert: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub upstream: String,
    pub data_dir: PathBuf,
    /// Listen on a non-loopback address without TLS.
    pub allow_plain_http: bool,
    pub tls: TlsConfig,
    pub controller: Option<ControllerConfig>,
    pub routes: Vec<Route>,
    pub body_bytes_max: usize,
    pub upstream_connect_timeout_ms: u64,
    /// A PEM CA to trust for an https upstream, besides the public roots.
    pub upstream_ca_cert: Option<PathBuf>,
    /// A request the upstream has not answered by then gets 504.
    pub upstream_timeout_ms: u64,
}

impl Default for ProxyConfig {
    fn default() -> ProxyConfig {
        ProxyConfig {
            name: "proxy".into(),
            listen: "127.0.0.1:7400".parse().expect("a socket address"),
            upstream: String::new(),
            data_dir: PathBuf::from("steadfast-data"),
            allow_plain_http: false,
            tls: TlsConfig::default(),
            controller: None,
            routes: vec![],
            body_bytes_max: BODY_BYTES_MAX_DEFAULT,
            upstream_connect_timeout_ms: 2_000,
            upstream_ca_cert: None,
            upstream_timeout_ms: 30_000,
        }
    }
}

/// Names: what the journal file and hit ids are made of.
fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl ProxyConfig {
    pub fn parse(text: &str) -> anyhow::Result<ProxyConfig> {
        let cfg: ProxyConfig = toml::from_str(text).context("proxy configuration")?;
        Ok(cfg)
    }

    pub fn journal_path(&self) -> PathBuf {
        self.data_dir
            .join(format!("proxy-{}.hits.jsonl", self.name))
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if !name_ok(&self.name) {
            bail!("name {:?}: 1 to 64 letters, digits, - and _", self.name);
        }
        let up = reqwest::Url::parse(&self.upstream)
            .with_context(|| format!("upstream {:?} is not a URL", self.upstream))?;
        if !matches!(up.scheme(), "http" | "https") {
            bail!("upstream {:?}: http or https only", self.upstream);
        }
        let tls = self.tls.cert.is_some() || self.tls.key.is_some();
        if tls && (self.tls.cert.is_none() || self.tls.key.is_none()) {
            bail!("tls: give both cert and key");
        }
        if !tls && !self.listen.ip().is_loopback() && !self.allow_plain_http {
            bail!(
                "listen {}: plain HTTP on a non-loopback address needs allow_plain_http = true (or configure [tls])",
                self.listen
            );
        }
        if self.body_bytes_max == 0 {
            bail!("body_bytes_max must be at least 1");
        }
        for (i, r) in self.routes.iter().enumerate() {
            if r.kind.trim().is_empty() || r.key.trim().is_empty() || !r.path.starts_with('/') {
                bail!("routes[{i}]: give kind, key and a path starting with /");
            }
        }
        if let Some(c) = &self.controller {
            reqwest::Url::parse(&c.url)
                .with_context(|| format!("controller.url {:?} is not a URL", c.url))?;
            if c.token.is_none() && c.token_file.is_none() {
                bail!("controller: give token_file (a token of the proxy role)");
            }
        }
        Ok(())
    }
}

/// A route ready for matching.
pub(crate) struct CompiledRoute {
    pub route: Route,
    /// `METHOD path`, as hits name it.
    pub label: String,
}

impl CompiledRoute {
    pub fn new(r: &Route) -> anyhow::Result<CompiledRoute> {
        Ok(CompiledRoute {
            label: format!("{} {}", r.method, r.path),
            route: r.clone(),
        })
    }

    pub fn matches(&self, method: &str, path: &str) -> bool {
        (self.route.method == "*" || self.route.method.eq_ignore_ascii_case(method))
            && steadfast_drill::tamper::glob(&self.route.path, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses_and_validates() {
        let text = include_str!("config.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        let cfg = ProxyConfig::parse(&text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.routes[0].kind, "bill");
        let r = CompiledRoute::new(&cfg.routes[0]).unwrap();
        assert!(r.matches("post", "/v1/bills"));
        assert!(!r.matches("GET", "/v1/bills"));
    }

    #[test]
    fn bad_configurations_are_refused_with_the_field() {
        let base = ProxyConfig {
            upstream: "http://127.0.0.1:9".into(),
            ..ProxyConfig::default()
        };
        base.validate().unwrap();
        let cases: Vec<(ProxyConfig, &str)> = vec![
            (
                ProxyConfig {
                    name: "a b".into(),
                    ..base.clone()
                },
                "name",
            ),
            (
                ProxyConfig {
                    upstream: "ftp://x".into(),
                    ..base.clone()
                },
                "upstream",
            ),
            (
                ProxyConfig {
                    listen: "0.0.0.0:7400".parse().unwrap(),
                    ..base.clone()
                },
                "allow_plain_http",
            ),
            (
                ProxyConfig {
                    controller: Some(ControllerConfig {
                        url: "http://127.0.0.1:1".into(),
                        token_file: None,
                        token: None,
                        ca_cert: None,
                    }),
                    ..base.clone()
                },
                "token_file",
            ),
        ];
        for (cfg, word) in cases {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(word), "{e}");
        }
    }
}
