//! The generator of one account's day: addresses, events, and the building blocks the
//! behaviours are made of (work days, CI runs, crowds, fleets, bursts).

use chrono::{DateTime, Datelike, Duration as D, DurationRound, Utc, Weekday};
use meterline_client::{AccountEvent, UsageEvent};
use meterline_schemas::Plan;
use rand::rngs::StdRng;
use rand::Rng;

use super::{DayEvents, Scenario};
use crate::population::*;

pub(super) fn tag_hash(tag: &str) -> u8 {
    tag.bytes()
        .fold(7u8, |h, b| h.wrapping_mul(31).wrapping_add(b))
}

/// The account's own address (one per account).
pub(super) fn own_ip(tag: &str, index: usize) -> String {
    format!(
        "10.{}.{}.{}",
        tag_hash(tag),
        (index / 250) % 250,
        index % 250 + 1
    )
}

/// An address of a member of a crowd: every one on its own network.
pub(super) fn crowd_ip(tag: &str, index: usize, person: usize) -> String {
    let n = index * 97 + person * 13 + usize::from(tag_hash(tag));
    format!(
        "{}.{}.{}.{}",
        11 + n % 200,
        (person * 7 + index) % 250,
        (n / 200) % 250,
        person % 250 + 1
    )
}

/// Pod `p` of the account's server fleet: one /24.
pub(super) fn pod_ip(tag: &str, index: usize, pod: usize) -> String {
    format!(
        "172.{}.{}.{}",
        16 + (usize::from(tag_hash(tag)) + index / 250) % 16,
        index % 250,
        10 + pod
    )
}

pub(super) const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-southeast-1"];
pub(super) const CLOUDS: [&str; 3] = ["aws", "gcp", "azure"];
pub(super) const PROVIDERS: [&str; 3] = ["openai", "anthropic", "google"];

pub(super) struct Gen<'a> {
    pub(super) a: &'a SimAccount,
    pub(super) s: &'a Scenario,
    pub(super) rng: StdRng,
    pub(super) out: DayEvents,
    pub(super) prompt: u64,
}

