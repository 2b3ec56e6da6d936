//! Account lifecycle events: signups, plan and seat changes, profile changes, notice
//! interactions, email unsubscribes, churn.
//!
//! A `signup` or `profile_updated` event may carry the account holder's contact email, the
//! recipient of the email channel. It is personal data ([`crate::contact`]): validated here,
//! held in a [`ContactEmail`] that never prints, and kept in PostgreSQL only.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{optional_label, AccountEventType, AccountId, Plan};
use crate::usage::{account_envelope, MAX_LABEL_LEN};
use crate::{ContactEmail, FieldError, IpHasher};

/// An account event as posted, every field optional so a missing one is named.
///
/// In the OpenAPI document it is `AccountEvent`, with the fields an event needs marked required.
#[derive(Debug, Default, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[schema(as = AccountEvent, description = "An account lifecycle event.")]
pub struct AccountEventInput {
    #[schema(value_type = String)]
    pub event_id: Option<String>,
    #[schema(value_type = String)]
    pub occurred_at: Option<String>,
    #[schema(value_type = AccountId)]
    pub account_id: Option<String>,
    #[serde(rename = "type")]
    #[schema(value_type = AccountEventType)]
    pub kind: Option<String>,
    #[schema(value_type = Option<Plan>)]
    pub plan: Option<String>,
    pub seats: Option<u64>,
    pub email_domain: Option<String>,
    pub company_size: Option<u64>,
    pub signup_ip: Option<String>,
    pub device_id: Option<String>,
    pub browser_signature: Option<String>,
    /// The dashboard notice a `notice_shown` or `notice_clicked` event is about.
    #[schema(value_type = Option<uuid::Uuid>)]
    pub notice_id: Option<String>,
    /// The account holder's contact email (`signup` and `profile_updated` only): where the
    /// email channel writes. Personal data: stored in PostgreSQL only, never logged.
    #[schema(value_type = Option<String>, format = "email")]
    pub contact_email: Option<String>,
}

/// A validated account event: the Avro record `io.meterline.v1.AccountEvent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountEvent {
    pub event_id: String,
    pub occurred_at: i64,
    pub received_at: i64,
    pub account_id: AccountId,
    #[serde(rename = "type")]
    pub kind: AccountEventType,
    pub plan: Option<Plan>,
    pub seats: Option<i64>,
    pub email_domain: Option<String>,
    pub company_size: Option<i64>,
    pub signup_ip_hash: Option<String>,
    pub device_id: Option<String>,
    pub browser_signature: Option<String>,
    /// Added in version 2 of the schema; version-1 records read as `None`.
    #[serde(default)]
    pub notice_id: Option<String>,
    /// Review events (version 3): who decided (a person, or `meterline:…` for the scorer and
    /// its rule), why, and the abuse score at the time. Older records read as `None`.
    #[serde(default)]
    pub actor: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub abuse_score: Option<i64>,
    /// Version 4: the contact email of a `signup` or `profile_updated` event. Older records
    /// read as `None`.
    #[serde(default)]
    pub contact_email: Option<ContactEmail>,
}

/// The longest review actor and reason, in characters.
pub const MAX_ACTOR_LEN: usize = 128;
pub const MAX_REASON_LEN: usize = 2_000;

impl AccountEvent {
    /// An event of `kind` with no optional field set.
    pub fn new(
        event_id: String,
        at: DateTime<Utc>,
        account_id: AccountId,
        kind: AccountEventType,
    ) -> Self {
        Self {
            event_id,
            occurred_at: at.timestamp_micros(),
            received_at: at.timestamp_micros(),
            account_id,
            kind,
            plan: None,
            seats: None,
            email_domain: None,
            company_size: None,
            signup_ip_hash: None,
            device_id: None,
            browser_signature: None,
            notice_id: None,
            actor: None,
            reason: None,
            abuse_score: None,
            contact_email: None,
        }
    }

    /// A review decision: `kind` must be a review type; actor and reason are required
    /// (non-empty, no control characters except a reason's line breaks, bounded).
    pub fn review(
        event_id: String,
        at: DateTime<Utc>,
        account_id: AccountId,
        kind: AccountEventType,
        actor: &str,
        reason: &str,
        abuse_score: Option<u32>,
    ) -> Result<Self, FieldError> {
        if !kind.is_review() {
            return Err(FieldError::new(
                "type",
                format!("{} is not a review event", kind.as_str()),
            ));
        }
        let actor = actor.trim();
        let reason = reason.trim();
        let actor = optional_label("actor", Some(actor.to_owned()), MAX_ACTOR_LEN)?;
        if reason.is_empty() {
            return Err(FieldError::new("reason", "must not be empty"));
        }
        if reason.chars().count() > MAX_REASON_LEN {
            return Err(FieldError::new(
                "reason",
                format!("longer than {MAX_REASON_LEN} characters"),
            ));
        }
        if reason
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            return Err(FieldError::new("reason", "contains a control character"));
        }
        let mut e = Self::new(event_id, at, account_id, kind);
        e.actor = actor;
        e.reason = Some(reason.to_owned());
        e.abuse_score = abuse_score.map(i64::from);
        Ok(e)
    }
}

