//! The dashboard over plain HTTP: sign-in and its cookie, every page for a signed-in
//! person, actions through the API's own checks, refusals shown, cross-site posts refused.

use serde_json::json;

use crate::support::{bill, body, payment, TestServer};

/// A browser-like client that does not follow redirects (the tests look at them).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The `name=value` of a Set-Cookie header named `name`, with its attributes.
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_string)
}

struct Browser {
    http: reqwest::Client,
    base: String,
    cookies: Vec<String>,
}

impl Browser {
    fn new(s: &TestServer) -> Browser {
        Browser {
            http: client(),
            base: s.base.clone(),
            cookies: vec![],
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|c| c.split(';').next().unwrap().to_string())
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Keeps what the answer set (a removal clears it).
    fn keep(&mut self, r: &reqwest::Response) {
        for v in r.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap().to_string();
            let name = v.split('=').next().unwrap().to_string();
            self.cookies.retain(|c| !c.starts_with(&format!("{name}=")));
            let value = v.split(';').next().unwrap().split_once('=').unwrap().1;
            if !value.is_empty() {
                self.cookies.push(v);
            }
        }
    }

    async fn get(&mut self, path: &str) -> reqwest::Response {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.keep(&r);
        r
    }

    async fn post(
        &mut self,
        path: &str,
        form: &[(&str, &str)],
        origin: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .form(form);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let r = req.send().await.unwrap();
        self.keep(&r);
        r
    }

    async fn sign_in(&mut self, token: &str) {
        let origin = self.base.clone();
        let r = self
            .post(
                "/ui/signin",
                &[("token", token), ("next", "/ui/breaks")],
                Some(&origin),
            )
            .await;
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()["location"], "/ui/breaks");
    }

    /// Follows an action's redirect and answers the page's text.
    async fn follow(&mut self, r: reqwest::Response) -> String {
        assert_eq!(r.status(), 303, "{:?}", r.headers());
        let to = r.headers()["location"].to_str().unwrap().to_string();
        self.get(&to).await.text().await.unwrap()
    }
}

