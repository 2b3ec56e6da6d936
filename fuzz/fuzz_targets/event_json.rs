//! The JSON event parser and validator, as ingest runs them on every event of a batch: any
//! bytes must come back as an event or as a field-named error, never a panic.
#![no_main]

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use meterline_schemas::usage::from_json_naming_field;
use meterline_schemas::{AccountEventInput, IpHasher, UsageEventInput};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A fixed clock, so a crash reproduces.
    let now = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
    let hasher = IpHasher::new(b"fuzz");
    match from_json_naming_field::<UsageEventInput>(text) {
        Ok(e) => {
            if let Err(err) = e.validate(now, &hasher) {
                assert!(!err.field.is_empty(), "an error must name its field");
            }
        }
        Err(err) => assert!(!err.field.is_empty() || !err.reason.is_empty()),
    }
    if let Ok(e) = from_json_naming_field::<AccountEventInput>(text) {
        if let Err(err) = e.validate(now, &hasher) {
            assert!(!err.field.is_empty(), "an error must name its field");
        }
    }
});
