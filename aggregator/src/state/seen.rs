//! The ids one checkpoint counted for one day, as one Redis value.
//!
//! A partition's checkpoint makes its deduplication durable: `ckpt.lua` stores the ids the
//! partition counted since its last checkpoint, by the day their events occurred on, in the
//! same call that moves the offset, and the partition's next owner reads them back when it
//! claims the partition ([`super::partition::Partition::claim`]). They are appended as one
//! value per checkpoint and day to the list
//! [`meterline_schemas::keys::hot::HotKeys::counted_ids`], in this format.
//!
//! # Why not a set of ids
//! Until this format the ids were the members of a set. A member costs Redis about 0.67 µs
//! inside the script and 89 bytes; in a value, an id costs about 0.05 µs and 19 bytes
//! (measured on the development machine: scripts each adding 3,000 UUIDs to a set took 2,011 µs
//! per call by `INFO commandstats`, each appending them as one value to a list 149 µs; 90,000
//! ids held 8.05 MB as a set and 1.72 MB as values, by `MEMORY USAGE`, and 3,000 ids of
//! one-id checkpoints 265 KB against 58 KB). The set also held Redis for the whole checkpoint,
//! so a quota check arriving meanwhile waited for it. The checkpoint does not need a set: its
//! ids are only ever read back whole, and the owner deduplicates in memory. The ids are kept
//! 36 days after their day (they are the deduplication horizon), so the bytes per id are most
//! of what the hot state holds for a busy partition.
//!
//! # Format
//! The ids back to back, each as one entry:
//! - `0x00` and the 16 bytes of the UUID, for an id that is a UUID in its canonical form
//!   (lowercase, hyphenated: what ingest writes), 17 bytes instead of 36;
//! - `0x01`, the id's length in bytes as a big-endian `u32`, and its bytes, for any other id
//!   (the topic may hold events from other writers).
//!
//! Decoding gives back exactly the strings encoded (a property test below).

use uuid::Uuid;

/// A stored value that is not in this format.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("counted ids: {0}")]
pub struct Malformed(&'static str);

const UUID: u8 = 0;
const TEXT: u8 = 1;

/// Whether `id` is a UUID in the form [`Uuid::hyphenated`] writes, so that it comes back
/// identical from its 16 bytes.
fn canonical_uuid(id: &str) -> Option<Uuid> {
    if id.len() != 36 || id.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    // 36 characters that parse can only be the hyphenated form.
    Uuid::try_parse(id).ok()
}

/// Ids in this format, appended one at a time, with their count: what a checkpoint stores for
/// one day, held encoded while it waits.
///
/// A partition keeps the ids it counted since its last checkpoint until that checkpoint lands,
/// which waits for ClickHouse, so during a ClickHouse stall they pile up
/// ([`super::partition::FlushPolicy::max_seen`] bounds them). As strings in a `Vec` they took
/// about 90 bytes each (the string's 36 bytes in a 48-byte allocation, its 24-byte header, and
/// the vector's spare room) and an allocation each; here a canonical UUID takes 17 bytes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ids {
    value: Vec<u8>,
    len: usize,
}

impl Ids {
    /// Appends `id`.
    pub fn push(&mut self, id: &str) {
        match canonical_uuid(id) {
            Some(u) => {
                self.value.push(UUID);
                self.value.extend_from_slice(u.as_bytes());
            }
            None => {
                self.value.push(TEXT);
                let len = u32::try_from(id.len()).expect("an event id under 4 GiB");
                self.value.extend_from_slice(&len.to_be_bytes());
                self.value.extend_from_slice(id.as_bytes());
            }
        }
        self.len += 1;
    }

    /// Ids appended.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value holding them, as the checkpoint stores it.
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// The ids, in the order appended.
    pub fn to_strings(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.len);
        decode_into(&self.value, &mut out).expect("a value this type wrote decodes");
        out
    }
}

