//! Newtypes that are parsed once, at the edge.

use serde::{Deserialize, Serialize};
use std::fmt;
use utoipa::ToSchema;

use crate::FieldError;

/// An account identifier: 1 to 128 characters of `[A-Za-z0-9._:-]`.
///
/// It is a plain string on the wire (JSON, Avro), and deserialising one runs the same check
/// as [`AccountId::parse`]: an Avro record or a JSON body with a bad id fails with the reason
/// (`account_id: character '\'' is not allowed; use [A-Za-z0-9._:-]`) instead of producing an
/// `AccountId` that could not have passed ingest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct AccountId(String);

impl AccountId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(s: &str) -> Result<Self, FieldError> {
        Self::check(s)?;
        Ok(Self(s.to_owned()))
    }

    fn check(s: &str) -> Result<(), FieldError> {
        if s.is_empty() {
            return Err(FieldError::new("account_id", "must not be empty"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(FieldError::new(
                "account_id",
                format!("longer than {} characters", Self::MAX_LEN),
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
        {
            return Err(FieldError::new(
                "account_id",
                format!("character {c:?} is not allowed; use [A-Za-z0-9._:-]"),
            ));
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Deserialisation goes through here (`#[serde(try_from = "String")]`).
impl TryFrom<String> for AccountId {
    type Error = FieldError;

    fn try_from(s: String) -> Result<Self, FieldError> {
        Self::check(&s)?;
        Ok(Self(s))
    }
}

/// Serialises as the bare string, as `#[serde(transparent)]` did (serde does not allow
/// `transparent` together with `try_from`).
impl Serialize for AccountId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// In the OpenAPI document: a string matching the rule [`AccountId::parse`] applies.
impl utoipa::PartialSchema for AccountId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(format!("^[A-Za-z0-9._:-]{{1,{}}}$", Self::MAX_LEN)))
            .description(Some(format!(
                "1 to {} characters of [A-Za-z0-9._:-]",
                Self::MAX_LEN
            )))
            .into()
    }
}

impl utoipa::ToSchema for AccountId {
    fn name() -> std::borrow::Cow<'static, str> {
        "AccountId".into()
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for AccountId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// An event id: a UUID, kept in its canonical lower-case hyphenated form so that the same id
/// written in two spellings deduplicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventId(uuid::Uuid);

impl EventId {
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        uuid::Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| FieldError::new("event_id", format!("{s:?} is not a UUID")))
    }

    pub fn new_random() -> Self {
        Self(uuid::Uuid::new_v4())
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// The plans an account can be on.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    Free,
    Pro,
    Enterprise,
}

impl Plan {
    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Free => "free",
            Plan::Pro => "pro",
            Plan::Enterprise => "enterprise",
        }
    }

    pub fn parse(field: &str, s: &str) -> Result<Self, FieldError> {
        match s {
            "free" => Ok(Plan::Free),
            "pro" => Ok(Plan::Pro),
            "enterprise" => Ok(Plan::Enterprise),
            _ => Err(FieldError::new(
                field,
                format!("{s:?} is not one of free, pro, enterprise"),
            )),
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kinds of account lifecycle event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccountEventType {
    Signup,
    PlanChanged,
    SeatsChanged,
    UpgradePageViewed,
    NoticeShown,
    NoticeClicked,
    Churned,
    /// Review (see [`crate::review`]): the scorer suspects abuse; stricter limits for a free
    /// account until a person decides.
    ReviewSuspected,
    /// Review: the high-confidence rule denied a free account without a person.
    ReviewAutoDenied,
    /// Review: a suspicion ended by itself (a whole quiet episode gap).
    ReviewExpired,
    /// Review: a person confirmed abuse; quota checks answer `deny`.
    ReviewConfirmed,
    /// Review: a person cleared the account.
    ReviewCleared,
    /// The account holder changed their profile (version 4): a new contact email, email
    /// domain or company size.
    ProfileUpdated,
    /// The account holder followed an email's one-click unsubscribe link (version 4): no more
    /// email to this account.
    EmailUnsubscribed,
}

impl AccountEventType {
    pub const ALL: [AccountEventType; 14] = [
        AccountEventType::Signup,
        AccountEventType::PlanChanged,
        AccountEventType::SeatsChanged,
        AccountEventType::UpgradePageViewed,
        AccountEventType::NoticeShown,
        AccountEventType::NoticeClicked,
        AccountEventType::Churned,
        AccountEventType::ReviewSuspected,
        AccountEventType::ReviewAutoDenied,
        AccountEventType::ReviewExpired,
        AccountEventType::ReviewConfirmed,
        AccountEventType::ReviewCleared,
        AccountEventType::ProfileUpdated,
        AccountEventType::EmailUnsubscribed,
    ];

    /// Review decisions: recorded by the scorer and the review queue (`meterline review`,
    /// `/v1/review/…`), never posted by a gateway. They carry an actor and a reason.
    pub fn is_review(self) -> bool {
        matches!(
            self,
            AccountEventType::ReviewSuspected
                | AccountEventType::ReviewAutoDenied
                | AccountEventType::ReviewExpired
                | AccountEventType::ReviewConfirmed
                | AccountEventType::ReviewCleared
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AccountEventType::Signup => "signup",
            AccountEventType::PlanChanged => "plan_changed",
            AccountEventType::SeatsChanged => "seats_changed",
            AccountEventType::UpgradePageViewed => "upgrade_page_viewed",
            AccountEventType::NoticeShown => "notice_shown",
            AccountEventType::NoticeClicked => "notice_clicked",
            AccountEventType::Churned => "churned",
            AccountEventType::ReviewSuspected => "review_suspected",
            AccountEventType::ReviewAutoDenied => "review_auto_denied",
            AccountEventType::ReviewExpired => "review_expired",
            AccountEventType::ReviewConfirmed => "review_confirmed",
            AccountEventType::ReviewCleared => "review_cleared",
            AccountEventType::ProfileUpdated => "profile_updated",
            AccountEventType::EmailUnsubscribed => "email_unsubscribed",
        }
    }

    pub fn parse(s: &str) -> Result<Self, FieldError> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|t| t.as_str()).collect();
                FieldError::new("type", format!("{s:?} is not one of {}", names.join(", ")))
            })
    }
}

/// Checks a free-text label such as `region` or `model`: present, not empty, at most
/// `max` characters, no control characters.
pub(crate) fn label(field: &str, value: Option<String>, max: usize) -> Result<String, FieldError> {
    let value = value.ok_or_else(|| FieldError::required(field))?;
    optional_label(field, Some(value), max)?.ok_or_else(|| FieldError::required(field))
}

pub(crate) fn optional_label(
    field: &str,
    value: Option<String>,
    max: usize,
) -> Result<Option<String>, FieldError> {
    match value {
        None => Ok(None),
        Some(v) if v.is_empty() => Err(FieldError::new(field, "must not be empty")),
        Some(v) if v.chars().count() > max => Err(FieldError::new(
            field,
            format!("longer than {max} characters"),
        )),
        Some(v) if v.chars().any(char::is_control) => {
            Err(FieldError::new(field, "contains a control character"))
        }
        Some(v) => Ok(Some(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_id_accepts_the_allowed_alphabet_and_bounds() {
        assert!(AccountId::parse("acct_1.a:b-C").is_ok());
        assert!(AccountId::parse(&"a".repeat(128)).is_ok());
        let too_long = AccountId::parse(&"a".repeat(129)).unwrap_err();
        assert_eq!(
            too_long.to_string(),
            "account_id: longer than 128 characters"
        );
        assert_eq!(
            AccountId::parse("").unwrap_err().to_string(),
            "account_id: must not be empty"
        );
        assert!(AccountId::parse("a b").unwrap_err().reason.contains("' '"));
        assert!(AccountId::parse("ü").is_err());
    }

    #[test]
    fn account_id_is_checked_when_deserialised_and_says_why() {
        let ok: AccountId = serde_json::from_str(r#""acct_1.a:b-C""#).unwrap();
        assert_eq!(ok, AccountId::parse("acct_1.a:b-C").unwrap());
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#""acct_1.a:b-C""#);

        let e = serde_json::from_str::<AccountId>(r#""o'brien""#).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("account_id: character '\\'' is not allowed; use [A-Za-z0-9._:-]"),
            "{e}"
        );
        let e = serde_json::from_str::<AccountId>(r#""""#).unwrap_err();
        assert!(
            e.to_string().starts_with("account_id: must not be empty"),
            "{e}"
        );
        // Inside a struct, the same reason comes out.
        #[derive(Debug, Deserialize)]
        struct Body {
            #[allow(dead_code)]
            account_id: AccountId,
        }
        let e = serde_json::from_str::<Body>(&format!(r#"{{"account_id":"{}"}}"#, "a".repeat(129)))
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("account_id: longer than 128 characters"),
            "{e}"
        );
    }

    #[test]
    fn event_id_is_canonicalised() {
        let a = EventId::parse("6F9619FF-8B86-D011-B42D-00C04FC964FF").unwrap();
        assert_eq!(a.to_string(), "6f9619ff-8b86-d011-b42d-00c04fc964ff");
        assert_eq!(
            EventId::parse("nope").unwrap_err().to_string(),
            "event_id: \"nope\" is not a UUID"
        );
    }

    #[test]
    fn account_event_types_round_trip() {
        for t in AccountEventType::ALL {
            assert_eq!(AccountEventType::parse(t.as_str()).unwrap(), t);
        }
        assert!(AccountEventType::parse("deleted")
            .unwrap_err()
            .reason
            .contains("signup"));
    }
}