const MAX_COUNT: u64 = 100_000_000;

fn count(field: &str, v: Option<u64>) -> Result<Option<i64>, FieldError> {
    match v {
        Some(n) if n > MAX_COUNT => Err(FieldError::new(
            field,
            format!("must be at most {MAX_COUNT}"),
        )),
        other => Ok(other.map(|n| n as i64)),
    }
}

fn email_domain(v: Option<String>) -> Result<Option<String>, FieldError> {
    let Some(d) = optional_label("email_domain", v, 253)? else {
        return Ok(None);
    };
    let d = d.to_ascii_lowercase();
    let ok = d.contains('.')
        && !d.starts_with('.')
        && !d.ends_with('.')
        && d.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if !ok {
        return Err(FieldError::new(
            "email_domain",
            format!("{d:?} is not a domain name (give the part after @)"),
        ));
    }
    Ok(Some(d))
}

impl AccountEventInput {
    pub fn validate(
        self,
        now: DateTime<Utc>,
        ip_hasher: &IpHasher,
    ) -> Result<AccountEvent, FieldError> {
        let (event_id, occurred_at, account_id) =
            account_envelope(self.event_id, self.occurred_at, self.account_id, now)?;
        let kind = AccountEventType::parse(
            self.kind
                .as_deref()
                .ok_or_else(|| FieldError::required("type"))?,
        )?;
        let plan = self
            .plan
            .as_deref()
            .map(|p| Plan::parse("plan", p))
            .transpose()?;
        if kind.is_review() {
            return Err(FieldError::new(
                "type",
                format!(
                    "{} is recorded through the review queue (meterline review, /v1/review), not posted",
                    kind.as_str()
                ),
            ));
        }
        let seats = count("seats", self.seats)?;
        match kind {
            AccountEventType::PlanChanged if plan.is_none() => {
                return Err(FieldError::new("plan", "required for type plan_changed"))
            }
            AccountEventType::SeatsChanged if seats.is_none() => {
                return Err(FieldError::new("seats", "required for type seats_changed"))
            }
            AccountEventType::ProfileUpdated
                if self.contact_email.is_none()
                    && self.email_domain.is_none()
                    && self.company_size.is_none() =>
            {
                return Err(FieldError::new(
                    "contact_email",
                    "type profile_updated needs one of contact_email, email_domain, company_size",
                ))
            }
            _ => {}
        }
        let contact_email = match (kind, self.contact_email) {
            (_, None) => None,
            (AccountEventType::Signup | AccountEventType::ProfileUpdated, Some(raw)) => {
                Some(ContactEmail::parse("contact_email", &raw)?)
            }
            (other, Some(_)) => {
                return Err(FieldError::new(
                    "contact_email",
                    format!(
                        "only signup and profile_updated events carry it, not {}",
                        other.as_str()
                    ),
                ))
            }
        };
        // A signup with no plan is a free signup: that is what the free tier is.
        let plan = match (kind, plan) {
            (AccountEventType::Signup, None) => Some(Plan::Free),
            (_, p) => p,
        };
        Ok(AccountEvent {
            event_id: event_id.to_string(),
            occurred_at,
            received_at: now.timestamp_micros(),
            account_id,
            kind,
            plan,
            seats,
            email_domain: email_domain(self.email_domain)?,
            company_size: count("company_size", self.company_size)?,
            signup_ip_hash: self
                .signup_ip
                .map(|ip| ip_hasher.hash_ip("signup_ip", &ip))
                .transpose()?,
            device_id: optional_label("device_id", self.device_id, MAX_LABEL_LEN)?,
            browser_signature: optional_label(
                "browser_signature",
                self.browser_signature,
                MAX_LABEL_LEN,
            )?,
            notice_id: self
                .notice_id
                .map(|id| {
                    uuid::Uuid::parse_str(&id)
                        .map(|u| u.to_string())
                        .map_err(|_| FieldError::new("notice_id", format!("{id:?} is not a UUID")))
                })
                .transpose()?,
            actor: None,
            reason: None,
            abuse_score: None,
            contact_email,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::from_json_naming_field;

    fn check(v: serde_json::Value) -> Result<AccountEvent, FieldError> {
        let input: AccountEventInput = from_json_naming_field(&v.to_string())?;
        input.validate(Utc::now(), &IpHasher::new("k"))
    }

    fn base(kind: &str) -> serde_json::Value {
        serde_json::json!({
            "event_id": uuid::Uuid::new_v4().to_string(),
            "occurred_at": Utc::now().to_rfc3339(),
            "account_id": "acct-9",
            "type": kind,
        })
    }

    #[test]
    fn signup_defaults_to_free_and_hashes_the_ip() {
        let mut v = base("signup");
        v["signup_ip"] = "192.0.2.1".into();
        v["email_domain"] = "Example.COM".into();
        let e = check(v).unwrap();
        assert_eq!(e.plan, Some(Plan::Free));
        assert_eq!(e.email_domain.as_deref(), Some("example.com"));
        assert_eq!(e.signup_ip_hash.unwrap().len(), 32);
    }

    /// The contact email: checked, only on the events that carry it, and never in an error or
    /// a debug print.
    #[test]
    fn contact_email_is_validated_on_signup_and_profile_updated_only() {
        type Case<'a> = (&'a str, Option<&'a str>, Result<Option<&'a str>, &'a str>);
        let cases: [Case; 7] = [
            ("signup", Some(" Ana@Example.com "), Ok(Some("Ana@example.com"))),
            ("signup", None, Ok(None)),
            ("profile_updated", Some("ana@example.com"), Ok(Some("ana@example.com"))),
            (
                "profile_updated",
                None,
                Err("contact_email: type profile_updated needs one of contact_email, email_domain, company_size"),
            ),
            ("signup", Some("ana at example.com"), Err("contact_email: not an email address")),
            (
                "churned",
                Some("ana@example.com"),
                Err("contact_email: only signup and profile_updated events carry it, not churned"),
            ),
            ("email_unsubscribed", None, Ok(None)),
        ];
        for (kind, email, want) in cases {
            let mut v = base(kind);
            if let Some(e) = email {
                v["contact_email"] = e.into();
            }
            match (check(v), want) {
                (Ok(e), Ok(w)) => {
                    assert_eq!(e.contact_email.as_ref().map(|c| c.expose()), w, "{kind}");
                    assert!(!format!("{e:?}").contains("ana@"), "{kind}: {e:?}");
                }
                (Err(e), Err(w)) => {
                    let e = e.to_string();
                    assert!(e.starts_with(w), "{kind}: {e}");
                    assert!(!e.contains("ana"), "the error repeats the address: {e}");
                }
                (got, w) => panic!("{kind}: wanted {w:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn a_review_decision_needs_an_actor_and_a_reason() {
        let at = Utc::now();
        let acct = AccountId::parse("acct-9").unwrap();
        let id = || uuid::Uuid::new_v4().to_string();
        let review = |actor: &str, reason: &str| {
            AccountEvent::review(
                id(),
                at,
                acct.clone(),
                AccountEventType::ReviewConfirmed,
                actor,
                reason,
                Some(70),
            )
        };
        let e = review(
            " ana@example.com ",
            "same prompt from 40 sessions\nsee ticket 12",
        )
        .unwrap();
        assert_eq!(e.actor.as_deref(), Some("ana@example.com"));
        assert_eq!(e.abuse_score, Some(70));
        assert_eq!(
            review("", "x").unwrap_err().to_string(),
            "actor: must not be empty"
        );
        assert_eq!(
            review("ana", "  ").unwrap_err().to_string(),
            "reason: must not be empty"
        );
        assert!(review(&"a".repeat(129), "x")
            .unwrap_err()
            .to_string()
            .starts_with("actor: longer"));
        assert_eq!(
            review("ana", "a\u{7}b").unwrap_err().to_string(),
            "reason: contains a control character"
        );
        let not_review =
            AccountEvent::review(id(), at, acct, AccountEventType::Signup, "a", "b", None);
        assert_eq!(
            not_review.unwrap_err().to_string(),
            "type: signup is not a review event"
        );
    }

    #[test]
    fn type_specific_fields_are_required() {
        assert_eq!(
            check(base("plan_changed")).unwrap_err().to_string(),
            "plan: required for type plan_changed"
        );
        assert_eq!(
            check(base("seats_changed")).unwrap_err().to_string(),
            "seats: required for type seats_changed"
        );
        let mut v = base("plan_changed");
        v["plan"] = "gold".into();
        assert_eq!(
            check(v).unwrap_err().to_string(),
            "plan: \"gold\" is not one of free, pro, enterprise"
        );
        assert!(check(base("exploded"))
            .unwrap_err()
            .to_string()
            .starts_with("type: "));
        let mut v = base("notice_clicked");
        v["notice_id"] = "n-1".into();
        assert_eq!(
            check(v).unwrap_err().to_string(),
            "notice_id: \"n-1\" is not a UUID"
        );
        assert_eq!(
            check(base("review_confirmed")).unwrap_err().to_string(),
            "type: review_confirmed is recorded through the review queue (meterline review, /v1/review), not posted"
        );
        let mut v = base("signup");
        v["email_domain"] = "someone@example.com".into();
        assert!(check(v)
            .unwrap_err()
            .to_string()
            .starts_with("email_domain: "));
    }
}
