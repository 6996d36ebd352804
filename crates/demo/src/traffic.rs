//! The simulated users and what they do: a pure, seeded generator of operations and the
//! seasonal rate at which they arrive. It never reads the clock: the driver
//! ([`crate::driver`]) passes simulated time in. The same seed gives the same population
//! and the same sequence of operations.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Monday 2026-01-05 09:00 UTC: simulated time starts on a weekday morning, so the first
/// minutes of a demo show rising traffic.
pub const SIM_EPOCH_MS: i64 = 1_767_603_600_000;
/// Milliseconds in a simulated day.
pub const DAY_MS: i64 = 86_400_000;
/// Payments kept as candidates for a later refund. Older ones are forgotten.
pub const REFUND_CANDIDATES_MAX: usize = 4096;
/// A refund only targets a payment issued at least this many operations earlier, so the
/// payment has almost surely completed.
pub const REFUND_DISTANCE_MIN: u64 = 256;
/// Most users in one population.
pub const USERS_MAX: u32 = 10_000_000;

/// Relative traffic per hour of the day (local simulated time), a payment platform's
/// usual shape: quiet at night, a lunch peak, a bigger evening peak.
const HOUR_WEIGHTS: [u32; 24] = [
    35, 22, 15, 10, 9, 12, 25, 55, 90, 110, 120, 135, 150, 130, 115, 110, 115, 125, 145, 170, 180,
    160, 110, 65,
];
/// Relative traffic per weekday, Monday first: Friday and Saturday are busiest.
const WEEKDAY_WEIGHTS: [u32; 7] = [95, 95, 100, 100, 115, 125, 80];

