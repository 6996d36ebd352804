//! Sign-in, the kill switch, four-eyes approvals, the audit log, and the pages for a
//! missing object or a refused cross-site request.

use std::collections::HashMap;

use maud::{html, Markup};
use serde_json::Value;

use crate::fmt;
use crate::layout::{bare_page, empty, flash, page, pill, section, text, Ctx, Flash, Nav, Tone};

/// The sign-in page: an API token (the demo prints one), or a local user's name and
/// password. `next` is where to go afterwards.
pub fn signin(next: &str, message: Option<&Flash>) -> Markup {
    bare_page(
        "Sign in",
        html! {
            @if let Some(m) = message { (flash(m)) }
            section {
                h2 { "Sign in with a token" }
                form.stack #signin-token method="post" action="/ui/signin" {
                    input type="hidden" name="next" value=(next);
                    label { "API token"
                        input type="password" name="token" autocomplete="off" required placeholder="sf_…"; }
                    div { button type="submit" { "Sign in" } }
                }
                p.note { "`steadfast demo` prints an admin token when it starts; `steadfast token create` makes others." }
            }
            section {
                h2 { "Or as a local user" }
                form.stack method="post" action="/ui/signin" {
                    input type="hidden" name="next" value=(next);
                    label { "User" input type="text" name="user" autocomplete="username" required; }
                    label { "Password" input type="password" name="password" autocomplete="current-password" required; }
                    div { button type="submit" { "Sign in" } }
                }
            }
        },
    )
}

/// The kill switch: its state, and pulling or releasing it with a reason. The page
/// itself is the confirmation: the header's button only leads here.
pub fn killswitch(ctx: &Ctx) -> Markup {
    let ks = &ctx.killswitch;
    let engaged = ks["engaged"].as_bool().unwrap_or(false);
    let body = html! {
        div.confirm {
            @if engaged {
                p { (pill("ENGAGED", Tone::Bad)) " since " (fmt::time(ks["since"].as_i64().unwrap_or(0))) " UTC, by "
                    strong { (text(&ks["by"])) } ": " (text(&ks["reason"])) }
                p { "Every drill has been stopped and no drill may start, scheduled ones included." }
                form.stack method="post" action="/ui/killswitch/release" {
                    label { "Why is it safe to run drills again?"
                        input type="text" name="reason" required maxlength="500"; }
                    div { button type="submit" { "Release the kill switch" } }
                }
                p.note { "Releasing needs the drill-admin role; where four-eyes is configured for it, a second person must approve on the Approvals page." }
            } @else {
                p { (pill("released", Tone::Good))
                    @if ks["since"].is_number() { " since " (fmt::time(ks["since"].as_i64().unwrap_or(0))) " UTC, by " (text(&ks["by"])) } }
                p { strong { "Pulling it stops every running drill at once" } " (lossy drills stop tampering with traffic at every proxy) and refuses new ones until it is released." }
                form.stack method="post" action="/ui/killswitch/pull" {
                    label { "Reason (required)"
                        input type="text" name="reason" required maxlength="500" placeholder="e.g. customer impact suspected"; }
                    div { button.danger type="submit" { "Pull the kill switch now" } }
                }
                p.note { "Operators and drill admins may pull it; it never waits for approval." }
            }
        }
    };
    page(ctx, "Kill switch", Nav::None, body)
}