impl Gen<'_> {
    pub(super) fn c(&self) -> &Clock {
        &self.s.clock
    }

    pub(super) fn usage(&mut self, at: DateTime<Utc>, input: u64, output: u64) -> &mut UsageEvent {
        let a = self.a;
        let mut e = UsageEvent::new(
            &a.id,
            &format!("key-{}", a.id),
            "gw-sim-1",
            REGIONS[0],
            CLOUDS[0],
            PROVIDERS[0],
            "gpt-4o-mini",
            input,
            output,
        );
        e.occurred_at = at.min(self.s.clock.now);
        e.cost_micros = Some((input + 3 * output) / 10);
        e.status = Some(200);
        e.latency_ms = Some(self.rng.random_range(80..1_500));
        e.client_ip = Some(own_ip(&self.s.tag, a.index));
        self.prompt += 1;
        e.prompt_hash = Some(format!("p-{}-{}", a.index, self.prompt));
        self.out.usage.push(e);
        self.out.usage.last_mut().expect("just pushed")
    }

    pub(super) fn account(&mut self, at: DateTime<Utc>, kind: &str) -> &mut AccountEvent {
        let mut e = AccountEvent::new(&self.a.id, kind);
        e.occurred_at = at;
        self.out.accounts.push(e);
        self.out.accounts.last_mut().expect("just pushed")
    }

    /// A signup with the account's own fingerprint (IP, device, browser) and email domain.
    pub(super) fn signup(&mut self, at: DateTime<Utc>, plan: Plan) -> &mut AccountEvent {
        let (a, tag) = (self.a, self.s.tag.clone());
        let e = self.account(at, "signup");
        e.plan = Some(plan.as_str().into());
        e.email_domain = Some(a.email_domain.clone());
        e.signup_ip = Some(own_ip(&tag, a.index));
        e.device_id = Some(format!("dev-{tag}-{}", a.index));
        e.browser_signature = Some(format!("br-{tag}-{}", a.index));
        e
    }

    /// A long-standing customer: signed up last year on the free plan, on its plan for months
    /// (or 34 and 33 days ago, while ingest refuses older account events).
    pub(super) fn history(&mut self, seats: u64, company: u64) {
        let now = self.c().now;
        let (signed_up, changed) = if self.s.old_history {
            (now - D::days(400), now - D::days(120))
        } else {
            (now - D::days(34), now - D::days(33))
        };
        let plan = self.a.plan;
        let e = self.signup(signed_up, Plan::Free);
        e.seats = Some(seats);
        e.company_size = Some(company);
        self.account(changed, "plan_changed").plan = Some(plan.as_str().into());
    }

    /// A working-day time for this account (its time zone shifts the hours), never after now.
    pub(super) fn work_time(&mut self, day: DateTime<Utc>) -> DateTime<Utc> {
        let h = self.rng.random_range(8 * 3600..19 * 3600) + self.a.tz_shift * 3600;
        (day + D::seconds(h.clamp(0, 86_399))).min(self.c().now)
    }

    /// `n` requests on a working day (fewer at weekends), with everybody's noise: now and then
    /// an extra session, a stray model, a request with PII.
    pub(super) fn workday(
        &mut self,
        day: DateTime<Utc>,
        n: u32,
        tokens: std::ops::Range<u64>,
        noise: bool,
    ) {
        let n = if matches!(day.weekday(), Weekday::Sat | Weekday::Sun) {
            n.div_ceil(4)
        } else {
            n
        };
        for _ in 0..n {
            let at = self.work_time(day);
            let input = self.rng.random_range(tokens.clone());
            self.usage(at, input, input / 4);
        }
        if !noise {
            return;
        }
        if self.rng.random_range(0..100) < 15 {
            let at = self.work_time(day);
            let sid = format!("x{}", self.rng.random_range(0..1_000_000));
            for i in 0..3 {
                self.usage(at + D::seconds(i * 20), 600, 150).session_id = Some(sid.clone());
            }
        }
        if self.rng.random_range(0..100) < 5 {
            let at = self.work_time(day);
            self.usage(at, 900, 300).model = "gpt-4o".into();
        }
        if self.rng.random_range(0..100) < 4 {
            let at = self.work_time(day);
            self.usage(at, 700, 100).pii_detected = true;
        }
    }

    /// Today: two ordinary sessions ten minutes apart, five requests ten seconds apart each.
    pub(super) fn sessions_today(&mut self) {
        for s in 0..2 {
            let start = self.c().recent(40 - 10 * s);
            for i in 0..5 {
                let e = self.usage(start + D::seconds(i * 10), 800, 200);
                e.session_id = Some(format!("s{s}"));
            }
        }
    }

    /// A CI pipeline's run: `n` sessions `gap` seconds apart, `reqs` requests a second apart
    /// each, one fixture prompt.
    pub(super) fn ci(&mut self, start: DateTime<Utc>, n: i64, gap: i64, reqs: u32) {
        let fixture = format!("fixture-{}", self.a.index);
        for s in 0..n {
            for r in 0..reqs {
                let e = self.usage(start + D::seconds(s * gap + i64::from(r)), 300, 80);
                e.session_id = Some(format!("ci-{}-{s}", start.timestamp()));
                e.prompt_hash = Some(fixture.clone());
            }
        }
    }

    /// `n` sessions today `gap` seconds apart, one request each with its own prompt.
    pub(super) fn quick_sessions(&mut self, n: i64, gap: i64) {
        let start = self.c().recent(30);
        for s in 0..n {
            self.usage(start + D::seconds(s * gap), 400, 100).session_id = Some(format!("q{s}"));
        }
    }

    /// This month's heavy traffic: `tokens` raw tokens exactly, in `events` requests spread
    /// from [`Clock::month_span_start`] to two minutes ago, cycling through the regions, clouds
    /// and providers given, by `users` people (none: no user ids).
    pub(super) fn heavy_month(
        &mut self,
        tokens: u64,
        events: u64,
        dims: (usize, usize, usize),
        users: u64,
    ) {
        let start = self.c().month_span_start();
        let end = self.c().now - D::minutes(2);
        let span = (end - start).num_seconds().max(1);
        let each = tokens / events;
        for i in 0..events {
            let input = if i == events - 1 {
                tokens - each * (events - 1)
            } else {
                each
            };
            let at = start + D::seconds(span * i as i64 / events as i64);
            let e = self.usage(at, input, 0);
            let i = i as usize;
            e.region = REGIONS[i % dims.0].into();
            e.cloud = CLOUDS[i % dims.1].into();
            e.provider = PROVIDERS[i % dims.2].into();
            if users > 0 {
                e.user_id = Some(format!("u{}", i as u64 % users));
            }
        }
    }

    /// `per_minute` requests in each of `minutes` consecutive clock minutes, the first one
    /// starting 15 minutes ago (inside the scorer's 30-minute window).
    pub(super) fn rate_burst(&mut self, per_minute: u64, minutes: i64) {
        let m0 = (self.c().now - D::minutes(15))
            .duration_trunc(D::minutes(1))
            .expect("minute");
        for m in 0..minutes {
            for j in 0..per_minute {
                let at = m0 + D::minutes(m) + D::seconds((j * 59 / per_minute) as i64);
                let e = self.usage(at, 1, 0);
                e.prompt_hash = None;
            }
        }
    }

    /// A crowd on the account's key today: `day_people` unrelated people, each on their own
    /// network and device, at most one a minute during the day, then one clock minute a few
    /// minutes ago with `peak` of them at once.
    pub(super) fn crowd(&mut self, day_people: usize, peak: usize) {
        let (tag, index) = (self.s.tag.clone(), self.a.index);
        let from = self.c().recent(300);
        for p in 0..day_people {
            let at = from + D::minutes(2 * p as i64 + 1);
            let e = self.usage(at, 500, 120);
            e.client_ip = Some(crowd_ip(&tag, index, p));
            e.device_id = Some(format!("cd-{tag}-{index}-{p}"));
        }
        let minute = self
            .c()
            .recent(5)
            .duration_trunc(D::minutes(1))
            .unwrap_or(self.c().today);
        for p in 0..peak {
            let person = 1_000 + p;
            let e = self.usage(minute + D::seconds(p as i64 * 5), 300, 50);
            e.client_ip = Some(crowd_ip(&tag, index, person));
            e.device_id = Some(format!("cd-{tag}-{index}-{person}"));
        }
    }

    /// The account's `pods` servers on its key: one network, the same addresses all day, no
    /// device. Today: every pod every hour, then every minute for the last 30 minutes.
    pub(super) fn fleet(&mut self, day: DateTime<Utc>, days_ago: u32, pods: usize) {
        let (tag, index) = (self.s.tag.clone(), self.a.index);
        let mut times = Vec::new();
        if days_ago > 0 {
            times.extend((0..2).map(|h| day + D::hours(9 + 6 * h)));
        } else {
            let hours = (self.c().now - self.c().today).num_hours();
            times.extend((0..hours.saturating_sub(1)).map(|h| self.c().today + D::hours(h)));
            let m0 = (self.c().now - D::minutes(30))
                .duration_trunc(D::minutes(1))
                .expect("minute")
                .max(self.c().today);
            let mut m = m0;
            while m < self.c().now - D::minutes(2) {
                times.push(m);
                m += D::minutes(1);
            }
        }
        for t in times {
            for p in 0..pods {
                let e = self.usage(t + D::seconds(p as i64 * 5), 200, 50);
                e.client_ip = Some(pod_ip(&tag, index, p));
            }
        }
    }

    /// `total` requests over the simulated days (at most the last 20), exactly, a few tokens
    /// each; `today` of them today.
    pub(super) fn exact_volume(&mut self, days: u32, days_ago: u32, total: u64, today: u64) {
        let spread = u64::from(days.min(20));
        if days_ago == 0 {
            // API calls without sessions: the volume alone must decide.
            for i in 0..today {
                let start = self.c().recent(30);
                self.usage(start + D::seconds(i as i64 * 10), 100, 20);
            }
            return;
        }
        if u64::from(days_ago) > spread {
            return;
        }
        let rest = total - today;
        let n = rest / spread + u64::from(u64::from(days_ago) <= rest % spread);
        let day = self.c().day(days_ago);
        for i in 0..n {
            self.usage(day + D::hours(9) + D::seconds(i as i64 * 30), 100, 20);
        }
    }
}
