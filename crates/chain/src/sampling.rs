//! Sampling at ingest, with VIP users never sampled away.
//!
//! The decision is per trace, from a hash of its id, so every service's spans of a trace
//! (sent in different requests, in any order) are kept or dropped together, with no state
//! to hold. A span is a VIP's when its user is listed, when it carries the VIP attribute
//! (`user.vip = true` by default), or when its W3C `tracestate` holds `sf=vip`: the front
//! end or gateway that knows the user sets that entry, and trace-context propagation
//! carries it to every backend span, which carries no user of its own. Logs follow their
//! trace's decision; logs with no trace are kept.

use std::collections::HashSet;

use serde_json::Value;

use crate::rows::{Rows, SpanRow};

#[derive(Clone, Debug)]
pub struct Sampling {
    /// Traces kept, in percent (100: all).
    pub percent: u8,
    pub vip_users: HashSet<String>,
    /// A span attribute that marks a VIP when true (`"true"`, `true` or `1`).
    pub vip_attribute: String,
}

impl Default for Sampling {
    fn default() -> Sampling {
        Sampling {
            percent: 100,
            vip_users: HashSet::new(),
            vip_attribute: "user.vip".into(),
        }
    }
}

/// The `tracestate` entry that marks a VIP's trace.
pub const VIP_TRACESTATE: &str = "sf=vip";

fn keeps_by_hash(percent: u8, trace_id: &str) -> bool {
    percent >= 100 || (xxhash_rust::xxh3::xxh3_64(trace_id.as_bytes()) % 100) < percent as u64
}

impl Sampling {
    pub fn is_vip(&self, s: &SpanRow) -> bool {
        if s.user_id
            .as_ref()
            .is_some_and(|u| self.vip_users.contains(u))
        {
            return true;
        }
        if s.trace_state
            .as_deref()
            .is_some_and(|t| t.split(',').any(|e| e.trim() == VIP_TRACESTATE))
        {
            return true;
        }
        if !self.vip_attribute.is_empty() && s.attributes.contains(&self.vip_attribute) {
            let attrs: Value = serde_json::from_str(&s.attributes).unwrap_or(Value::Null);
            let v = attrs.get(&self.vip_attribute);
            return v == Some(&Value::Bool(true))
                || v.and_then(|x| x.as_str()) == Some("true")
                || v.and_then(|x| x.as_i64()) == Some(1);
        }
        false
    }

    /// Drops the spans and logs of traces the sample leaves out; returns how many rows
    /// were dropped.
    pub fn apply(&self, rows: &mut Rows) -> usize {
        if self.percent >= 100 {
            return 0;
        }
        let vip_traces: HashSet<String> = rows
            .spans
            .iter()
            .filter(|s| self.is_vip(s))
            .map(|s| s.trace_id.clone())
            .collect();
        let keep = |t: &str| vip_traces.contains(t) || keeps_by_hash(self.percent, t);
        let before = rows.spans.len() + rows.logs.len();
        rows.spans.retain(|s| keep(&s.trace_id));
        rows.logs
            .retain(|l| l.trace_id.as_deref().is_none_or(&keep));
        before - rows.spans.len() - rows.logs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(trace: usize, user: Option<&str>, state: Option<&str>, attrs: &str) -> SpanRow {
        SpanRow {
            trace_id: format!("{trace:032x}"),
            span_id: "0000000000000001".into(),
            user_id: user.map(String::from),
            trace_state: state.map(String::from),
            attributes: attrs.into(),
            ..Default::default()
        }
    }

    #[test]
    fn vips_are_kept_whole_and_the_rest_by_trace() {
        let policy = Sampling {
            percent: 0,
            vip_users: ["vip-1".to_string()].into(),
            ..Sampling::default()
        };
        let mut rows = Rows {
            spans: vec![
                span(1, Some("vip-1"), None, "{}"),
                // A backend span of a VIP's trace: no user, the tracestate says so.
                span(2, None, Some("sf=vip,other=1"), "{}"),
                span(3, Some("anyone"), None, r#"{"user.vip":true}"#),
                span(4, Some("anyone"), None, r#"{"user.vip":"true"}"#),
                span(5, Some("anyone"), None, r#"{"user.vip":false}"#),
                span(6, None, None, "{}"),
            ],
            ..Default::default()
        };
        assert_eq!(policy.apply(&mut rows), 2);
        let kept: Vec<String> = rows
            .spans
            .iter()
            .map(|s| s.trace_id[30..].to_string())
            .collect();
        assert_eq!(kept, ["01", "02", "03", "04"]);
    }

    #[test]
    fn a_trace_is_kept_or_dropped_whole_whichever_request_brings_its_spans() {
        let policy = Sampling {
            percent: 30,
            ..Sampling::default()
        };
        let kept_alone: Vec<bool> = (0..1000)
            .map(|t| {
                let mut r = Rows {
                    spans: vec![span(t, None, None, "{}")],
                    ..Default::default()
                };
                policy.apply(&mut r);
                !r.spans.is_empty()
            })
            .collect();
        let mut all = Rows {
            spans: (0..1000).map(|t| span(t, None, None, "{}")).collect(),
            ..Default::default()
        };
        policy.apply(&mut all);
        let kept_together: Vec<usize> = all
            .spans
            .iter()
            .map(|s| usize::from_str_radix(&s.trace_id, 16).unwrap())
            .collect();
        let expected: Vec<usize> = (0..1000).filter(|&t| kept_alone[t]).collect();
        assert_eq!(kept_together, expected);
        assert!((250..350).contains(&expected.len()), "{}", expected.len());
    }
}