/// Currencies users hold, with their share (per mille) and ISO 4217 exponent.
/// KWD has three decimals and JPY none, so exact scale handling is exercised all the time.
const CURRENCIES: [(&str, u32, u32); 8] = [
    ("CNY", 430, 2),
    ("USD", 200, 2),
    ("EUR", 120, 2),
    ("GBP", 50, 2),
    ("JPY", 70, 0),
    ("HKD", 60, 2),
    ("SGD", 50, 2),
    ("KWD", 20, 3),
];
/// Price bands in major units (of USD-like currencies) and their share per mille.
const PRICE_BANDS: [(i64, i64, u32); 5] = [
    (1, 20, 350),
    (20, 100, 350),
    (100, 500, 200),
    (500, 2_000, 80),
    (2_000, 10_000, 20),
];

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub vip: bool,
    pub currency: &'static str,
    /// The user's bank account, the payer account of their bills.
    pub account: String,
    /// What the user's money-market wallet holds when the platform starts, in minor units.
    pub wallet_opening_minor: i64,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// A bank card: the payment clears through the card network.
    Card,
    /// Consumer credit: a bill the user pays later, possibly in instalments.
    Credit,
    /// The user's money-market wallet balance.
    Wallet,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Card => "card",
            Channel::Credit => "credit",
            Channel::Wallet => "wallet",
        }
    }

    pub fn parse(text: &str) -> Option<Channel> {
        match text {
            "card" => Some(Channel::Card),
            "credit" => Some(Channel::Credit),
            "wallet" => Some(Channel::Wallet),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpKind {
    /// Pay a merchant; `instalments` > 1 only with credit.
    Pay {
        channel: Channel,
        merchant: String,
        instalments: u32,
    },
    /// Refund (part of) an earlier payment.
    Refund { order_no: String },
    /// Move money from the bank card into the wallet.
    TopUp,
    /// Move money from the wallet back to the bank card.
    Withdraw,
}

/// One thing one user does.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Op {
    pub seq: u64,
    /// The order number the operation gets on the platform.
    pub order_no: String,
    pub user: usize,
    #[serde(flatten)]
    pub kind: OpKind,
    pub amount_minor: i64,
    pub currency: &'static str,
}

#[derive(Clone, Debug)]
struct PastPay {
    seq: u64,
    order_no: String,
    user: usize,
    amount_minor: i64,
    channel: Channel,
}

/// The population and the seeded sequence of their operations.
pub struct Traffic {
    rng: ChaCha8Rng,
    seed: u64,
    pub users: Vec<User>,
    /// Cumulative selection weights: VIP users act four times as often.
    user_weights: Vec<u64>,
    /// The wallet balance each user would have if every operation so far succeeded; keeps
    /// the generator from asking for withdrawals nobody could make.
    wallet_expected_minor: Vec<i64>,
    past_pays: std::collections::VecDeque<PastPay>,
    next_seq: u64,
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, table: &[(T, u32)]) -> T {
    let total: u32 = table.iter().map(|(_, w)| w).sum();
    let mut x = rng.gen_range(0..total);
    for (v, w) in table {
        if x < *w {
            return *v;
        }
        x -= w;
    }
    table[table.len() - 1].0
}

fn exponent_of(currency: &str) -> u32 {
    CURRENCIES
        .iter()
        .find(|(c, _, _)| *c == currency)
        .map(|(_, _, e)| *e)
        .unwrap_or(2)
}

/// A price in minor units: a band, then a uniform amount inside it. JPY prices are a
/// hundred times the band (one yen is about a cent). No floating point anywhere.
fn price_minor(rng: &mut ChaCha8Rng, currency: &str, vip: bool) -> i64 {
    let bands: Vec<((i64, i64), u32)> = PRICE_BANDS
        .iter()
        .map(|&(lo, hi, w)| {
            // VIP users buy more expensive things.
            let w = if vip && lo >= 100 { w * 8 } else { w };
            ((lo, hi), w)
        })
        .collect();
    let (lo, hi) = pick(rng, &bands);
    let exp = exponent_of(currency);
    let (lo, hi) = if currency == "JPY" {
        (lo * 100, hi * 100)
    } else {
        let unit = 10i64.pow(exp);
        (lo * unit, hi * unit)
    };
    rng.gen_range(lo..hi)
}

impl Traffic {
    /// A population of `users` users, `vip_per_mille` of them VIP, from `seed`.
    pub fn new(seed: u64, users: u32, vip_per_mille: u32) -> Traffic {
        let users = users.clamp(1, USERS_MAX);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let currencies: Vec<(&'static str, u32)> =
            CURRENCIES.iter().map(|&(c, w, _)| (c, w)).collect();
        let mut list = Vec::with_capacity(users as usize);
        let mut weights = Vec::with_capacity(users as usize);
        let mut total = 0u64;
        for i in 0..users {
            let vip = rng.gen_range(0..1000) < vip_per_mille.min(1000);
            let currency = pick(&mut rng, &currencies);
            let opening = price_minor(&mut rng, currency, vip) * 3;
            list.push(User {
                id: format!("u-{i:07}"),
                vip,
                currency,
                account: format!("ACC-{:08}", rng.gen_range(0..100_000_000u32)),
                wallet_opening_minor: opening,
            });
            total += if vip { 4 } else { 1 };
            weights.push(total);
        }
        let wallet_expected_minor = list.iter().map(|u| u.wallet_opening_minor).collect();
        Traffic {
            rng,
            seed,
            users: list,
            user_weights: weights,
            wallet_expected_minor,
            past_pays: std::collections::VecDeque::new(),
            next_seq: 0,
        }
    }

    /// The population's wallets as the platform opens them: user id, currency, opening
    /// balance in minor units.
    pub fn wallets(&self) -> Vec<(String, &'static str, i64)> {
        self.users
            .iter()
            .map(|u| (u.id.clone(), u.currency, u.wallet_opening_minor))
            .collect()
    }

    fn pick_user(&mut self) -> usize {
        let total = *self.user_weights.last().expect("at least one user");
        let x = self.rng.gen_range(0..total);
        self.user_weights.partition_point(|&w| w <= x)
    }

    /// The next operation. Deterministic for a given seed and call count.
    pub fn next_op(&mut self) -> Op {
        let seq = self.next_seq;
        self.next_seq += 1;
        let order_no = format!("ord-{:x}-{seq:09}", self.seed & 0xffff_ffff);
        let roll = self.rng.gen_range(0..1000u32);
        let refundable = self
            .past_pays
            .front()
            .is_some_and(|p| p.seq + REFUND_DISTANCE_MIN <= seq);
        if roll < 60 && refundable {
            let past = self.past_pays.pop_front().expect("checked above");
            // One refund in three is partial (half, rounded down to the minor unit).
            let amount = if self.rng.gen_range(0..3) == 0 {
                (past.amount_minor / 2).max(1)
            } else {
                past.amount_minor
            };
            if past.channel == Channel::Wallet {
                self.wallet_expected_minor[past.user] += amount;
            }
            let currency = self.users[past.user].currency;
            return Op {
                seq,
                order_no,
                user: past.user,
                kind: OpKind::Refund {
                    order_no: past.order_no,
                },
                amount_minor: amount,
                currency,
            };
        }
        let user = self.pick_user();
        let currency = self.users[user].currency;
        let vip = self.users[user].vip;
        let amount = price_minor(&mut self.rng, currency, vip);
        let balance = self.wallet_expected_minor[user];
        let kind = if roll < 200 {
            OpKind::TopUp
        } else if roll < 300 && balance >= amount {
            OpKind::Withdraw
        } else if roll < 300 {
            OpKind::TopUp
        } else {
            let channel = pick(
                &mut self.rng,
                &[
                    (Channel::Card, 500),
                    (Channel::Credit, 300),
                    (Channel::Wallet, 200),
                ],
            );
            let channel = if channel == Channel::Wallet && balance < amount {
                Channel::Card
            } else {
                channel
            };
            let instalments = if channel == Channel::Credit && self.rng.gen_range(0..10) < 3 {
                pick(&mut self.rng, &[(3u32, 5), (6, 3), (12, 2)])
            } else {
                1
            };
            let merchant = format!("m-{:04}", self.rng.gen_range(0..2000u32));
            OpKind::Pay {
                channel,
                merchant,
                instalments,
            }
        };
        match &kind {
            OpKind::TopUp => self.wallet_expected_minor[user] += amount,
            OpKind::Withdraw => self.wallet_expected_minor[user] -= amount,
            OpKind::Pay { channel, .. } => {
                if *channel == Channel::Wallet {
                    self.wallet_expected_minor[user] -= amount;
                }
                if self.past_pays.len() == REFUND_CANDIDATES_MAX {
                    self.past_pays.pop_front();
                }
                // One payment in five becomes a refund candidate; the queue is in issue
                // order, so the oldest candidate is refunded first.
                if self.rng.gen_range(0..5) == 0 {
                    self.past_pays.push_back(PastPay {
                        seq,
                        order_no: order_no.clone(),
                        user,
                        amount_minor: amount,
                        channel: *channel,
                    });
                }
            }
            OpKind::Refund { .. } => {}
        }
        Op {
            seq,
            order_no,
            user,
            kind,
            amount_minor: amount,
            currency,
        }
    }
}

/// The traffic multiplier at simulated time `sim_ms`, relative to the long-run average
/// (1.0): hour-of-day and weekday seasonality, linearly interpolated between hours.
pub fn seasonal_factor(sim_ms: i64) -> f64 {
    let day = sim_ms.div_euclid(DAY_MS);
    let in_day = sim_ms.rem_euclid(DAY_MS);
    // 1970-01-01 was a Thursday: day 0 is weekday index 3 (Monday = 0).
    let weekday = (day + 3).rem_euclid(7) as usize;
    let hour = (in_day / 3_600_000) as usize;
    let frac = (in_day % 3_600_000) as f64 / 3_600_000.0;
    let h0 = HOUR_WEIGHTS[hour] as f64;
    let h1 = HOUR_WEIGHTS[(hour + 1) % 24] as f64;
    let hour_mean = HOUR_WEIGHTS.iter().sum::<u32>() as f64 / 24.0;
    let week_mean = WEEKDAY_WEIGHTS.iter().sum::<u32>() as f64 / 7.0;
    let h = (h0 + (h1 - h0) * frac) / hour_mean;
    h * WEEKDAY_WEIGHTS[weekday] as f64 / week_mean
}

/// Simulated time `elapsed_ms` of wall time after the start, when a simulated day lasts
/// `day_secs` seconds.
pub fn sim_time_ms(elapsed_ms: i64, day_secs: u64) -> i64 {
    let day_secs = day_secs.max(1) as i128;
    SIM_EPOCH_MS + (elapsed_ms as i128 * 86_400 / day_secs) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_traffic() {
        let mut a = Traffic::new(7, 500, 50);
        let mut b = Traffic::new(7, 500, 50);
        assert_eq!(a.users, b.users);
        let xs: Vec<Op> = (0..5000).map(|_| a.next_op()).collect();
        let ys: Vec<Op> = (0..5000).map(|_| b.next_op()).collect();
        assert_eq!(xs, ys);
        let mut c = Traffic::new(8, 500, 50);
        let zs: Vec<Op> = (0..5000).map(|_| c.next_op()).collect();
        assert_ne!(xs, zs);
    }

    #[test]
    fn the_mix_has_every_behaviour_and_vips_spend_more() {
        let mut t = Traffic::new(1, 2000, 50);
        let ops: Vec<Op> = (0..50_000).map(|_| t.next_op()).collect();
        let count = |f: &dyn Fn(&Op) -> bool| ops.iter().filter(|o| f(o)).count();
        let refunds = count(&|o| matches!(o.kind, OpKind::Refund { .. }));
        let topups = count(&|o| o.kind == OpKind::TopUp);
        let withdraws = count(&|o| o.kind == OpKind::Withdraw);
        let instalments =
            count(&|o| matches!(o.kind, OpKind::Pay { instalments, .. } if instalments > 1));
        let wallet = count(&|o| {
            matches!(
                o.kind,
                OpKind::Pay {
                    channel: Channel::Wallet,
                    ..
                }
            )
        });
        for (name, n) in [
            ("refunds", refunds),
            ("top-ups", topups),
            ("withdrawals", withdraws),
            ("instalment plans", instalments),
            ("wallet payments", wallet),
        ] {
            assert!(n > 1000, "{name}: {n}");
        }
        let vips = t.users.iter().filter(|u| u.vip).count();
        assert!((50..200).contains(&vips), "{vips} VIP users of 2000");
        let mean = |vip: bool| {
            let xs: Vec<i64> = ops
                .iter()
                .filter(|o| t.users[o.user].vip == vip && o.currency == "USD")
                .map(|o| o.amount_minor)
                .collect();
            xs.iter().sum::<i64>() / xs.len().max(1) as i64
        };
        assert!(mean(true) * 2 > mean(false) * 3, "VIP users spend more");
        // Every amount fits its currency's scale by construction and is positive.
        assert!(ops.iter().all(|o| o.amount_minor > 0));
    }

    #[test]
    fn refunds_name_earlier_payments_of_the_same_user() {
        let mut t = Traffic::new(3, 100, 50);
        let ops: Vec<Op> = (0..20_000).map(|_| t.next_op()).collect();
        for op in &ops {
            if let OpKind::Refund { order_no } = &op.kind {
                let paid = ops
                    .iter()
                    .find(|p| &p.order_no == order_no)
                    .expect("refund of a known order");
                assert!(paid.seq + REFUND_DISTANCE_MIN <= op.seq);
                assert_eq!(paid.user, op.user);
                assert!(op.amount_minor <= paid.amount_minor);
            }
        }
    }

    #[test]
    fn traffic_peaks_in_the_evening_and_averages_one() {
        let at =
            |day: i64, hour: i64| SIM_EPOCH_MS - 9 * 3_600_000 + day * DAY_MS + hour * 3_600_000;
        assert!(seasonal_factor(at(0, 20)) > 1.4);
        assert!(seasonal_factor(at(0, 4)) < 0.15);
        assert!(seasonal_factor(at(4, 20)) > seasonal_factor(at(6, 20)));
        let week: f64 = (0..7 * 24 * 60)
            .map(|m| seasonal_factor(at(0, 0) + m * 60_000))
            .sum::<f64>()
            / (7.0 * 24.0 * 60.0);
        assert!((week - 1.0).abs() < 0.01, "{week}");
        assert_eq!(sim_time_ms(1000, 864), SIM_EPOCH_MS + 100_000);
    }
}
