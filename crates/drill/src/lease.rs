//! A drill's lifecycle as a lease. The component that injects holds the lease and asks it,
//! with its own clock, whether it may still inject: a lease not renewed within its TTL
//! expires by itself, so a drill whose controller is unreachable stops injecting without
//! anyone telling it. Stop is idempotent; the kill switch ends every lease at once.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    Pending,
    Running,
    /// Ended: by a person, by the kill switch, by a guard, by its TTL, or done.
    Ended(Stop),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    Completed,
    Stopped,
    KillSwitch,
    GuardBreached,
    Expired,
    InjectionFailed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub ttl_ms: i64,
    pub state: LeaseState,
    pub started_at: Option<i64>,
    /// The lease runs until this unless renewed.
    pub expires_at: Option<i64>,
    pub ended_at: Option<i64>,
}

impl Lease {
    pub fn new(ttl_secs: u64) -> Lease {
        Lease {
            ttl_ms: ttl_secs as i64 * 1000,
            state: LeaseState::Pending,
            started_at: None,
            expires_at: None,
            ended_at: None,
        }
    }

    /// Starts the lease; refused while the kill switch is engaged or once it has ended.
    pub fn start(&mut self, now: i64, killswitch_engaged: bool) -> Result<(), &'static str> {
        match self.state {
            LeaseState::Pending if killswitch_engaged => {
                Err("the kill switch is engaged; no drill starts until it is released")
            }
            LeaseState::Pending => {
                self.state = LeaseState::Running;
                self.started_at = Some(now);
                self.expires_at = Some(now.saturating_add(self.ttl_ms));
                Ok(())
            }
            LeaseState::Running => Err("the drill is running already"),
            LeaseState::Ended(_) => Err("the drill has ended; create a new one"),
        }
    }

    /// Extends a running lease by its TTL from now (the controller's heartbeat).
    pub fn renew(&mut self, now: i64) -> bool {
        self.tick(now);
        if self.state == LeaseState::Running {
            self.expires_at = Some(now.saturating_add(self.ttl_ms));
            true
        } else {
            false
        }
    }

    /// Ends the lease for `why`; ending an ended lease changes nothing (idempotent), so the
    /// first reason stays.
    pub fn end(&mut self, now: i64, why: Stop) -> LeaseState {
        if !matches!(self.state, LeaseState::Ended(_)) {
            self.state = LeaseState::Ended(why);
            self.ended_at = Some(now);
        }
        self.state
    }

    /// Applies the clock: a running lease past its expiry ends as `Expired` at its expiry.
    pub fn tick(&mut self, now: i64) -> LeaseState {
        if let (LeaseState::Running, Some(exp)) = (self.state, self.expires_at) {
            if now >= exp {
                self.state = LeaseState::Ended(Stop::Expired);
                self.ended_at = Some(exp);
            }
        }
        self.state
    }

    /// Whether the injector may inject now. Checked by the injector before every hit.
    pub fn may_inject(&mut self, now: i64, killswitch_engaged: bool) -> bool {
        if killswitch_engaged {
            self.end(now, Stop::KillSwitch);
        }
        self.tick(now) == LeaseState::Running
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unrenewed_lease_expires_by_itself() {
        let mut l = Lease::new(2);
        l.start(1_000, false).unwrap();
        assert!(l.may_inject(2_999, false));
        assert!(!l.may_inject(3_000, false), "TTL reached with no renewal");
        assert_eq!(
            (l.state, l.ended_at),
            (LeaseState::Ended(Stop::Expired), Some(3_000))
        );
        assert!(!l.renew(3_001), "an expired lease cannot be revived");
    }

    #[test]
    fn renewal_keeps_it_running() {
        let mut l = Lease::new(2);
        l.start(0, false).unwrap();
        for t in (1_000..10_000).step_by(1_000) {
            assert!(l.renew(t));
        }
        assert!(l.may_inject(10_500, false));
    }

    #[test]
    fn stop_is_idempotent_and_the_kill_switch_wins_over_nothing_else() {
        let mut l = Lease::new(60);
        l.start(0, false).unwrap();
        assert_eq!(l.end(10, Stop::Stopped), LeaseState::Ended(Stop::Stopped));
        assert_eq!(l.end(20, Stop::Stopped), LeaseState::Ended(Stop::Stopped));
        assert_eq!(l.ended_at, Some(10));
        let mut k = Lease::new(60);
        k.start(0, false).unwrap();
        assert!(!k.may_inject(5, true));
        assert_eq!(k.state, LeaseState::Ended(Stop::KillSwitch));
    }

    #[test]
    fn no_start_under_the_kill_switch_or_twice() {
        let mut l = Lease::new(60);
        assert!(l.start(0, true).is_err());
        assert_eq!(l.state, LeaseState::Pending);
        l.start(1, false).unwrap();
        assert!(l.start(2, false).is_err());
    }
}
