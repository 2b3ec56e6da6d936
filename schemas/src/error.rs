use std::fmt;

/// A validation failure that names the field and says why, e.g.
/// `occurred_at: more than 5 minutes in the future`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn required(field: &str) -> Self {
        Self::new(field, "required")
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
}

impl std::error::Error for FieldError {}

/// Failures of encoding or decoding records.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("message is {0} bytes, shorter than the 5-byte Confluent header")]
    TooShort(usize),
    #[error("bad magic byte {0:#04x}, expected 0x00")]
    BadMagic(u8),
    #[error("avro: {0}")]
    Avro(String),
}

impl From<apache_avro::Error> for SchemaError {
    fn from(e: apache_avro::Error) -> Self {
        SchemaError::Avro(e.to_string())
    }
}
