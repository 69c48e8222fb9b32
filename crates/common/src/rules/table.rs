//! Decisions about the status table's writes: which counter shard a batch updates, how
//! a page's batches are grouped into transactions, when a batch's failed marker changes,
//! and what a cancelled transaction means.

use crate::rules::batch::{BatchId, PageBatch, encoded_size};
use crate::rules::failure::is_transient_code;
use crate::rules::outcomes::Outcomes;

/// Counter shards per run.
pub const COUNTER_SHARDS: u64 = 16;
/// DynamoDB's limits on one `TransactWriteItems`: 100 actions and 4 MB. A page's
/// batches go in transactions of at most 99 batch items and the run item's update,
/// and at most this many bytes of batch items, well within the 4 MB.
const BATCHES_PER_TRANSACTION: usize = 99;
const TRANSACTION_BATCH_BYTES: usize = 3 * 1024 * 1024;

/// Which counter shard a batch's transactions update: spread by batch, the same for a
/// retry.
pub fn counter_shard(batch: &BatchId) -> u64 {
    // FNV-1a: stable across processes and versions, unlike std's hasher.
    let hash = batch.as_str().bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    hash % COUNTER_SHARDS
}

/// A page's batches in groups of one transaction each: at most
/// [`BATCHES_PER_TRANSACTION`] batches (with the run item's update, within DynamoDB's 100
/// actions) and [`TRANSACTION_BATCH_BYTES`] of batch items (within its 4 MB). Always at
/// least one group, which may be empty: a page with nothing selected still moves the
/// listing position.
pub fn transaction_groups<'a, 'b>(batches: &'a [PageBatch<'b>]) -> Vec<&'a [PageBatch<'b>]> {
    let mut groups = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, batch) in batches.iter().enumerate() {
        // The batch item: its key (the id, as sk) and files.
        let size = encoded_size(batch.files) + batch.id.as_str().len() + 64;
        if i > start
            && (i - start == BATCHES_PER_TRANSACTION || bytes + size > TRANSACTION_BATCH_BYTES)
        {
            groups.push(&batches[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    groups.push(&batches[start..]);
    groups
}

/// How a batch's failed marker changes when its outcomes go from `seen` to `next`: it
/// is there exactly while the batch has failed files, so that status finds failed files
/// without reading every batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerChange {
    Appears,
    Goes,
}

pub fn marker_change(seen: &Outcomes, next: &Outcomes) -> Option<MarkerChange> {
    match (seen.failed() > 0, next.failed() > 0) {
        (false, true) => Some(MarkerChange::Appears),
        (true, false) => Some(MarkerChange::Goes),
        _ => None,
    }
}

/// Why a conditional write was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled {
    /// A condition did not hold: someone else wrote the item since it was read.
    Raced,
    /// DynamoDB refused for now (conflict with another transaction, throttling).
    Contended(String),
}

/// What a cancelled transaction's reasons (one code per action, `None` for an action
/// that was fine) mean; `None` when they are neither a race nor contention, so the
/// cancellation is the caller's error.
pub fn cancellation(reasons: &[String]) -> Option<Cancelled> {
    let reasons: Vec<&str> = reasons
        .iter()
        .map(String::as_str)
        .filter(|c| *c != "None")
        .collect();
    if reasons.contains(&"ConditionalCheckFailed") {
        Some(Cancelled::Raced)
    } else {
        reasons
            .iter()
            .find(|c| is_transient_code(c) || **c == "ThrottlingError")
            .map(|code| Cancelled::Contended(code.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::batch::{ListedFile, positioned};
    use crate::rules::outcomes::Outcome;

    #[test]
    fn counter_shards_are_stable_and_spread() {
        let id = |key: String| BatchId::recorded(key);
        assert_eq!(
            counter_shard(&id("raw/a.csv".into())),
            counter_shard(&id("raw/a.csv".into()))
        );
        let shards: std::collections::HashSet<u64> = (0..200)
            .map(|i| counter_shard(&id(format!("raw/{i}.csv"))))
            .collect();
        assert_eq!(shards.len(), COUNTER_SHARDS as usize);
    }

    #[test]
    fn pages_go_in_transactions_within_dynamodbs_limits() {
        let small: Vec<ListedFile> = (0..250)
            .map(|i| ListedFile {
                key: format!("raw/{i:04}"),
                size: 1,
                etag: "e".into(),
                storage_class: None,
            })
            .collect();
        let keys: Vec<String> = small.iter().map(|f| f.key.clone()).collect();
        let batches = positioned(small.chunks(1).collect(), &keys);
        let sizes: Vec<usize> = transaction_groups(&batches)
            .iter()
            .map(|g| g.len())
            .collect();
        assert_eq!(sizes, [99, 99, 52], "99 batches and the position each");
        let long: Vec<ListedFile> = (0..40)
            .map(|i| ListedFile {
                key: format!("raw/{i:04}{}", "k".repeat(90 * 1024)),
                size: 1,
                etag: "e".into(),
                storage_class: None,
            })
            .collect();
        let keys: Vec<String> = long.iter().map(|f| f.key.clone()).collect();
        let batches = positioned(long.chunks(1).collect(), &keys);
        for group in transaction_groups(&batches) {
            let bytes: usize = group.iter().map(|b| encoded_size(b.files)).sum();
            assert!(bytes <= TRANSACTION_BATCH_BYTES, "{bytes}");
        }
        assert_eq!(
            transaction_groups(&[]).len(),
            1,
            "an empty page still moves the position"
        );
    }

    #[test]
    fn the_failed_marker_is_there_exactly_while_the_batch_has_failed_files() {
        let started = Outcomes::started(2);
        let mut failed = started.clone();
        failed.apply(&[(0, Outcome::Failed { reason: "r".into() })]);
        let mut completed = started.clone();
        completed.apply(&[(
            0,
            Outcome::Completed {
                size: 1,
                verification: Default::default(),
            },
        )]);
        assert_eq!(
            marker_change(&started, &failed),
            Some(MarkerChange::Appears)
        );
        assert_eq!(marker_change(&failed, &failed), None);
        assert_eq!(marker_change(&started, &completed), None);
        let mut recovered = failed.clone();
        recovered.apply(&[(
            0,
            Outcome::Completed {
                size: 1,
                verification: Default::default(),
            },
        )]);
        assert_eq!(marker_change(&failed, &recovered), Some(MarkerChange::Goes));
    }

    #[test]
    fn a_cancelled_transaction_is_a_race_contention_or_the_callers_error() {
        let codes = |c: &[&str]| c.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        assert_eq!(
            cancellation(&codes(&[
                "None",
                "ConditionalCheckFailed",
                "TransactionConflict"
            ])),
            Some(Cancelled::Raced)
        );
        assert_eq!(
            cancellation(&codes(&["None", "TransactionConflict"])),
            Some(Cancelled::Contended("TransactionConflict".into()))
        );
        assert_eq!(
            cancellation(&codes(&["ThrottlingError"])),
            Some(Cancelled::Contended("ThrottlingError".into()))
        );
        assert_eq!(cancellation(&codes(&["ValidationError"])), None);
        assert_eq!(cancellation(&[]), None);
    }
}
