//! Rows: one span, log record or metric point each, with typed hot keys (time, service,
//! trace id, span id, session id, user id) and the rest of the attributes as JSON.
//!
//! Attribute names are normalised at ingest so that one query works whichever
//! semantic-convention version a service was instrumented with: the old names map to the
//! new ones (`http.method` → `http.request.method`, ...), and `enduser.id` is `user.id`.

use serde::{Deserialize, Serialize};

/// Longest attribute value kept; longer ones are cut (counted in `trimmed`).
pub const ATTR_VALUE_BYTES_MAX: usize = 4_096;
/// Most attributes kept per span, log record or point (resource ones included); the
/// rest are dropped (counted in `trimmed`).
pub const ATTRS_PER_ITEM_MAX: usize = 128;
/// Longest span name, log body or metric name kept.
pub const TEXT_BYTES_MAX: usize = 16_384;

/// Old semantic-convention names and the names they became.
pub const RENAMES: [(&str, &str); 12] = [
    ("enduser.id", "user.id"),
    ("http.method", "http.request.method"),
    ("http.status_code", "http.response.status_code"),
    ("http.url", "url.full"),
    ("http.target", "url.path"),
    ("http.scheme", "url.scheme"),
    ("http.user_agent", "user_agent.original"),
    ("net.peer.name", "server.address"),
    ("net.peer.port", "server.port"),
    ("net.host.name", "server.address"),
    ("db.statement", "db.query.text"),
    ("db.system", "db.system.name"),
];

/// The name an attribute is stored under.
pub fn normalise(key: &str) -> &str {
    RENAMES
        .iter()
        .find(|(old, _)| *old == key)
        .map_or(key, |(_, new)| new)
}

/// Cuts text to at most `max` bytes on a character boundary; says whether it cut.
pub fn cut(text: &mut String, max: usize) -> bool {
    if text.len() <= max {
        return false;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    true
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SpanRow {
    /// Start, nanoseconds since the Unix epoch.
    pub start_ns: i64,
    pub end_ns: i64,
    /// Lower-case hex, 32 characters.
    pub trace_id: String,
    /// Lower-case hex, 16 characters.
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub service: String,
    pub name: String,
    /// internal, server, client, producer or consumer.
    pub kind: String,
    /// unset, ok or error.
    pub status: String,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    /// The business order id (`order.id` / `order_id` attribute), linking to fund records.
    pub order_id: Option<String>,
    pub http_method: Option<String>,
    pub http_route: Option<String>,
    pub http_status: Option<i64>,
    pub db_statement: Option<String>,
    /// `db.system.name`: postgresql, mysql, redis...
    pub db_system: Option<String>,
    /// The W3C `tracestate` the span carried (`sf=vip` marks a VIP's trace).
    pub trace_state: Option<String>,
    /// Every other attribute, normalised, as a JSON object.
    pub attributes: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LogRow {
    pub time_ns: i64,
    pub service: String,
    pub severity_number: i32,
    pub severity_text: String,
    pub body: String,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub attributes: String,
}

/// One metric data point. Metric values are measurements, not money: a float is right.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricRow {
    pub time_ns: i64,
    pub service: String,
    pub name: String,
    pub unit: String,
    /// gauge, sum, histogram, exponential_histogram or summary.
    pub kind: String,
    /// The value of a gauge or sum; a histogram's or summary's sum.
    pub value: f64,
    /// A histogram's or summary's count.
    pub count: Option<i64>,
    pub attributes: String,
}

/// A fund record as the verification pipeline accepted it, kept beside the telemetry so
/// that a journey finds the money its requests moved (by trace id or order id). Money is
/// exact: minor units and the currency's scale.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FundRow {
    /// Event time, nanoseconds since the Unix epoch.
    pub time_ns: i64,
    pub source: String,
    pub kind: String,
    pub record_id: String,
    pub order_id: Option<String>,
    pub trace_id: Option<String>,
    pub amount_minor: i64,
    pub currency: String,
    /// Digits after the decimal point of `currency`.
    pub scale: i32,
    pub status: Option<String>,
    /// Business key fields, as a JSON object.
    pub keys: String,
}

/// What one request decoded to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rows {
    pub spans: Vec<SpanRow>,
    pub logs: Vec<LogRow>,
    pub metrics: Vec<MetricRow>,
    pub funds: Vec<FundRow>,
    pub access: Vec<crate::nginx::AccessRow>,
    pub flows: Vec<crate::flow::FlowRow>,
}

impl Rows {
    pub fn len(&self) -> usize {
        self.spans.len()
            + self.logs.len()
            + self.metrics.len()
            + self.funds.len()
            + self.access.len()
            + self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_names_become_new_ones_and_others_stay() {
        assert_eq!(normalise("http.status_code"), "http.response.status_code");
        assert_eq!(normalise("enduser.id"), "user.id");
        assert_eq!(normalise("user.id"), "user.id");
        assert_eq!(normalise("custom.thing"), "custom.thing");
    }

    #[test]
    fn cutting_respects_character_boundaries() {
        let mut s = "ab€cd".to_string(); // € is 3 bytes at 2..5
        assert!(cut(&mut s, 4));
        assert_eq!(s, "ab");
        let mut t = "short".to_string();
        assert!(!cut(&mut t, 10));
    }
}
