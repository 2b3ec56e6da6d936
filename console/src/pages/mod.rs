//! One module per page family. Each handler reads what its page shows through the crate that
//! owns the data, then renders one template with the [`Session`](crate::session::Session) (for the navigation, the
//! viewer/reviewer role and the CSRF token its forms carry).

pub mod account;
pub mod growth;
pub mod home;
pub mod lists;
pub mod ops;
pub mod review;
pub mod signin;

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::error::{ConsoleError, Result};

/// A submitted form's fields.
pub type Fields = HashMap<String, String>;

/// A required, trimmed, non-empty field, at most `max` characters.
pub fn required<'a>(fields: &'a Fields, name: &str, max: usize) -> Result<&'a str> {
    let v = fields.get(name).map(|s| s.trim()).unwrap_or("");
    if v.is_empty() {
        return Err(ConsoleError::BadRequest(format!("{name}: required")));
    }
    if v.chars().count() > max {
        return Err(ConsoleError::BadRequest(format!(
            "{name}: longer than {max} characters"
        )));
    }
    Ok(v)
}

/// A time as pages show it.
pub fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

pub fn when_opt(t: Option<DateTime<Utc>>) -> String {
    t.map(when).unwrap_or_default()
}
