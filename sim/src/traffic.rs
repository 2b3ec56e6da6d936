//! What each simulated account sends on a given day: its usage and account events.
//!
//! Every account's day is a pure function of its seed and the day, so the ground truth
//! ([`crate::truth`]) folds exactly the events that are posted. Behaviours that the scorer
//! judges on "today", "the last hour" or "the last 30 minutes" (sessions, key sharing, request
//! rates, new accounts) happen shortly before `now`; a value that must stay under a threshold
//! never passes it on the way (templated prompts come after the distinct ones, counts only
//! grow), because the scorer may score an account while its events are still arriving.

use chrono::{DateTime, Datelike, Duration as D, DurationRound, Utc, Weekday};
use meterline_client::{AccountEvent, UsageEvent};
use meterline_schemas::Plan;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::population::*;

/// Events of one account on one day (`days_ago` = 0 is today, up to now).
pub struct DayEvents {
    pub accounts: Vec<AccountEvent>,
    pub usage: Vec<UsageEvent>,
}

/// What a run's traffic depends on besides the account.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub tag: String,
    pub clock: Clock,
    /// Days of event time before today.
    pub days: u32,
    /// Date long-standing customers' history from last year (needs an ingest that takes
    /// account events of any age); otherwise 34 and 33 days ago.
    pub old_history: bool,
}

fn tag_hash(tag: &str) -> u8 {
    tag.bytes()
        .fold(7u8, |h, b| h.wrapping_mul(31).wrapping_add(b))
}

/// The account's own address (one per account).
fn own_ip(tag: &str, index: usize) -> String {
    format!(
        "10.{}.{}.{}",
        tag_hash(tag),
        (index / 250) % 250,
        index % 250 + 1
    )
}

/// An address of a member of a crowd: every one on its own network.
fn crowd_ip(tag: &str, index: usize, person: usize) -> String {
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
fn pod_ip(tag: &str, index: usize, pod: usize) -> String {
    format!(
        "172.{}.{}.{}",
        16 + (usize::from(tag_hash(tag)) + index / 250) % 16,
        index % 250,
        10 + pod
    )
}

const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-southeast-1"];
const CLOUDS: [&str; 3] = ["aws", "gcp", "azure"];
const PROVIDERS: [&str; 3] = ["openai", "anthropic", "google"];

struct Gen<'a> {
    a: &'a SimAccount,
    s: &'a Scenario,
    rng: StdRng,
    out: DayEvents,
    prompt: u64,
}

