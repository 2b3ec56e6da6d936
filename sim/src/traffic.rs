//! What each simulated account sends on a given day: its usage and account events.

use chrono::{DateTime, Duration as ChronoDuration, DurationRound, Utc};
use meterline_client::{AccountEvent, UsageEvent};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::population::*;

/// Events of one account on one day (`days_ago` = 0 is today, up to now).
pub struct DayEvents {
    pub accounts: Vec<AccountEvent>,
    pub usage: Vec<UsageEvent>,
}

fn ip(tag_hash: u8, index: usize) -> String {
    format!("10.{tag_hash}.{}.{}", (index / 250) % 250, index % 250 + 1)
}

fn tag_hash(tag: &str) -> u8 {
    tag.bytes()
        .fold(7u8, |h, b| h.wrapping_mul(31).wrapping_add(b))
}

struct Gen<'a> {
    a: &'a SimAccount,
    tag: &'a str,
    rng: StdRng,
    out: DayEvents,
    prompt: u64,
}

impl Gen<'_> {
    fn usage(&mut self, at: DateTime<Utc>, input: u64, output: u64) -> &mut UsageEvent {
        let a = self.a;
        let mut e = UsageEvent::new(
            &a.id,
            &format!("key-{}", a.id),
            "gw-sim-1",
            "us-east-1",
            "aws",
            "openai",
            "gpt-4o-mini",
            input,
            output,
        );
        e.occurred_at = at;
        e.cost_micros = Some((input + 3 * output) / 10);
        e.status = Some(200);
        e.latency_ms = Some(self.rng.random_range(80..1_500));
        e.client_ip = Some(ip(tag_hash(self.tag), a.index));
        self.prompt += 1;
        e.prompt_hash = Some(format!("p-{}-{}", a.index, self.prompt));
        self.out.usage.push(e);
        self.out.usage.last_mut().expect("just pushed")
    }

    fn account(&mut self, at: DateTime<Utc>, kind: &str) -> &mut AccountEvent {
        let mut e = AccountEvent::new(&self.a.id, kind);
        e.occurred_at = at;
        self.out.accounts.push(e);
        self.out.accounts.last_mut().expect("just pushed")
    }

    fn signup(&mut self, at: DateTime<Utc>, plan: &str) -> &mut AccountEvent {
        let (a, tag) = (self.a, self.tag);
        let e = self.account(at, "signup");
        e.plan = Some(plan.into());
        e.email_domain = Some(format!("{}.example", a.id));
        e.signup_ip = Some(ip(tag_hash(tag), a.index));
        e.device_id = Some(format!("dev-{tag}-{}", a.index));
        e.browser_signature = Some(format!("br-{tag}-{}", a.index));
        e
    }

    /// A quiet working day: `n` requests between 09:00 and 18:00.
    fn workday(&mut self, day: DateTime<Utc>, n: u32, tokens: std::ops::Range<u64>) {
        for _ in 0..n {
            let at = day + ChronoDuration::seconds(self.rng.random_range(9 * 3600..18 * 3600));
            let input = self.rng.random_range(tokens.clone());
            let output = input / 4;
            self.usage(at, input, output);
        }
    }

    /// Today: two ordinary sessions ten minutes apart, five requests ten seconds apart each.
    fn sessions_today(&mut self, c: &Clock) {
        for s in 0..2 {
            let start = c.recent(40 - 10 * s);
            for i in 0..5 {
                let e = self.usage(start + ChronoDuration::seconds(i * 10), 800, 200);
                e.session_id = Some(format!("s{s}"));
            }
        }
    }
}

