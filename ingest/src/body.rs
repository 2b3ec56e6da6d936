//! Reading a request body into individual events, without letting one bad event spoil a batch.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use serde_json::value::RawValue;

use crate::error::ApiError;

/// How the events in a body are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `application/json`: one JSON array of event objects.
    JsonArray,
    /// `application/x-ndjson`: one event object per line.
    Ndjson,
}

pub fn framing(headers: &HeaderMap) -> Result<Framing, ApiError> {
    let raw = headers
        .get(header::CONTENT_TYPE)
        .ok_or_else(|| {
            ApiError::UnsupportedMediaType(
                "content-type: missing; send application/json or application/x-ndjson".into(),
            )
        })?
        .to_str()
        .unwrap_or("");
    let essence = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(Framing::JsonArray),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => Ok(Framing::Ndjson),
        _ => Err(ApiError::UnsupportedMediaType(format!(
            "content-type: {raw:?} is not supported; send application/json or application/x-ndjson"
        ))),
    }
}

/// The body length the client declared in `Content-Length`, if it did.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Reads at most `max_bytes` of body. A declared or actual larger body is `413`.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    max_bytes: usize,
    timeout: std::time::Duration,
) -> Result<axum::body::Bytes, ApiError> {
    let too_large = || ApiError::PayloadTooLarge(format!("body: larger than {max_bytes} bytes"));
    if let Some(len) = declared_length(headers) {
        if len > max_bytes as u64 {
            return Err(too_large());
        }
    }
    // A client that trickles its body in would otherwise hold the request (and its memory)
    // for as long as it likes.
    let read = tokio::time::timeout(timeout, axum::body::to_bytes(body, max_bytes))
        .await
        .map_err(|_| {
            ApiError::RequestTimeout(format!(
                "body: not received within {:.0} s",
                timeout.as_secs_f64()
            ))
        })?;
    read.map_err(|e| {
        // to_bytes reports the limit as a "length limit exceeded" error; anything else is a
        // broken connection.
        let is_limit = std::error::Error::source(&e)
            .map(|s| s.to_string().contains("length limit"))
            .unwrap_or(false)
            || e.to_string().contains("length limit");
        if is_limit {
            too_large()
        } else {
            ApiError::BadRequest(format!("body: could not be read ({e})"))
        }
    })
}

/// One event's slice of the body, or why it could not even be cut out (NDJSON only: a line
/// that is not JSON is a bad event, not a bad body).
pub enum Item<'a> {
    Json(&'a str),
    Unparseable(String),
}

/// Splits `bytes` into events. Fails with `400` when the body as a whole cannot be parsed and
/// with `413` when it holds more than `max_events`.
pub fn split(framing: Framing, bytes: &[u8], max_events: usize) -> Result<Vec<Item<'_>>, ApiError> {
    let too_many = || ApiError::PayloadTooLarge(format!("body: more than {max_events} events"));
    match framing {
        Framing::JsonArray => {
            let text = std::str::from_utf8(bytes)
                .map_err(|e| ApiError::BadRequest(format!("body: not valid UTF-8 ({e})")))?;
            let trimmed = text.trim_start();
            if !trimmed.starts_with('[') {
                return Err(ApiError::BadRequest(
                    "body: expected a JSON array of events (or NDJSON with Content-Type: application/x-ndjson)".into(),
                ));
            }
            let items: Vec<&RawValue> = serde_json::from_str(text)
                .map_err(|e| ApiError::BadRequest(format!("body: not valid JSON ({e})")))?;
            if items.len() > max_events {
                return Err(too_many());
            }
            Ok(items.into_iter().map(|r| Item::Json(r.get())).collect())
        }
        Framing::Ndjson => {
            let mut out = Vec::new();
            for line in bytes.split(|b| *b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if out.len() == max_events {
                    return Err(too_many());
                }
                out.push(match std::str::from_utf8(line) {
                    Ok(s) => match serde_json::from_str::<&RawValue>(s) {
                        Ok(raw) => Item::Json(raw.get()),
                        Err(e) => Item::Unparseable(format!("line is not valid JSON ({e})")),
                    },
                    Err(_) => Item::Unparseable("line is not valid UTF-8".into()),
                });
            }
            if out.is_empty() {
                return Err(ApiError::BadRequest("body: no events".into()));
            }
            Ok(out)
        }
    }
}

/// Best-effort `event_id` of an event that failed validation, to echo back in the rejection.
pub fn event_id_of(json: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct JustId {
        event_id: Option<serde_json::Value>,
    }
    serde_json::from_str::<JustId>(json)
        .ok()?
        .event_id
        .and_then(|v| v.as_str().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_arrays_split_and_count() {
        let items = split(Framing::JsonArray, br#"[{"a":1}, 2, "x"]"#, 3).unwrap();
        assert_eq!(items.len(), 3);
        assert!(matches!(
            split(Framing::JsonArray, b"[1,2,3,4]", 3),
            Err(ApiError::PayloadTooLarge(_))
        ));
        assert!(matches!(
            split(Framing::JsonArray, b"{\"a\":1}", 3),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            split(Framing::JsonArray, b"[{\"a\":", 3),
            Err(ApiError::BadRequest(_))
        ));
    }

    #[test]
    fn ndjson_keeps_good_lines_next_to_bad_ones() {
        let items = split(Framing::Ndjson, b"{\"a\":1}\r\n\nnot json\n{\"b\":2}\n", 10).unwrap();
        assert_eq!(items.len(), 3);
        assert!(matches!(items[1], Item::Unparseable(_)));
        assert!(matches!(
            split(Framing::Ndjson, b"1\n2\n3\n", 2),
            Err(ApiError::PayloadTooLarge(_))
        ));
        assert!(matches!(
            split(Framing::Ndjson, b"\n\n", 2),
            Err(ApiError::BadRequest(_))
        ));
    }

    #[test]
    fn content_types() {
        let mut h = HeaderMap::new();
        assert!(matches!(
            framing(&h),
            Err(ApiError::UnsupportedMediaType(_))
        ));
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert_eq!(framing(&h).unwrap(), Framing::JsonArray);
        h.insert(
            header::CONTENT_TYPE,
            "application/x-ndjson".parse().unwrap(),
        );
        assert_eq!(framing(&h).unwrap(), Framing::Ndjson);
        h.insert(header::CONTENT_TYPE, "text/csv".parse().unwrap());
        assert!(framing(&h).unwrap_err().to_string().contains("text/csv"));
    }
}