/// Four-eyes requests. Each row carries `approvers` (who may decide it, in words),
/// added by the server from its role table.
pub fn approvals(ctx: &Ctx, rows: &Value) -> Markup {
    let rows = rows.as_array().cloned().unwrap_or_default();
    let (pending, decided): (Vec<&Value>, Vec<&Value>) =
        rows.iter().partition(|r| r["status"] == "pending");
    let body = html! {
        p.note { "Actions such as lossy drills, data corrections, releasing the kill switch and runbook execution can be set to need a second person: one requests, another approves. Nobody may approve their own request." }
        (section("Waiting for a decision", html! {
            @if pending.is_empty() {
                (empty("No request is waiting."))
            } @else {
                table {
                    thead { tr { th.num { "#" } th { "Action" } th { "Requested by" } th { "Must be approved by" } th { "Reason" } th { "Expires" } th { "Decide" } } }
                    tbody {
                        @for r in &pending {
                            @let mine = r["requested_by"].as_str() == Some(ctx.subject.as_str());
                            tr {
                                td.num { (text(&r["id"])) }
                                td { strong { (text(&r["action"])) } br; span.note { (text(&r["target"])) } }
                                td { (text(&r["requested_by"])) br; span.note { (fmt::ago(r["requested_at"].as_i64().unwrap_or(0), ctx.now_ms)) } }
                                td { (text(&r["approvers"])) }
                                td { (text(&r["reason"])) }
                                td { (fmt::time(r["expires_at"].as_i64().unwrap_or(0))) }
                                td {
                                    @if mine {
                                        span.note { "Your own request: another person must decide it." }
                                    } @else {
                                        form.action method="post" action=(format!("/ui/approvals/{}/approve", r["id"])) {
                                            input type="text" name="reason" placeholder="note (optional)" maxlength="500";
                                            button type="submit" { "Approve" }
                                        }
                                        form.action method="post" action=(format!("/ui/approvals/{}/reject", r["id"])) {
                                            input type="text" name="reason" placeholder="why (optional)" maxlength="500";
                                            button.danger type="submit" { "Reject" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }))
        (section("Decided", html! {
            @if decided.is_empty() {
                (empty("No request has been decided yet."))
            } @else {
                table {
                    thead { tr { th.num { "#" } th { "Action" } th { "Requested by" } th { "Status" } th { "Decided by" } th { "Result" } } }
                    tbody {
                        @for r in &decided {
                            tr {
                                td.num { (text(&r["id"])) }
                                td { (text(&r["action"])) " " span.note { (text(&r["target"])) } }
                                td { (text(&r["requested_by"])) }
                                td { (pill(r["status"].as_str().unwrap_or("?"), match r["status"].as_str() { Some("approved") => Tone::Good, Some("rejected" | "failed") => Tone::Bad, _ => Tone::Neutral })) }
                                td { (text(&r["decided_by"])) }
                                td { (text(&r["result"])) }
                            }
                        }
                    }
                }
            }
        }))
    };
    page(ctx, "Approvals", Nav::Approvals, body)
}

/// The audit log, newest first, with filters by actor, action and target.
pub fn audit(
    ctx: &Ctx,
    entries: &Value,
    q: &HashMap<String, String>,
    error: Option<&str>,
) -> Markup {
    let entries = entries.as_array().cloned().unwrap_or_default();
    let chosen = |k: &str| q.get(k).cloned().unwrap_or_default();
    let body = html! {
        form.filters method="get" action="/ui/audit" {
            label { "Actor" input type="text" name="actor" value=(chosen("actor")); }
            label { "Action" input type="text" name="action" value=(chosen("action")) placeholder="e.g. drill.start"; }
            label { "Target" input type="text" name="target" value=(chosen("target")) placeholder="e.g. drill d-1"; }
            button type="submit" { "Filter" }
        }
        @if let Some(e) = error {
            (flash(&Flash::Error(e.to_string())))
            p.note { "Reading the audit log needs the admin role." }
        } @else if entries.is_empty() {
            (empty("No audit entry matches."))
        } @else {
            p.note { "Newest first; each entry is hash-chained to the one before (" code { "steadfast audit verify" } " checks the chain)." }
            table {
                thead { tr { th.num { "#" } th { "When" } th { "Who" } th { "Action" } th { "Target" } th { "Result" } th { "Approver" } th { "From" } } }
                tbody {
                    @for e in &entries {
                        tr {
                            td.num { (text(&e["seq"])) }
                            td { (fmt::time(e["at"].as_i64().unwrap_or(0))) }
                            td { (text(&e["actor"])) }
                            td.mono { (text(&e["action"])) }
                            td { (text(&e["target"])) }
                            td { (text(&e["result"])) }
                            td { (text(&e["approver"])) }
                            td.mono { (text(&e["source"])) }
                        }
                    }
                }
            }
        }
    };
    page(ctx, "Audit log", Nav::Audit, body)
}

/// An object the API would not show: missing, or outside the caller's scope.
pub fn not_found(ctx: &Ctx, why: &str) -> Markup {
    page(
        ctx,
        "Not available",
        Nav::None,
        html! { (flash(&Flash::Error(why.to_string()))) p { a href="/ui/" { "Back to the overview" } } },
    )
}

/// A POST that did not come from one of this server's pages.
pub fn refused_cross_site() -> Markup {
    bare_page(
        "Refused",
        html! {
            (flash(&Flash::Error("Refused: this action did not come from a Steadfast page (its Origin names another site). Nothing was changed.".into())))
            p { a href="/ui/" { "Open the dashboard" } }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_request_shows_who_asked_and_who_must_approve_and_never_offers_self_approval() {
        let rows = json!([
            {"id": 3, "action": "killswitch.release", "target": "kill switch", "requested_by": "alice",
             "requested_at": 0, "expires_at": 0, "status": "pending", "reason": "done",
             "approvers": "a different person with the role drill-admin or admin"},
            {"id": 4, "action": "drill.lossy", "target": "drill d-9", "requested_by": "bob",
             "requested_at": 0, "expires_at": 0, "status": "pending", "reason": "weekly"}]);
        let ctx = Ctx {
            subject: "alice".into(),
            ..Ctx::default()
        };
        let html = approvals(&ctx, &rows).into_string();
        assert!(html.contains("a different person with the role drill-admin or admin"));
        assert!(html.contains("Your own request"));
        assert!(!html.contains("/ui/approvals/3/approve"));
        assert!(html.contains("/ui/approvals/4/approve"));
        assert!(html.contains("/ui/approvals/4/reject"));
    }

    #[test]
    fn the_kill_switch_page_asks_for_a_reason_and_says_what_pulling_does() {
        let ctx = Ctx {
            killswitch: json!({"engaged": false}),
            ..Ctx::default()
        };
        let html = killswitch(&ctx).into_string();
        assert!(html.contains(r#"action="/ui/killswitch/pull""#));
        assert!(html.contains("stops every running drill"));
        assert!(html.contains(r#"name="reason" required"#));
        let ctx = Ctx {
            killswitch: json!({"engaged": true, "by": "ops", "reason": "<b>", "since": 0}),
            ..Ctx::default()
        };
        let html = killswitch(&ctx).into_string();
        assert!(html.contains("/ui/killswitch/release"));
        assert!(html.contains("&lt;b&gt;"));
    }

    #[test]
    fn sign_in_returns_to_the_page_asked_for() {
        let html = signin("/ui/breaks?x=\"1\"", None).into_string();
        assert!(
            html.contains(r#"name="next" value="/ui/breaks?x=&quot;1&quot;""#),
            "{html}"
        );
    }
}
