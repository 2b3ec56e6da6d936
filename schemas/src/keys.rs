//! Redis key names, windows and lifetimes. The hot state's layout is [`hot`] (layout v2, issue
//! 21): the aggregator's state store writes it, the read path (`ingest`) and the scorer read it,
//! and `ARCHITECTURE.md` lists it for gateway authors; change them together. What stays here:
//! - the windows ([`Grain`]: stamps, starts, retention) and distinct dimensions ([`Dim`]) both
//!   layouts share, and the counter field names ([`field`]);
//! - [`Keys`], the previous layout's names, written only by the previous writer
//!   (`meterline_aggregator::fold`), kept as the reference `aggregator/tests/hot_layout.rs`
//!   proves layout v2 against. No component writes or reads them any more (the scorer's queue
//!   and the read path's quota markers moved to [`hot`] too), and what an earlier version
//!   left expires on its own.
//!
//! Counter hashes have the fields `req`, `err`, `in`, `out`, `cost`. Day and month windows
//! also have, per model, `m:{model}:req`, `m:{model}:in`, `m:{model}:out` (what weighted-token
//! budgets need), and session hashes `m:{model}:in`, `m:{model}:out`; minute and hour windows
//! carry no per-model fields (nothing reads them: ClickHouse's `usage_minute` and `usage_hour`
//! have them per model).

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};

pub mod hot;

pub const MINUTE_RETENTION_SECS: i64 = 2 * 3600;
pub const HOUR_RETENTION_SECS: i64 = 48 * 3600;
pub const DAY_RETENTION_SECS: i64 = 40 * 86_400;
pub const MONTH_RETENTION_AFTER_END_SECS: i64 = 100 * 86_400;
pub const SESSION_RETENTION_SECS: i64 = 24 * 3600;
/// Longer than the oldest event ingest accepts (35 days) plus clock skew, so a duplicate of any
/// acceptable event is still recognised.
pub const SEEN_RETENTION_AFTER_DAY_SECS: i64 = 36 * 86_400;

/// The fields of a counter hash (window and session hashes).
pub mod field {
    /// Requests.
    pub const REQUESTS: &str = "req";
    /// Requests answered with a status of 400 or more.
    pub const ERRORS: &str = "err";
    /// Input tokens.
    pub const INPUT_TOKENS: &str = "in";
    /// Output tokens.
    pub const OUTPUT_TOKENS: &str = "out";
    /// Cost in micro-dollars.
    pub const COST_MICROS: &str = "cost";
    /// What a per-model field starts with: `m:{model}:{counter}`.
    pub const MODEL_PREFIX: &str = "m:";

    /// The per-model field of `counter` (one of [`REQUESTS`], [`INPUT_TOKENS`],
    /// [`OUTPUT_TOKENS`]) for `model`.
    pub fn model(model: &str, counter: &str) -> String {
        format!("{MODEL_PREFIX}{model}:{counter}")
    }
}

/// The distinct-member sets of a month (`{p}u:{account}:M:{YYYYMM}:{dim}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    Models,
    Providers,
    Regions,
    Clouds,
    Users,
    ApiKeys,
    IpHashes,
    Sessions,
}

impl Dim {
    pub const ALL: [Dim; 8] = [
        Dim::Models,
        Dim::Providers,
        Dim::Regions,
        Dim::Clouds,
        Dim::Users,
        Dim::ApiKeys,
        Dim::IpHashes,
        Dim::Sessions,
    ];

    /// The dimension named `name` ([`Dim::as_str`]).
    pub fn parse(name: &str) -> Option<Dim> {
        Dim::ALL.into_iter().find(|d| d.as_str() == name)
    }

    /// The set's name, the last part of its key.
    pub fn as_str(self) -> &'static str {
        match self {
            Dim::Models => "models",
            Dim::Providers => "providers",
            Dim::Regions => "regions",
            Dim::Clouds => "clouds",
            Dim::Users => "users",
            Dim::ApiKeys => "api_keys",
            Dim::IpHashes => "ip_hashes",
            Dim::Sessions => "sessions",
        }
    }
}

/// The window grains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Grain {
    Minute,
    Hour,
    Day,
    Month,
}

impl Grain {
    pub const ALL: [Grain; 4] = [Grain::Minute, Grain::Hour, Grain::Day, Grain::Month];

    /// Whether this grain's window hashes carry per-model fields (`m:{model}:…`).
    pub fn has_model_fields(self) -> bool {
        matches!(self, Grain::Day | Grain::Month)
    }

    /// The grain whose [`Grain::code`] is `code`.
    pub fn from_code(code: &str) -> Option<Grain> {
        Grain::ALL.into_iter().find(|g| g.code() == code)
    }

    /// The start of the window whose [`Grain::stamp`] is `stamp`.
    pub fn parse_stamp(self, stamp: &str) -> Option<DateTime<Utc>> {
        let want = match self {
            Grain::Month => 6,
            Grain::Day => 8,
            Grain::Hour => 10,
            Grain::Minute => 12,
        };
        if stamp.len() != want || !stamp.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n = |at: usize| stamp.get(at..at + 2).and_then(|d| d.parse::<u32>().ok());
        let year = stamp[..4].parse().ok()?;
        let day = if want >= 8 { n(6)? } else { 1 };
        let hour = if want >= 10 { n(8)? } else { 0 };
        let minute = if want >= 12 { n(10)? } else { 0 };
        Utc.with_ymd_and_hms(year, n(4)?, day, hour, minute, 0)
            .single()
    }

