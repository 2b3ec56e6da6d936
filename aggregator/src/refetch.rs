//! Usage events read back from Kafka by the insert task, once they have left memory.
//!
//! While ClickHouse stalls, the events folded into the hot state wait for the insert task
//! ([`crate::inserter`]). Held decoded, each takes about 0.5 KB, so only
//! `aggregator.clickhouse_backlog_events` of them are kept, in at most
//! [`crate::inserter::MAX_WAITING_BATCHES`] batches. Past that, the insert task keeps of
//! each further batch only where its new usage events are in the log: per partition, runs of
//! offsets ([`Spilled`]), about 16 bytes a run, and a run is broken only where a record was a
//! duplicate or did not decode. When their turn comes it reads them back from the usage topic
//! ([`Reader::read`]) and decodes them again, which gives the same events: a record's bytes do
//! not change, and decoding depends only on them and the schema registry's ids, which never
//! change meaning. So the waiting events cost memory bytes each, not half a kilobyte; what
//! bounds the stall the quota counters follow is then the ids waiting for each partition's
//! checkpoint ([`crate::state::partition::FlushPolicy::max_seen`]).
//!
//! The log keeps the records at least until their offsets are committed, which waits for
//! ClickHouse too, unless the topic's retention deletes them first: a stall longer than the
//! retention (7 days by default in Kafka) loses them for ClickHouse, and the insert task then
//! reports every attempt to read them as failed rather than skipping them.
//!
//! Reading back assigns the one partition to a consumer of its own (no group, nothing
//! committed) at the first offset wanted, and reads on until the last, keeping the offsets of
//! the runs.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use meterline_schemas::UsageEvent;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::decode::{Decoded, Decoder, RawRecord, Stream};
use crate::SinkError;

/// How long reading back waits for the next record before it gives the attempt up (the
/// insert task retries it).
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Where one batch's new usage events of one partition are in the log, and how far the batch
/// was handled there.
#[derive(Debug, Clone)]
pub struct Spilled {
    pub partition: i32,
    /// The claim the batch was folded under ([`crate::state::store::HotStore::claim_of`]).
    pub alive: Arc<AtomicBool>,
    /// Inclusive runs of offsets, ascending and apart.
    pub runs: Vec<(i64, i64)>,
    /// The batch's last offset handled in the partition: what ClickHouse holds once these
    /// events are in.
    pub upto: i64,
}

impl Spilled {
    /// The events it stands for.
    pub fn events(&self) -> usize {
        offsets_in(&self.runs)
    }
}

/// The offsets inclusive `runs` hold.
fn offsets_in(runs: &[(i64, i64)]) -> usize {
    runs.iter().map(|(a, b)| (b - a + 1) as usize).sum()
}

/// Ascending `offsets` as inclusive runs of consecutive ones.
pub fn runs(offsets: impl IntoIterator<Item = i64>) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::new();
    for o in offsets {
        match out.last_mut() {
            Some((_, end)) if *end + 1 == o => *end = o,
            _ => out.push((o, o)),
        }
    }
    out
}

/// What reading back needs: the brokers, the usage topic and the decoder.
#[derive(Clone)]
pub struct Refetch {
    config: ClientConfig,
    topic: String,
    decoder: Decoder,
}

impl Refetch {
    /// `base` carries the broker list and any security settings; `group_id` is the
    /// aggregators' group, which librdkafka needs named although nothing joins or commits.
    pub fn new(base: &ClientConfig, group_id: &str, topic: &str, decoder: Decoder) -> Self {
        let mut config = meterline_infra::kafka::with_fetch_wait(base.clone());
        config
            .set("group.id", format!("{group_id}-read-back"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // An offset no longer in the log is an error to report, not a place to restart.
            .set("auto.offset.reset", "error");
        Self {
            config,
            topic: topic.to_owned(),
            decoder,
        }
    }

    /// A consumer to read back with; one serves any number of reads.
    pub fn reader(&self) -> Result<Reader<'_>, SinkError> {
        Ok(Reader {
            consumer: self.config.create()?,
            refetch: self,
        })
    }
}

pub struct Reader<'a> {
    consumer: StreamConsumer,
    refetch: &'a Refetch,
}

impl Reader<'_> {
    /// The usage events at the offsets of `runs` in `partition`, in offset order. Fails if
    /// one is missing from the log or no longer decodes as a usage event.
    pub async fn read(
        &self,
        partition: i32,
        runs: &[(i64, i64)],
    ) -> Result<Vec<Decoded<UsageEvent>>, SinkError> {
        let (Some(&(first, _)), Some(&(_, last))) = (runs.first(), runs.last()) else {
            return Ok(Vec::new());
        };
        let topic = &self.refetch.topic;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, partition, Offset::Offset(first))?;
        self.consumer.assign(&assignment)?;
        let wanted = |o: i64| {
            let i = runs.partition_point(|&(_, end)| end < o);
            runs.get(i).is_some_and(|&(start, _)| start <= o)
        };
        let mut records = Vec::new();
        let mut next = first;
        while next <= last {
            let m = tokio::time::timeout(READ_TIMEOUT, self.consumer.recv())
                .await
                .map_err(|_| {
                    SinkError::HotState(format!(
                        "usage events of partition {partition} from offset {next} to {last} not read back from Kafka within {} s",
                        READ_TIMEOUT.as_secs()
                    ))
                })??;
            // Records of an earlier assignment may still be queued.
            if m.topic() != topic || m.partition() != partition || m.offset() < next {
                continue;
            }
            if wanted(m.offset()) {
                records.push(RawRecord {
                    topic: topic.clone(),
                    partition,
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                });
            }
            next = m.offset() + 1;
        }
        let expected = offsets_in(runs);
        let decoded = self
            .refetch
            .decoder
            .decode(&records, |_| Some(Stream::Usage))
            .await?;
        if records.len() != expected || !decoded.poison.is_empty() {
            return Err(SinkError::HotState(format!(
                "partition {partition}, offsets {first} to {last}: {} of {expected} usage events read back from Kafka, {} of them no longer decode",
                records.len(),
                decoded.poison.len()
            )));
        }
        Ok(decoded.usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_make_runs_broken_where_one_is_missing() {
        assert_eq!(runs([]), []);
        assert_eq!(runs([7]), [(7, 7)]);
        assert_eq!(
            runs([1, 2, 3, 5, 6, 9]),
            [(1, 3), (5, 6), (9, 9)],
            "4, 7 and 8 were duplicates"
        );
        let s = Spilled {
            partition: 0,
            alive: Arc::new(AtomicBool::new(true)),
            runs: runs([1, 2, 3, 5, 6, 9]),
            upto: 10,
        };
        assert_eq!(s.events(), 6);
    }
}
