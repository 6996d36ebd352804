//! The page frame every page shares: the header with navigation, who is signed in and
//! the kill switch (always visible, on every page), a flash message, and the helpers
//! pages use for tables, forms and empty states.

use maud::{html, Markup, DOCTYPE};
use serde_json::Value;

/// What every page knows besides its own data.
#[derive(Clone, Debug, Default)]
pub struct Ctx {
    /// Who is signed in (the token's subject) and the role the token carries.
    pub subject: String,
    pub role: String,
    /// The kill switch as `GET /api/v1/killswitch` answers it.
    pub killswitch: Value,
    /// The result of the action that led here.
    pub flash: Option<Flash>,
    /// The server's wall clock, for ages ("3 min ago").
    pub now_ms: i64,
    /// Four-eyes requests waiting for a decision.
    pub approvals_pending: usize,
    /// Reload the page every this many seconds (live views).
    pub refresh_secs: Option<u32>,
}

/// The outcome of an action, shown once at the top of the next page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flash {
    Ok(String),
    /// Accepted but waiting for a second person.
    Pending(String),
    Error(String),
}

/// The pages in the navigation bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Breaks,
    Drills,
    Services,
    Journeys,
    Incidents,
    Approvals,
    Audit,
    None,
}

const NAV: [(Nav, &str, &str); 8] = [
    (Nav::Overview, "/ui/", "Overview"),
    (Nav::Breaks, "/ui/breaks", "Breaks"),
    (Nav::Drills, "/ui/drills", "Drills"),
    (Nav::Services, "/ui/services", "Service map"),
    (Nav::Journeys, "/ui/journeys", "Journeys"),
    (Nav::Incidents, "/ui/incidents", "Incidents"),
    (Nav::Approvals, "/ui/approvals", "Approvals"),
    (Nav::Audit, "/ui/audit", "Audit log"),
];

/// A whole page: head, header, flash and the page's body.
pub fn page(ctx: &Ctx, title: &str, active: Nav, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(secs) = ctx.refresh_secs {
                    meta http-equiv="refresh" content=(secs);
                }
                title { (title) " · Steadfast" }
                link rel="stylesheet" href="/ui/assets/app.css";
                link rel="icon" href="data:,";
            }
            body {
                header.top {
                    a.brand href="/ui/" { "Steadfast" }
                    nav {
                        @for (nav, href, label) in NAV {
                            a href=(href) class=@if nav == active { "active" } {
                                (label)
                                @if nav == Nav::Approvals && ctx.approvals_pending > 0 {
                                    " " span.count { (ctx.approvals_pending) }
                                }
                            }
                        }
                    }
                    (killswitch_badge(ctx))
                    div.who {
                        span title="signed in as" { (ctx.subject) }
                        " " span.role { (ctx.role) }
                        form method="post" action="/ui/signout" {
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main {
                    @if let Some(f) = &ctx.flash { (flash(f)) }
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page for someone not signed in: no navigation, no kill switch.
pub fn bare_page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Steadfast" }
                link rel="stylesheet" href="/ui/assets/app.css";
                link rel="icon" href="data:,";
            }
            body.bare {
                main.narrow {
                    h1 { "Steadfast" }
                    (body)
                }
            }
        }
    }
}

/// The kill switch, in the header of every page: its state and the way to pull or release
/// it (a confirmation page, never one click).
fn killswitch_badge(ctx: &Ctx) -> Markup {
    let engaged = ctx.killswitch["engaged"].as_bool().unwrap_or(false);
    // A failed read is not a released switch: say so rather than look safe.
    if ctx.killswitch["engaged"].is_null() {
        return html! {
            a.killswitch.engaged href="/ui/killswitch" title="The kill switch could not be read with this sign-in." {
                "Kill switch: state unknown"
            }
        };
    }
    html! {
        a.killswitch.engaged[engaged] href="/ui/killswitch"
            title=(if engaged { "Drills are stopped and none may start. Click to review or release." } else { "Stops every drill at once. Click to confirm." }) {
            @if engaged { "KILL SWITCH ENGAGED" } @else { "Kill switch" }
        }
    }
}

pub fn flash(f: &Flash) -> Markup {
    let (class, text) = match f {
        Flash::Ok(t) => ("flash ok", t),
        Flash::Pending(t) => ("flash pending", t),
        Flash::Error(t) => ("flash error", t),
    };
    html! { div class=(class) role="status" { (text) } }
}

/// What an empty list or chart shows instead of nothing: why it is empty.
pub fn empty(why: &str) -> Markup {
    html! { p.empty { (why) } }
}

/// A section with a heading.
pub fn section(title: &str, body: Markup) -> Markup {
    html! { section { h2 { (title) } (body) } }
}

/// A small figure: a label over a number.
pub fn stat(label: &str, value: &str, tone: Tone) -> Markup {
    html! {
        div class=(format!("stat {}", tone.class())) {
            div.value { (value) }
            div.label { (label) }
        }
    }
}

/// Health colours, the same everywhere (and in charts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    Good,
    Warn,
    Bad,
    Neutral,
}