impl Gen<'_> {
    fn c(&self) -> &Clock {
        &self.s.clock
    }

    fn usage(&mut self, at: DateTime<Utc>, input: u64, output: u64) -> &mut UsageEvent {
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

    fn account(&mut self, at: DateTime<Utc>, kind: &str) -> &mut AccountEvent {
        let mut e = AccountEvent::new(&self.a.id, kind);
        e.occurred_at = at;
        self.out.accounts.push(e);
        self.out.accounts.last_mut().expect("just pushed")
    }

    /// A signup with the account's own fingerprint (IP, device, browser) and email domain.
    fn signup(&mut self, at: DateTime<Utc>, plan: Plan) -> &mut AccountEvent {
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
    fn history(&mut self, seats: u64, company: u64) {
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
    fn work_time(&mut self, day: DateTime<Utc>) -> DateTime<Utc> {
        let h = self.rng.random_range(8 * 3600..19 * 3600) + self.a.tz_shift * 3600;
        (day + D::seconds(h.clamp(0, 86_399))).min(self.c().now)
    }

    /// `n` requests on a working day (fewer at weekends), with everybody's noise: now and then
    /// an extra session, a stray model, a request with PII.
    fn workday(&mut self, day: DateTime<Utc>, n: u32, tokens: std::ops::Range<u64>, noise: bool) {
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
    fn sessions_today(&mut self) {
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
    fn ci(&mut self, start: DateTime<Utc>, n: i64, gap: i64, reqs: u32) {
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
    fn quick_sessions(&mut self, n: i64, gap: i64) {
        let start = self.c().recent(30);
        for s in 0..n {
            self.usage(start + D::seconds(s * gap), 400, 100).session_id = Some(format!("q{s}"));
        }
    }

    /// This month's heavy traffic: `tokens` raw tokens exactly, in `events` requests spread
    /// from [`Clock::month_span_start`] to two minutes ago, cycling through the regions, clouds
    /// and providers given, by `users` people (none: no user ids).
    fn heavy_month(&mut self, tokens: u64, events: u64, dims: (usize, usize, usize), users: u64) {
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
    fn rate_burst(&mut self, per_minute: u64, minutes: i64) {
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
    fn crowd(&mut self, day_people: usize, peak: usize) {
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
    fn fleet(&mut self, day: DateTime<Utc>, days_ago: u32, pods: usize) {
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
    fn exact_volume(&mut self, days: u32, days_ago: u32, total: u64, today: u64) {
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

/// What `a` does `days_ago` days ago (0: today, up to `s.clock.now`).
pub fn day_events(a: &SimAccount, s: &Scenario, days_ago: u32) -> DayEvents {
    let mut g = Gen {
        a,
        s,
        rng: StdRng::seed_from_u64(
            a.seed ^ u64::from(days_ago).wrapping_mul(0xA24B_AED4_963E_E407),
        ),
        out: DayEvents {
            accounts: vec![],
            usage: vec![],
        },
        prompt: u64::from(days_ago) * 100_000,
    };
    let c = s.clock;
    let days = s.days;
    let first = days_ago == days;
    let day = c.day(days_ago);
    let long_ago = c.now - D::days(i64::from(days) + 1);
    // Volume-driven behaviours send the same total whatever the number of days.
    let per_day = |total: u32| total.div_ceil(days.max(1));
    if first && a.behaviour.existing_customer() {
        let (seats, company) = match a.behaviour {
            Behaviour::ProGrowing => (30, 300),
            Behaviour::Enterprise | Behaviour::EnterpriseCi => (50, 2_000),
            _ => (g.rng.random_range(3..=10), g.rng.random_range(10..=80)),
        };
        g.history(seats, company);
    }
    match a.behaviour {
        Behaviour::Steady | Behaviour::PiiSender | Behaviour::Campus => {
            if first {
                let e = g.signup(long_ago, Plan::Free);
                if let Some(group) = a.campus {
                    // Unrelated people behind one campus NAT: same signup address, their own
                    // devices and browsers.
                    e.signup_ip = Some(format!("100.{}.{}.1", 64 + tag_hash(&s.tag) % 64, group));
                }
            }
            if days_ago > 0 {
                let n = g.rng.random_range(3..=10);
                g.workday(day, n, 200..2_000, true);
            } else {
                g.sessions_today();
                if a.behaviour == Behaviour::PiiSender {
                    for i in 0..6 {
                        let e = g.usage(c.recent(20) + D::seconds(i), 500, 100);
                        e.pii_detected = true;
                    }
                }
            }
            if let Some(group) = a.campus {
                let ip = format!("100.{}.{}.1", 64 + tag_hash(&s.tag) % 64, group);
                for e in &mut g.out.usage {
                    e.client_ip = Some(ip.clone());
                }
            }
        }
        Behaviour::LightIdle => {
            if first {
                g.signup(long_ago, Plan::Free);
            }
            if days_ago > 0 {
                let n = g.rng.random_range(1..=3);
                g.workday(day, n, 200..1_500, true);
            } else {
                // Two sessions left open for hours: a question now and then.
                for (sid, start, step) in [("idle0", 240, 60), ("idle1", 200, 50)] {
                    let t0 = c.recent(start);
                    for i in 0..3 {
                        let e = g.usage(t0 + D::minutes(i * step), 900, 400);
                        e.session_id = Some(sid.into());
                    }
                }
            }
        }
        Behaviour::Trajectory => {
            if first {
                g.signup(long_ago, Plan::Free);
            }
            if days_ago > 0 {
                // Daily volume grows steadily towards the month's allowance.
                let daily = 20_000 + 3_000 * u64::from(days - days_ago);
                for i in 0..10 {
                    g.usage(day + D::hours(10) + D::minutes(i), daily / 10, 0);
                }
            } else {
                g.sessions_today();
            }
        }
        Behaviour::Collision => {
            // Signed up this morning and already near the day's budget.
            if days_ago == 0 {
                g.signup((c.now - D::hours(10)).max(c.today), Plan::Free);
                for i in 0..10 {
                    g.usage(c.recent(30) + D::seconds(i * 20), 9_000, 0);
                }
            }
        }
        Behaviour::Churner => {
            if first {
                g.signup(long_ago, Plan::Free);
            }
            if days_ago == 10.min(days) {
                g.account(day + D::hours(8), "churned");
            }
            if days_ago > 10 {
                let n = g.rng.random_range(3..=8);
                g.workday(day, n, 200..1_500, true);
            }
        }
        Behaviour::Converter => {
            if first {
                g.signup(long_ago, Plan::Free);
            }
            if days_ago == days / 2 {
                g.account(day + D::hours(12), "upgrade_page_viewed");
                g.account(day + D::hours(12) + D::minutes(5), "plan_changed")
                    .plan = Some("pro".into());
            }
            if days_ago > 0 {
                let n = if days_ago < days / 2 { 20 } else { 8 };
                g.workday(day, n, 500..3_000, true);
            } else {
                g.sessions_today();
            }
        }
        Behaviour::EnterpriseReady => {
            if first {
                let e = g.signup(long_ago, Plan::Free);
                e.company_size = Some(500);
                e.seats = Some(5);
            }
            if days_ago > 0 {
                let n = g.rng.random_range(5..=15);
                g.workday(day, n, 500..3_000, true);
            } else {
                // This month: 60M tokens from 25 people, three regions on three clouds, three
                // providers.
                g.heavy_month(60_000_000, 500, (3, 3, 3), 25);
            }
        }
        Behaviour::PowerUser | Behaviour::UpgradeBrowser | Behaviour::BigSpender => {
            if first && a.plan == Plan::Free {
                g.signup(long_ago, Plan::Free);
            } else if first {
                let seats = g.rng.random_range(3..=10);
                g.history(seats, 40);
            }
            let (total, tokens) = match a.behaviour {
                Behaviour::BigSpender => (1_300, 20_000..24_000),
                _ => (1_400, 500..3_000),
            };
            if days_ago > 0 {
                let n = per_day(total);
                // Every day, weekends included: the volume is what makes them heavy.
                for _ in 0..n {
                    let at = g.work_time(day);
                    let input = g.rng.random_range(tokens.clone());
                    g.usage(at, input, input / 10);
                }
            } else if a.behaviour == Behaviour::PowerUser {
                // Three long sessions today with varied prompts.
                let start = c.recent(45);
                for s in 0..3i64 {
                    for i in 0..9i64 {
                        let e = g.usage(start + D::seconds(s * 30 + i * 60), 1_000, 300);
                        e.session_id = Some(format!("s{s}"));
                    }
                }
            } else if a.behaviour == Behaviour::UpgradeBrowser {
                g.sessions_today();
            } else {
                // Big spenders call the API from their backend: no sessions.
                for i in 0..10 {
                    g.usage(c.recent(30) + D::seconds(i * 20), 20_000, 2_000);
                }
            }
            if a.behaviour == Behaviour::UpgradeBrowser
                && (days_ago == 3.min(days) || days_ago == 1.min(days))
            {
                g.account(day + D::hours(15), "upgrade_page_viewed");
            }
        }
        Behaviour::Abuser => {
            if days_ago == 0 {
                // Signed up half an hour ago; eight sessions a second apart, one prompt.
                g.signup(c.recent(30), Plan::Free);
                let start = c.recent(20);
                for i in 0..16i64 {
                    let e = g.usage(start + D::seconds(i / 2), 400, 100);
                    e.session_id = Some(format!("s{}", i / 2));
                    e.prompt_hash = Some("same-prompt".into());
                }
            }
        }
        Behaviour::FreeCi | Behaviour::ProCi | Behaviour::EnterpriseCi => {
            if first && a.behaviour == Behaviour::FreeCi {
                g.signup(long_ago, Plan::Free);
            }
            if days_ago > 0 {
                let n = g.rng.random_range(3..=6);
                g.workday(day, n, 500..3_000, true);
                if !matches!(day.weekday(), Weekday::Sat | Weekday::Sun) {
                    let at = g.work_time(day);
                    g.ci(at, 10, 2, 2);
                }
            } else {
                g.sessions_today();
                let start = c.recent(50);
                g.ci(start, 40, 2, 3);
            }
            if a.behaviour == Behaviour::EnterpriseCi {
                g.fleet(day, days_ago, 8);
            }
        }
        Behaviour::CrowdKey => {
            if first {
                g.signup(long_ago, Plan::Free);
            }
            if days_ago > 0 {
                let n = g.rng.random_range(3..=10);
                g.workday(day, n, 200..2_000, true);
            } else {
                g.crowd(30, 6);
            }
        }
        Behaviour::FreeFleet | Behaviour::ProFleet => {
            if first && a.behaviour == Behaviour::FreeFleet {
                g.signup(long_ago, Plan::Free);
            }
            let pods = if a.behaviour == Behaviour::ProFleet {
                8
            } else {
                6
            };
            g.fleet(day, days_ago, pods);
        }
        Behaviour::MultiAccount => {
            let cluster = a.cluster.unwrap_or(0);
            if days_ago == 5.min(days) {
                let tag = s.tag.clone();
                let e = g.signup(day + D::hours(14), Plan::Free);
                // The cluster shares its signup IP and device; each browser differs.
                e.signup_ip = Some(format!(
                    "100.{}.{}.{}",
                    tag_hash(&tag) % 64,
                    cluster / 250,
                    cluster % 250 + 1
                ));
                e.device_id = Some(format!("dev-{tag}-cluster-{cluster}"));
            }
            if days_ago < 5 && days_ago > 0 {
                g.workday(day, 3, 200..1_000, true);
            }
        }
        Behaviour::ProSteady => {
            if days_ago > 0 {
                let n = g.rng.random_range(6..=15);
                g.workday(day, n, 1_000..8_000, true);
            } else {
                g.sessions_today();
            }
        }
        Behaviour::ProGrowing => {
            if days_ago > 0 {
                let n = g.rng.random_range(10..=25);
                g.workday(day, n, 1_000..8_000, true);
            } else {
                g.heavy_month(60_000_000, 500, (3, 2, 2), 30);
            }
        }
        Behaviour::Enterprise => {
            let heavy = a.index % 2 == 0;
            if days_ago > 0 {
                let n = g.rng.random_range(10..=25);
                g.workday(day, n, 1_000..8_000, true);
            } else if heavy {
                g.heavy_month(60_000_000, 500, (3, 3, 3), 40);
                for i in 0..6 {
                    let e = g.usage(c.recent(20) + D::seconds(i), 500, 100);
                    e.pii_detected = true;
                }
            } else {
                g.sessions_today();
            }
        }
        Behaviour::Edge => {
            if let Some(edge) = a.edge {
                edge_day(&mut g, edge, days_ago, long_ago);
            }
        }
    }
    g.out
}

/// The edge pairs' days: everything equal on both sides but the one unit.
fn edge_day(g: &mut Gen<'_>, e: EdgeSide, days_ago: u32, long_ago: DateTime<Utc>) {
    let c = g.s.clock;
    let days = g.s.days;
    let first = days_ago == days;
    let day = c.day(days_ago);
    let over = e.over;
    let new_account = matches!(e.edge, Edge::AbuseAge | Edge::AbuseDiversity);
    if first && !new_account {
        let tag = g.s.tag.clone();
        let (seats, company) = match e.edge {
            Edge::DealCompany => (21, if over { 101 } else { 100 }),
            Edge::DealTeam => (if over { 21 } else { 20 }, 101),
            Edge::DealTokens | Edge::DealPlugins => (21, 101),
            _ => (1, 5),
        };
        let pair = u8::from(over);
        let ev = g.signup(long_ago, Plan::Free);
        ev.seats = Some(seats);
        ev.company_size = Some(company);
        if e.edge == Edge::MultiFingerprint {
            // Both members of a side share the signup address; over, the browser too.
            ev.signup_ip = Some(format!("100.127.{}.{pair}", tag_hash(&tag)));
            if over {
                ev.browser_signature = Some(format!("br-{tag}-edge-pair"));
            }
        }
    }
    // Light background on past days, none this month for the token counts, none for volumes
    // that must be exact.
    let exact = matches!(e.edge, Edge::PowerVolume | Edge::PowerViews)
        || (e.edge == Edge::DealTokens && day >= c.month);
    let background = !new_account && days_ago > 0 && !exact;
    if background {
        let n = g.rng.random_range(2..=4);
        g.workday(day, n, 200..1_000, false);
    }
    match e.edge {
        Edge::DealCompany | Edge::DealTeam | Edge::DealTokens | Edge::DealPlugins => {
            if days_ago == 0 {
                let tokens = if e.edge == Edge::DealTokens && !over {
                    50_000_000
                } else {
                    50_000_001
                };
                let clouds = if e.edge == Edge::DealPlugins && !over {
                    1
                } else {
                    2
                };
                g.heavy_month(tokens, 500, (1, clouds, 3), 0);
            }
        }
        Edge::Regions => {
            if days_ago == 0 {
                g.heavy_month(60_000, 30, (if over { 3 } else { 2 }, 1, 1), 0);
            }
        }
        Edge::EscalationRpm => {
            if days_ago == 0 {
                g.rate_burst(if over { 5_001 } else { 5_000 }, 3);
            }
        }
        Edge::EscalationMinutes => {
            if days_ago == 0 {
                g.rate_burst(5_001, if over { 3 } else { 2 });
            }
        }
        Edge::AbuseAge => {
            if days_ago == 0 {
                let age = if over {
                    D::minutes(110)
                } else {
                    D::minutes(125)
                };
                g.signup(c.now - age, Plan::Free);
                // Ten sessions a minute apart, 100 requests, 10 distinct prompts (distinct ones
                // first).
                let start = c.recent(40);
                for i in 0..100i64 {
                    let ev = g.usage(start + D::seconds((i / 10) * 60 + (i % 10) * 5), 500, 100);
                    ev.session_id = Some(format!("s{}", i / 10));
                    ev.prompt_hash = Some(format!("t-{}", i.min(9)));
                }
            }
        }
        Edge::AbuseGap => {
            if days_ago == 0 {
                g.quick_sessions(21, if over { 2 } else { 3 });
            }
        }
        Edge::AbuseSessions => {
            if days_ago == 0 {
                g.quick_sessions(if over { 21 } else { 20 }, 2);
            }
        }
        Edge::AbuseDiversity => {
            if days_ago == 0 {
                g.signup(c.recent(30), Plan::Free);
                let distinct = if over { 14 } else { 15 };
                let start = c.recent(25);
                for i in 0..100i64 {
                    let ev = g.usage(start + D::seconds((i / 20) * 300 + (i % 20) * 10), 500, 100);
                    ev.session_id = Some(format!("s{}", i / 20));
                    ev.prompt_hash = Some(format!("d-{}", i.min(distinct - 1)));
                }
            }
        }
        Edge::KeyIps => {
            if days_ago == 0 {
                g.crowd(30, if over { 5 } else { 4 });
            }
        }
        Edge::KeyFleetCrowd => {
            if over {
                if days_ago == 0 {
                    g.crowd(40, 8);
                }
            } else {
                g.fleet(day, days_ago, 8);
            }
        }
        Edge::MultiFingerprint => {}
        Edge::PowerVolume | Edge::PowerViews => {
            let (total, views) = match e.edge {
                Edge::PowerVolume => (if over { 1_000 } else { 999 }, 2),
                _ => (1_500, if over { 2 } else { 1 }),
            };
            g.exact_volume(days, days_ago, total, 10);
            if (views >= 1 && days_ago == 2.min(days)) || (views >= 2 && days_ago == 1.min(days)) {
                g.account(day + D::hours(16), "upgrade_page_viewed");
            }
        }
        Edge::PiiGate => {
            if days_ago == 0 {
                for i in 0..(if over { 5 } else { 4 }) {
                    g.usage(c.recent(20) + D::seconds(i), 500, 100).pii_detected = true;
                }
            }
        }
        Edge::ProvidersGate => {
            if days_ago == 0 {
                g.heavy_month(30_000, 30, (1, 1, if over { 3 } else { 2 }), 0);
            }
        }
        Edge::CloudsGate => {
            if days_ago == 0 {
                g.heavy_month(30_000, 30, (1, if over { 2 } else { 1 }, 1), 0);
            }
        }
    }
}
