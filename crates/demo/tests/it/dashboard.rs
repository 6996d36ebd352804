//! The web dashboard in headless Chromium against the running demo platform: sign in with
//! the demo's token, load every page without a console error, acknowledge a break, create,
//! start and stop a lossless drill, search a VIP user's journey, see a service's learned
//! baselines with the alerts a slow database raises, be refused an action by a viewer's
//! role, and request a four-eyes release of the kill switch. Every page is saved as a
//! screenshot under `target/tmp/dashboard/`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fantoccini::Locator;
use serde_json::{json, Value};

use crate::support::{browser_present, Browser, Rig};

/// Operations per second: enough spans per detector interval for stable percentiles.
const RATE: f64 = 60.0;

fn shots_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A browser on the dashboard, checking each page it loads.
struct Ui<'a> {
    b: &'a Browser,
    base: String,
    shots: PathBuf,
}

impl Ui<'_> {
    async fn goto(&self, path: &str) {
        self.b
            .client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap();
        self.loaded(path).await;
    }

    /// The page in the browser now: it has a heading and logged no error.
    async fn loaded(&self, what: &str) {
        self.b
            .client
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css("main h1"))
            .await
            .unwrap_or_else(|e| panic!("{what}: no page heading: {e}"));
        let errors: Vec<(String, String)> = self
            .b
            .console()
            .await
            .into_iter()
            .filter(|(level, _)| level == "SEVERE" || level == "ERROR")
            .collect();
        assert!(errors.is_empty(), "{what}: console errors {errors:#?}");
    }

    async fn text(&self) -> String {
        self.b
            .client
            .find(Locator::Css("body"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn has(&self, css: &str) -> bool {
        !self
            .b
            .client
            .find_all(Locator::Css(css))
            .await
            .unwrap()
            .is_empty()
    }

    /// Saves the whole page (the window grown to its height) as `name.png`.
    async fn shot(&self, name: &str) {
        let c = &self.b.client;
        let h = c
            .execute("return document.documentElement.scrollHeight", vec![])
            .await
            .unwrap()
            .as_u64()
            .unwrap_or(900)
            .clamp(600, 6000);
        c.set_window_size(1366, h as u32 + 40).await.unwrap();
        let png = c.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
        c.set_window_size(1366, 900).await.unwrap();
    }

    async fn fill(&self, css: &str, text: &str) {
        let e = self.b.client.find(Locator::Css(css)).await.unwrap();
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }

    /// Clicks and waits for the page the click leads to (every click here submits a
    /// form): the page it leaves is marked first, so its heading is not taken for the
    /// next page's.
    async fn click(&self, css: &str) {
        let c = &self.b.client;
        c.execute("document.documentElement.dataset.left = 'no'", vec![])
            .await
            .unwrap();
        c.find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap();
        wait_for(&format!("{css}: a new page"), 30, async || {
            let arrived = c
                .execute(
                    "return document.readyState === 'complete' \
                     && document.documentElement.dataset.left === undefined",
                    vec![],
                )
                .await
                .ok()
                .and_then(|v| v.as_bool());
            (arrived == Some(true)).then_some(())
        })
        .await;
        self.loaded(css).await;
    }

    async fn flash(&self) -> String {
        match self.b.client.find(Locator::Css(".flash")).await {
            Ok(e) => e.text().await.unwrap(),
            Err(_) => String::new(),
        }
    }

    async fn sign_in(&self, token: &str) {
        self.goto("/ui/").await;
        let url = self.b.client.current_url().await.unwrap();
        assert_eq!(url.path(), "/ui/signin", "not signed in: the sign-in page");
        self.fill("input[name=token]", token).await;
        self.click("#signin-token button").await;
        let flash = self.flash().await;
        assert!(flash.starts_with("Signed in as"), "{flash}");
    }
}

async fn wait_for<T>(what: &str, secs: u64, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_a_real_browser_against_the_demo() {
    if !browser_present() {
        return;
    }
    let rig = Rig::start_alone(11, 1_000, true, |c| {
        c.insight.interval_ms = 250;
        c.insight.lateness_ms = 1_500;
        c.insight.map_refresh_secs = 2;
        c.approvals.required = vec!["killswitch.release".into()];
    })
    .await;
    let (stop, rx) = tokio::sync::watch::channel(false);
    let check = async {
        let chromium = Browser::start().await;
        let ui = Ui {
            b: &chromium,
            base: rig.base.clone(),
            shots: shots_dir(),
        };
        ui.sign_in(&rig.token).await;
        // A lossless drill from its template: create, start, watch, stop, report.
        ui.goto(&format!(
            "/ui/drills?template={}",
            steadfast_web::fmt::enc("bills a cent high (lossless)")
        ))
        .await;
        ui.shot("drills").await;
        ui.click("#new-drill button[type=submit]").await;
        let url = ui.b.client.current_url().await.unwrap();
        let id = url
            .path()
            .strip_prefix("/ui/drills/")
            .unwrap_or_else(|| panic!("created: on the drill's page, not {url}"))
            .to_string();
        ui.click("form[action$='/start'] button").await;
        // The start is answered by a redirect to the drill's page; under load the
        // browser may still be on its way there.
        wait_for("the drill running", 20, async || {
            let d = rig.get(&format!("/api/v1/drills/{id}")).await;
            (d["state"] == "running").then_some(())
        })
        .await;
        wait_for("forged faults found", 30, async || {
            let found = rig.get(&format!("/api/v1/breaks?drill={id}")).await;
            (found.as_array()?.len() >= 5).then_some(())
        })
        .await;
        ui.goto(&format!("/ui/drills/{id}")).await;
        ui.shot("drill-live").await;
        ui.click("form[action$='/stop'] button").await;
        let d = rig.get(&format!("/api/v1/drills/{id}")).await;
        assert!(
            matches!(d["state"].as_str(), Some("stopped" | "completed")),
            "{}",
            d["state"]
        );
        ui.goto(&format!("/ui/drills/{id}")).await;
        assert!(
            ui.has("figure.chart svg.chart-timeline").await,
            "the drill timeline"
        );
        ui.shot("drill-report").await;

        // Meanwhile the detectors learned the clean platform (as in the insight tests).
        wait_for("an accounting latency baseline", 120, async || {
            let v = rig
                .get_opt("/api/v1/series?service=accounting&metric=latency_ms_p95")
                .await?;
            (v["points"].as_array()?.len() >= 120).then_some(())
        })
        .await;
        // A corrupted bill or two: amount breaks to work.
        let billing = rig.platform().endpoints.billing.clone();
        let (s, _) = rig
            .admin(
                &format!("{billing}/admin/faults"),
                json!({"corrupt_amount_minor": 1}),
            )
            .await;
        assert_eq!(s, 200);
        let brk = wait_for("an amount break", 30, async || {
            let list = rig
                .get("/api/v1/breaks?kind=amount_mismatch&status=open")
                .await;
            list.as_array()?.first()?["id"].as_u64()
        })
        .await;
        rig.admin(
            &format!("{billing}/admin/faults"),
            json!({"corrupt_amount_minor": 0}),
        )
        .await;
        // A slow database: alerts on the baselines, one incident with its analysis.
        let accounting = rig.platform().endpoints.accounting.clone();
        rig.admin(
            &format!("{accounting}/admin/faults"),
            json!({"slow_db_ms": 150}),
        )
        .await;
        let incident = wait_for("an incident naming accounting", 60, async || {
            let list = rig.get("/api/v1/incidents").await;
            let i = list.as_array()?.first()?.clone();
            (i["analysis"]["ranking"][0]["service"] == "accounting").then_some(i)
        })
        .await;

        ui.goto("/ui/").await;
        ui.shot("overview").await;
        let text = ui.text().await;
        assert!(text.contains("Fund links"), "{text}");
        assert!(
            ui.has("figure.chart svg.chart-bars").await,
            "the overview's chart"
        );

        // Breaks: the list, the evidence side by side, acknowledge with a reason.
        ui.goto("/ui/breaks?kind=amount_mismatch").await;
        assert!(ui.has(&format!("a[href='/ui/breaks/{brk}']")).await);
        ui.shot("breaks").await;
        ui.goto(&format!("/ui/breaks/{brk}")).await;
        assert!(
            ui.has("td.differs").await,
            "the differing amount is highlighted"
        );
        ui.shot("break-evidence").await;
        ui.fill("#ack input[name=reason]", "checking billing's writer")
            .await;
        ui.click("#ack button").await;
        let flash = ui.flash().await;
        assert!(flash.contains("acknowledged"), "{flash}");
        let b = rig.get(&format!("/api/v1/breaks/{brk}")).await;
        assert_eq!(b["status"], "acknowledged");
        assert_eq!(b["status_reason"], "checking billing's writer");

        // The service map, and a service's baselines with the alerts drawn on them.
        ui.goto("/ui/services?range=15m").await;
        assert!(ui.has("a[href='/ui/services/accounting']").await);
        assert!(
            ui.has("figure.chart svg.chart-map").await,
            "the service map"
        );
        ui.shot("service-map").await;
        ui.goto("/ui/services/accounting?range=5m").await;
        let charts =
            ui.b.client
                .find_all(Locator::Css("figure.chart svg.chart-time"))
                .await
                .unwrap()
                .len();
        assert!(charts >= 2, "latency and request charts: {charts}");
        ui.shot("service-baselines").await;

        // Journeys: VIP users first; a user's waterfall.
        ui.goto("/ui/journeys").await;
        ui.shot("journeys").await;
        // The demo's VIPs (5 % of users, marked by their app) lead the list.
        let users = rig
            .get(&format!(
                "/api/v1/journeys/users?since_ms={}",
                wall_ms() - 3_600_000
            ))
            .await;
        let list = users.as_array().unwrap();
        assert_eq!(list[0]["vip"], true, "VIP users first: {list:?}");
        let first =
            ui.b.client
                .find(Locator::Css("td a[href^='/ui/journeys?user=']"))
                .await
                .unwrap();
        let user = first.text().await.unwrap();
        let row =
            ui.b.client
                .find(Locator::Css("tbody tr"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
        assert!(
            row.contains("VIP"),
            "the first user listed is marked VIP: {row}"
        );
        ui.fill("input[name=user]", &user).await;
        ui.click("form[action='/ui/journeys'] button").await;
        assert!(
            ui.has("figure.chart svg.chart-waterfall").await,
            "the journey waterfall"
        );
        ui.shot("journey").await;

        // Incidents: the ranking and the runbooks.
        ui.goto("/ui/incidents").await;
        ui.shot("incidents").await;
        ui.goto(&format!("/ui/incidents/{}", incident["id"])).await;
        let text = ui.text().await;
        assert!(text.contains("accounting"), "{text}");
        ui.shot("incident").await;

        // The audit log shows what the browser did.
        ui.goto("/ui/audit").await;
        let text = ui.text().await;
        assert!(text.contains("drill.start"), "{text}");
        ui.shot("audit").await;

        // Four-eyes: pulling the kill switch is immediate; releasing it waits for a
        // second person, and the page says who asked and who must approve.
        ui.goto("/ui/killswitch").await;
        ui.fill(
            "form[action='/ui/killswitch/pull'] input[name=reason]",
            "test pull",
        )
        .await;
        ui.click("form[action='/ui/killswitch/pull'] button").await;
        assert!(ui.text().await.contains("KILL SWITCH ENGAGED"));
        assert_eq!(rig.get("/api/v1/killswitch").await["engaged"], true);
        ui.fill(
            "form[action='/ui/killswitch/release'] input[name=reason]",
            "drills may resume",
        )
        .await;
        ui.click("form[action='/ui/killswitch/release'] button")
            .await;
        let flash = ui.flash().await;
        assert!(
            flash.contains("waiting for a second person") && flash.contains("drill-admin"),
            "{flash}"
        );
        assert_eq!(rig.get("/api/v1/killswitch").await["engaged"], true);
        ui.goto("/ui/approvals").await;
        let text = ui.text().await;
        assert!(text.contains("Your own request"), "{text}");
        assert!(text.contains("a different person with the role"), "{text}");
        ui.shot("approvals").await;

        // A viewer may look but not act: the refusal is shown, nothing changes.
        let r = rig
            .http
            .post(format!("{}/api/v1/tokens", rig.base))
            .bearer_auth(&rig.token)
            .json(&json!({"subject": "vera", "name": "viewer", "role": "viewer"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let viewer = r.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_string();
        ui.click("form[action='/ui/signout'] button").await;
        ui.sign_in(&viewer).await;
        ui.goto(&format!("/ui/breaks/{brk}")).await;
        ui.fill("#resolve input[name=reason]", "fixed").await;
        ui.click("#resolve button").await;
        let flash = ui.flash().await;
        assert!(flash.starts_with("Refused"), "{flash}");
        assert_eq!(
            rig.get(&format!("/api/v1/breaks/{brk}")).await["status"],
            "acknowledged"
        );
        ui.shot("refused").await;
        chromium.close().await;
        stop.send(true).unwrap();
    };
    tokio::join!(rig.drive_until(RATE, rx), check);
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