async fn a_break(s: &TestServer) -> u64 {
    let (status, _) = s
        .post(
            "/api/v1/records",
            body(&[payment("p1", "o1", "10.00"), bill("b1", "o1", "10.01")]),
        )
        .await;
    assert_eq!(status, 200);
    s.wait_breaks("status=open", |b| !b.is_empty()).await[0]["id"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn pages_need_a_session_and_sign_in_keeps_a_strict_http_only_cookie() {
    let s = TestServer::start().await;
    let mut b = Browser::new(&s);
    let r = b.get("/ui/breaks").await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/signin?next=%2Fui%2Fbreaks");
    let r = b.get("/ui/signin").await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("API token"));

    // A wrong token is refused with the API's reason, and no session is kept.
    let origin = s.base.clone();
    let r = b
        .post(
            "/ui/signin",
            &[("token", "sft_nope"), ("next", "/ui/")],
            Some(&origin),
        )
        .await;
    assert!(set_cookie(&r, "steadfast_session").is_none());
    let page = b.follow(r).await;
    assert!(page.contains("Not signed in"), "{page}");

    let r = b
        .post(
            "/ui/signin",
            &[("token", &s.token), ("next", "/ui/")],
            Some(&origin),
        )
        .await;
    let cookie = set_cookie(&r, "steadfast_session").expect("a session cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    // Only a path of this server is a place to go back to.
    let r2 = b
        .post(
            "/ui/signin",
            &[("token", &s.token), ("next", "https://evil.example/")],
            Some(&origin),
        )
        .await;
    assert_eq!(r2.headers()["location"], "/ui/");
    let page = b.follow(r).await;
    assert!(page.contains("Signed in as test (admin)"), "{page}");

    for (path, what) in steadfast_server::dashboard::PAGES {
        let r = b.get(path).await;
        assert_eq!(r.status(), 200, "{what}");
        let h = r.headers().clone();
        assert!(
            h["content-type"].to_str().unwrap().starts_with("text/html"),
            "{what}"
        );
        assert!(h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'none'"));
        assert!(h["server-timing"]
            .to_str()
            .unwrap()
            .starts_with("page;dur="));
        let text = r.text().await.unwrap();
        assert!(
            text.contains("Kill switch"),
            "{what}: the kill switch is on every page"
        );
        assert!(!text.contains("<script"), "{what}");
    }
    let css = b.get("/ui/assets/app.css").await;
    assert_eq!(css.status(), 200);
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");

    // Signing out forgets the session.
    let r = b.post("/ui/signout", &[], Some(&origin)).await;
    assert_eq!(r.status(), 303);
    assert_eq!(b.get("/ui/").await.status(), 303);
}

#[tokio::test]
async fn an_action_from_another_site_is_refused_and_one_from_the_dashboard_is_audited() {
    let s = TestServer::start().await;
    let id = a_break(&s).await;
    let mut b = Browser::new(&s);
    b.sign_in(&s.token).await;
    let path = format!("/ui/breaks/{id}/status");
    let form = [("status", "acknowledged"), ("reason", "looking")];
    for origin in [Some("https://evil.example"), None] {
        let r = b.post(&path, &form, origin).await;
        assert_eq!(r.status(), 403, "{origin:?}");
        assert!(r.text().await.unwrap().contains("Nothing was changed"));
    }
    assert_eq!(
        s.get(&format!("/api/v1/breaks/{id}")).await.1["status"],
        "open"
    );

    let origin = s.base.clone();
    let r = b.post(&path, &form, Some(&origin)).await;
    let page = b.follow(r).await;
    assert!(
        page.contains(&format!("Break {id} is now acknowledged")),
        "{page}"
    );
    let (_, brk) = s.get(&format!("/api/v1/breaks/{id}")).await;
    assert_eq!(brk["status"], "acknowledged");
    assert_eq!(brk["status_by"], "test");
    let (_, audit) = s.get("/api/v1/audit?order=newest&limit=5").await;
    let entry = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"].as_str().is_some_and(|a| a.contains("break")))
        .expect("the acknowledgement is audited");
    assert_eq!(entry["actor"], "test");
    // The flash is shown once.
    let again = b
        .get(&format!("/ui/breaks/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(!again.contains("is now acknowledged"));
}

#[tokio::test]
async fn the_breaks_page_lists_the_newest_first() {
    let s = TestServer::start().await;
    let first = a_break(&s).await;
    let (status, _) = s
        .post(
            "/api/v1/records",
            body(&[payment("p2", "o2", "20.00"), bill("b2", "o2", "20.02")]),
        )
        .await;
    assert_eq!(status, 200);
    let both = s.wait_breaks("status=open", |b| b.len() == 2).await;
    let second = both[1]["id"].as_u64().unwrap();
    assert!(second > first);
    let (_, newest) = s.get("/api/v1/breaks?order=newest&limit=1").await;
    assert_eq!(newest[0]["id"].as_u64(), Some(second));
    let (status, e) = s.get("/api/v1/breaks?order=sideways").await;
    assert_eq!(status, 400, "{e}");
    let mut b = Browser::new(&s);
    b.sign_in(&s.token).await;
    let page = b.get("/ui/breaks").await.text().await.unwrap();
    let (at_second, at_first) = (
        page.find(&format!("/ui/breaks/{second}\"")).unwrap(),
        page.find(&format!("/ui/breaks/{first}\"")).unwrap(),
    );
    assert!(at_second < at_first, "newest first");
}

#[tokio::test]
async fn a_viewer_sees_the_refusal_and_nothing_changes() {
    let s = TestServer::start().await;
    let id = a_break(&s).await;
    let viewer = s.token_for("viewer", "vera");
    let mut b = Browser::new(&s);
    b.sign_in(&viewer).await;
    let page = b
        .get(&format!("/ui/breaks/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("Acknowledge"), "the form is there to try");
    let origin = s.base.clone();
    let r = b
        .post(
            &format!("/ui/breaks/{id}/status"),
            &[("status", "resolved"), ("reason", "fixed")],
            Some(&origin),
        )
        .await;
    let page = b.follow(r).await;
    assert!(page.contains("Refused:"), "{page}");
    assert_eq!(
        s.get(&format!("/api/v1/breaks/{id}")).await.1["status"],
        "open"
    );
    // Reading the audit log needs more than a viewer has: the page says so.
    let page = b.get("/ui/audit").await.text().await.unwrap();
    assert!(
        page.contains("Refused:") && page.contains("needs the admin role"),
        "{page}"
    );
}

#[tokio::test]
async fn a_four_eyes_release_says_who_asked_and_who_must_approve() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::support::config(dir.path());
    cfg.approvals.required = vec!["killswitch.release".into()];
    let s = TestServer::start_with(cfg).await;
    let mut b = Browser::new(&s);
    b.sign_in(&s.token).await;
    let origin = s.base.clone();
    let r = b
        .post("/ui/killswitch/pull", &[("reason", "test")], Some(&origin))
        .await;
    let page = b.follow(r).await;
    assert!(page.contains("KILL SWITCH ENGAGED"), "{page}");
    assert_eq!(s.get("/api/v1/killswitch").await.1["engaged"], json!(true));
    let r = b
        .post(
            "/ui/killswitch/release",
            &[("reason", "done")],
            Some(&origin),
        )
        .await;
    let page = b.follow(r).await;
    assert!(page.contains("waiting for a second person"), "{page}");
    assert!(
        page.contains("a different person with the role drill-admin or admin"),
        "{page}"
    );
    assert_eq!(s.get("/api/v1/killswitch").await.1["engaged"], json!(true));

    let page = b.get("/ui/approvals").await.text().await.unwrap();
    assert!(page.contains("killswitch.release"));
    assert!(
        page.contains("Your own request"),
        "no approving one's own request"
    );
    // A second person approves from their own dashboard.
    let bob = s.token_for("drill-admin", "bob");
    let mut b2 = Browser::new(&s);
    b2.sign_in(&bob).await;
    let page = b2.get("/ui/approvals").await.text().await.unwrap();
    assert!(page.contains("Approve"));
    let (_, list) = s.get("/api/v1/approvals?status=pending").await;
    let approval = list[0]["id"].as_u64().unwrap();
    let r = b2
        .post(
            &format!("/ui/approvals/{approval}/approve"),
            &[("reason", "")],
            Some(&origin),
        )
        .await;
    let page = b2.follow(r).await;
    assert!(page.contains("approved and carried out"), "{page}");
    assert_eq!(s.get("/api/v1/killswitch").await.1["engaged"], json!(false));
}