impl<S: AsRef<str>> FromIterator<S> for Ids {
    fn from_iter<I: IntoIterator<Item = S>>(ids: I) -> Self {
        let mut out = Self::default();
        for id in ids {
            out.push(id.as_ref());
        }
        out
    }
}

/// The ids `value` holds, appended to `out`.
pub fn decode_into(mut value: &[u8], out: &mut Vec<String>) -> Result<(), Malformed> {
    fn take<'a>(value: &mut &'a [u8], n: usize) -> Result<&'a [u8], Malformed> {
        if value.len() < n {
            return Err(Malformed("an entry is cut short"));
        }
        let (head, rest) = value.split_at(n);
        *value = rest;
        Ok(head)
    }
    while let Some((&tag, rest)) = value.split_first() {
        value = rest;
        match tag {
            UUID => {
                let bytes: [u8; 16] = take(&mut value, 16)?.try_into().expect("16 bytes");
                out.push(Uuid::from_bytes(bytes).hyphenated().to_string());
            }
            TEXT => {
                let len = u32::from_be_bytes(take(&mut value, 4)?.try_into().expect("4 bytes"));
                let text = take(&mut value, len as usize)?;
                let id = std::str::from_utf8(text).map_err(|_| Malformed("an id is not UTF-8"))?;
                out.push(id.to_owned());
            }
            _ => return Err(Malformed("an entry starts with an unknown tag")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The value holding `ids`.
    fn encode(ids: &[impl AsRef<str>]) -> Vec<u8> {
        let ids: Ids = ids.iter().collect();
        assert_eq!(ids.len(), ids.to_strings().len());
        ids.value().to_vec()
    }

    /// The ids `value` holds.
    fn decode(value: &[u8]) -> Result<Vec<String>, Malformed> {
        let mut out = Vec::new();
        decode_into(value, &mut out)?;
        Ok(out)
    }

    #[test]
    fn a_canonical_uuid_takes_seventeen_bytes_and_anything_else_is_kept_as_it_is() {
        let ids = [
            "0f0e0d0c-0b0a-4908-8706-050403020100",
            // Not canonical: each would come back different from its 16 bytes.
            "0F0E0D0C-0B0A-4908-8706-050403020100",
            "0f0e0d0c0b0a49088706050403020100",
            "{0f0e0d0c-0b0a-4908-8706-050403020100}",
            "",
            "e-1\nwith a line break",
            "é",
        ];
        let value = encode(&ids);
        assert_eq!(&value[..17][..1], &[UUID]);
        assert_eq!(
            value.len(),
            17 + ids[1..].iter().map(|id| 5 + id.len()).sum::<usize>()
        );
        assert_eq!(decode(&value).unwrap(), ids);
        assert_eq!(decode(&[]).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_value_cut_short_or_unknown_is_refused() {
        let value = encode(&["0f0e0d0c-0b0a-4908-8706-050403020100", "e-1"]);
        for cut in [1, 16, 18, 21, value.len() - 1] {
            assert_eq!(
                decode(&value[..cut]),
                Err(Malformed("an entry is cut short")),
                "{cut}"
            );
        }
        assert_eq!(
            decode(&[2, 0]),
            Err(Malformed("an entry starts with an unknown tag"))
        );
        assert_eq!(
            decode(&[TEXT, 0, 0, 0, 1, 0xff]),
            Err(Malformed("an id is not UTF-8"))
        );
    }

    proptest! {
        #[test]
        fn decoding_gives_back_the_ids_encoded(
            ids in prop::collection::vec(
                prop_oneof![
                    any::<u128>().prop_map(|n| Uuid::from_u128(n).hyphenated().to_string()),
                    any::<u128>().prop_map(|n| Uuid::from_u128(n).simple().to_string()),
                    any::<u128>().prop_map(|n| Uuid::from_u128(n).hyphenated().to_string().to_uppercase()),
                    ".*",
                ],
                0..40,
            )
        ) {
            prop_assert_eq!(decode(&encode(&ids)).unwrap(), ids);
        }
    }
}