    pub fn code(self) -> &'static str {
        match self {
            Grain::Minute => "m",
            Grain::Hour => "h",
            Grain::Day => "d",
            Grain::Month => "M",
        }
    }

    /// The start of the window holding `t`, in UTC.
    pub fn window_start(self, t: DateTime<Utc>) -> DateTime<Utc> {
        let t = t
            .with_nanosecond(0)
            .expect("valid")
            .with_second(0)
            .expect("valid");
        match self {
            Grain::Minute => t,
            Grain::Hour => t.with_minute(0).expect("valid"),
            Grain::Day => t
                .with_minute(0)
                .and_then(|t| t.with_hour(0))
                .expect("valid"),
            Grain::Month => Utc
                .with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0)
                .single()
                .expect("valid"),
        }
    }

    /// The start of the window after the one starting at `start`.
    pub fn next_window(self, start: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Grain::Minute => start + chrono::Duration::minutes(1),
            Grain::Hour => start + chrono::Duration::hours(1),
            Grain::Day => start + chrono::Duration::days(1),
            Grain::Month => {
                let (y, m) = if start.month() == 12 {
                    (start.year() + 1, 1)
                } else {
                    (start.year(), start.month() + 1)
                };
                Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
                    .single()
                    .expect("valid")
            }
        }
    }

    pub fn stamp(self, start: DateTime<Utc>) -> String {
        // Digits written by hand: chrono's `format` parses its pattern on every call, and the
        // fold stamps several keys per event.
        let mut out = String::with_capacity(12);
        let mut two = |n: u32| {
            out.push(char::from(b'0' + (n / 10) as u8));
            out.push(char::from(b'0' + (n % 10) as u8));
        };
        let year = start.year().clamp(0, 9999) as u32;
        two(year / 100);
        two(year % 100);
        two(start.month());
        if self != Grain::Month {
            two(start.day());
        }
        if matches!(self, Grain::Minute | Grain::Hour) {
            two(start.hour());
        }
        if self == Grain::Minute {
            two(start.minute());
        }
        out
    }

    /// When the key for the window starting at `start` expires (Unix seconds).
    pub fn expires_at(self, start: DateTime<Utc>) -> i64 {
        match self {
            Grain::Minute => start.timestamp() + MINUTE_RETENTION_SECS,
            Grain::Hour => start.timestamp() + HOUR_RETENTION_SECS,
            Grain::Day => start.timestamp() + DAY_RETENTION_SECS,
            Grain::Month => self.next_window(start).timestamp() + MONTH_RETENTION_AFTER_END_SECS,
        }
    }
}

/// Builds key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn window(&self, account: &str, grain: Grain, start: DateTime<Utc>) -> String {
        format!(
            "{}u:{}:{}:{}",
            self.prefix,
            account,
            grain.code(),
            grain.stamp(start)
        )
    }

    pub fn month_set(&self, account: &str, month_start: DateTime<Utc>, dim: Dim) -> String {
        format!(
            "{}u:{}:M:{}:{}",
            self.prefix,
            account,
            Grain::Month.stamp(month_start),
            dim.as_str()
        )
    }

    pub fn day_sessions(&self, account: &str, day_start: DateTime<Utc>) -> String {
        format!(
            "{}u:{}:d:{}:sessions",
            self.prefix,
            account,
            Grain::Day.stamp(day_start)
        )
    }

    pub fn session(&self, account: &str, session_id: &str) -> String {
        format!("{}u:{}:s:{}", self.prefix, account, session_id)
    }

    /// Accounts whose hot state changed since the scorer last looked (a set).
    pub fn dirty(&self) -> String {
        format!("{}dirty", self.prefix)
    }

    pub fn seen(&self, day_start: DateTime<Utc>) -> String {
        format!("{}seen:{}", self.prefix, Grain::Day.stamp(day_start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_stamps() {
        let t = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).unwrap();
        assert_eq!(
            Grain::Minute.stamp(Grain::Minute.window_start(t)),
            "202612312359"
        );
        assert_eq!(Grain::Hour.stamp(Grain::Hour.window_start(t)), "2026123123");
        assert_eq!(Grain::Day.stamp(Grain::Day.window_start(t)), "20261231");
        let m = Grain::Month.window_start(t);
        assert_eq!(Grain::Month.stamp(m), "202612");
        assert_eq!(
            Grain::Month.next_window(m),
            Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(
            Grain::Month.expires_at(m),
            Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0)
                .unwrap()
                .timestamp()
                + MONTH_RETENTION_AFTER_END_SECS
        );
        let k = Keys::new("ml:");
        assert_eq!(
            k.window("a", Grain::Day, Grain::Day.window_start(t)),
            "ml:u:a:d:20261231"
        );
        assert_eq!(k.seen(Grain::Day.window_start(t)), "ml:seen:20261231");
        for g in Grain::ALL {
            let start = g.window_start(t);
            assert_eq!(Grain::from_code(g.code()), Some(g));
            assert_eq!(g.parse_stamp(&g.stamp(start)), Some(start), "{g:?}");
        }
        assert_eq!(Grain::Day.parse_stamp("20261332"), None);
        assert_eq!(Grain::Day.parse_stamp("2026123"), None);
        assert_eq!(Grain::Month.parse_stamp("20261a"), None);
        assert_eq!(Dim::parse("api_keys"), Some(Dim::ApiKeys));
        assert_eq!(Dim::parse("nope"), None);
    }
}