impl Tone {
    pub fn class(self) -> &'static str {
        match self {
            Tone::Good => "good",
            Tone::Warn => "warn",
            Tone::Bad => "bad",
            Tone::Neutral => "neutral",
        }
    }
}

/// A coloured label ("open", "firing", "running").
pub fn pill(text: &str, tone: Tone) -> Markup {
    html! { span class=(format!("pill {}", tone.class())) { (text) } }
}

/// A POST form with one button and, when `reason` gives its placeholder, a required
/// reason field.
pub fn action_form(action: &str, label: &str, reason: Option<&str>) -> Markup {
    html! {
        form.action method="post" action=(action) {
            @if let Some(placeholder) = reason {
                input type="text" name="reason" placeholder=(placeholder) required maxlength="500";
            }
            button type="submit" { (label) }
        }
    }
}

/// The time ranges every chart page offers, by their query value.
pub const RANGES: [(&str, &str, i64); 6] = [
    ("5m", "5 min", 5 * 60_000),
    ("15m", "15 min", 15 * 60_000),
    ("1h", "1 hour", 3_600_000),
    ("6h", "6 hours", 6 * 3_600_000),
    ("24h", "24 hours", 24 * 3_600_000),
    ("7d", "7 days", 7 * 24 * 3_600_000),
];

/// A time range chosen on a page: `?range=1h` (the default) ending now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub key: &'static str,
    pub from_ms: i64,
    pub to_ms: i64,
}

impl Range {
    /// The range named `key` ending at `now_ms`; an unknown or missing key is one hour.
    pub fn parse(key: Option<&str>, now_ms: i64) -> Range {
        let (key, _, len) = RANGES
            .iter()
            .find(|(k, _, _)| Some(*k) == key)
            .copied()
            .unwrap_or(RANGES[2]);
        Range {
            key,
            from_ms: now_ms - len,
            to_ms: now_ms,
        }
    }

    /// Its name for people: "15 min".
    pub fn label(&self) -> &'static str {
        RANGES
            .iter()
            .find(|(k, _, _)| *k == self.key)
            .map_or(self.key, |r| r.1)
    }
}

/// Links to the same page over each range; `base` is the page's path with any other
/// query parameters (`/ui/services/ledger?x=1` or `/ui/services/ledger`).
pub fn range_selector(current: &Range, base: &str) -> Markup {
    let sep = if base.contains('?') { '&' } else { '?' };
    html! {
        nav.ranges aria-label="time range" {
            "Time range: "
            @for (key, label, _) in RANGES {
                a href=(format!("{base}{sep}range={key}")) class=@if key == current.key { "active" } { (label) }
            }
        }
    }
}

/// Text of a JSON value for a table cell: strings bare, null as an em dash.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What page tests render with: an operator at `now_ms`.
#[cfg(test)]
pub(crate) fn test_ctx(now_ms: i64) -> Ctx {
    Ctx {
        subject: "ops".into(),
        role: "operator".into(),
        now_ms,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> Ctx {
        Ctx {
            subject: "ops-<b>".into(),
            role: "operator".into(),
            killswitch: json!({"engaged": true, "by": "alice"}),
            flash: Some(Flash::Error("refused: <script>".into())),
            now_ms: 0,
            approvals_pending: 2,
            refresh_secs: Some(2),
        }
    }

    #[test]
    fn the_frame_escapes_what_it_shows_and_always_carries_the_kill_switch() {
        let html = page(&ctx(), "Breaks", Nav::Breaks, html! { p { "x" } }).into_string();
        assert!(html.contains("ops-&lt;b&gt;"), "{html}");
        assert!(html.contains("refused: &lt;script&gt;"));
        assert!(!html.contains("<script"));
        assert!(html.contains("KILL SWITCH ENGAGED"));
        assert!(
            html.contains(r#"<a href="/ui/breaks" class="active">"#),
            "{html}"
        );
        assert!(html.contains(r#"<meta http-equiv="refresh" content="2">"#));
        assert!(html.contains(r#"<span class="count">2</span>"#));
    }

    #[test]
    fn a_released_kill_switch_is_still_there_to_pull() {
        let mut c = ctx();
        c.killswitch = json!({"engaged": false});
        let html = page(&c, "Overview", Nav::Overview, html! {}).into_string();
        assert!(html.contains(">Kill switch<"));
        assert!(!html.contains("ENGAGED"));
    }
}