/// What `a` does `days_ago` days ago (0: today, up to `c.now`), in a `days`-day simulation.
pub fn day_events(a: &SimAccount, tag: &str, c: &Clock, days: u32, days_ago: u32) -> DayEvents {
    let mut g = Gen {
        a,
        tag,
        rng: StdRng::seed_from_u64(
            a.seed ^ u64::from(days_ago).wrapping_mul(0xA24B_AED4_963E_E407),
        ),
        out: DayEvents {
            accounts: vec![],
            usage: vec![],
        },
        prompt: u64::from(days_ago) * 10_000,
    };
    let first = days_ago == days;
    let day = c.day(days_ago);
    let long_ago = c.now - ChronoDuration::days(i64::from(days) + 1);
    match a.behaviour {
        Behaviour::Steady | Behaviour::Pii => {
            if first {
                g.signup(long_ago, "free");
            }
            if days_ago > 0 {
                let n = g.rng.random_range(3..=12);
                g.workday(day, n, 200..2_000);
            } else {
                g.sessions_today(c);
                if a.behaviour == Behaviour::Pii {
                    for i in 0..6 {
                        let e = g.usage(c.recent(20) + ChronoDuration::seconds(i), 500, 100);
                        e.pii_detected = true;
                    }
                }
            }
        }
        Behaviour::Trajectory => {
            if first {
                g.signup(long_ago, "free");
            }
            if days_ago > 0 {
                // Daily volume grows steadily towards the month's allowance.
                let daily = 20_000 + 3_000 * u64::from(days - days_ago);
                for i in 0..10 {
                    g.usage(
                        day + ChronoDuration::hours(10) + ChronoDuration::minutes(i),
                        daily / 10,
                        0,
                    );
                }
            } else {
                g.sessions_today(c);
            }
        }
        Behaviour::Collision => {
            // Signed up this morning and already near the day's budget.
            if days_ago == 0 {
                g.signup((c.now - ChronoDuration::hours(10)).max(c.today), "free");
                for i in 0..10 {
                    g.usage(c.recent(30) + ChronoDuration::seconds(i * 20), 9_000, 0);
                }
            }
        }
        Behaviour::Pro => {
            if first {
                let seats = g.rng.random_range(3..=10);
                g.signup(long_ago, "pro").seats = Some(seats);
            }
            if days_ago > 0 {
                let n = g.rng.random_range(10..=25);
                g.workday(day, n, 1_000..8_000);
            } else {
                g.sessions_today(c);
            }
        }
        Behaviour::Converter => {
            if first {
                g.signup(long_ago, "free");
            }
            if days_ago == days / 2 {
                g.account(day + ChronoDuration::hours(12), "upgrade_page_viewed");
                g.account(
                    day + ChronoDuration::hours(12) + ChronoDuration::minutes(5),
                    "plan_changed",
                )
                .plan = Some("pro".into());
            }
            if days_ago > 0 {
                let n = if days_ago < days / 2 { 20 } else { 8 };
                g.workday(day, n, 500..3_000);
            } else {
                g.sessions_today(c);
            }
        }
        Behaviour::Churner => {
            if first {
                g.signup(long_ago, "free");
            }
            if days_ago == 10.min(days) {
                g.account(day + ChronoDuration::hours(8), "churned");
            }
            if days_ago > 10 {
                let n = g.rng.random_range(3..=8);
                g.workday(day, n, 200..1_500);
            }
        }
        Behaviour::EnterpriseReady => {
            if first {
                let e = g.signup(long_ago, "free");
                e.company_size = Some(500);
                e.seats = Some(5);
            }
            if days_ago == 0 {
                // This month: 60M tokens from 25 people, three regions on three clouds, three
                // providers.
                let start = c.month.max(c.now - ChronoDuration::days(20));
                let span = (c.now - ChronoDuration::minutes(2) - start)
                    .num_seconds()
                    .max(1);
                let regions = ["us-east-1", "europe-west1", "eastasia"];
                let clouds = ["aws", "gcp", "azure"];
                let providers = ["openai", "anthropic", "google"];
                for i in 0..500i64 {
                    let at = start + ChronoDuration::seconds(span * i / 500);
                    let e = g.usage(at, 120_000, 0);
                    e.region = regions[i as usize % 3].into();
                    e.cloud = clouds[i as usize % 3].into();
                    e.provider = providers[i as usize % 3].into();
                    e.user_id = Some(format!("u{}", i % 25));
                }
            }
        }
        Behaviour::PowerUser => {
            if first {
                g.signup(long_ago, "free");
            }
            if days_ago > 0 {
                let n = g.rng.random_range(10..=20);
                g.workday(day, n, 500..3_000);
            } else {
                // Three long sessions today with varied prompts.
                let start = c.recent(45);
                for s in 0..3i64 {
                    for i in 0..9i64 {
                        let e =
                            g.usage(start + ChronoDuration::seconds(s * 30 + i * 60), 1_000, 300);
                        e.session_id = Some(format!("s{s}"));
                    }
                }
            }
        }
        Behaviour::Abuser => {
            if days_ago == 0 {
                // Signed up half an hour ago; eight sessions a second apart, one prompt.
                g.signup(c.recent(30), "free");
                let start = c.recent(20);
                for i in 0..16i64 {
                    let e = g.usage(start + ChronoDuration::seconds(i / 2), 400, 100);
                    e.session_id = Some(format!("s{}", i / 2));
                    e.prompt_hash = Some("same-prompt".into());
                }
            }
        }
        Behaviour::SharedKey => {
            if first {
                g.signup(long_ago, "free");
            }
            if days_ago > 0 {
                let n = g.rng.random_range(3..=10);
                g.workday(day, n, 200..2_000);
            } else {
                // One key from six client IPs within one clock minute (the scorer groups by
                // minute, so the burst must not straddle a minute boundary).
                let minute = c
                    .recent(5)
                    .duration_trunc(ChronoDuration::minutes(1))
                    .unwrap_or(c.today);
                for i in 0..6i64 {
                    let e = g.usage(minute + ChronoDuration::seconds(i * 5), 300, 50);
                    e.client_ip = Some(format!("203.0.113.{}", 10 + i));
                }
            }
        }
        Behaviour::MultiAccount => {
            let cluster = a.cluster.unwrap_or(0);
            if days_ago == 5.min(days) {
                let e = g.signup(day + ChronoDuration::hours(14), "free");
                // The cluster shares its signup IP and device; each browser differs.
                e.signup_ip = Some(format!("100.64.{}.{}", cluster / 250, cluster % 250 + 1));
                e.device_id = Some(format!("dev-{tag}-cluster-{cluster}"));
            }
            if days_ago < 5 && days_ago > 0 {
                g.workday(day, 3, 200..1_000);
            }
        }
    }
    g.out
}
