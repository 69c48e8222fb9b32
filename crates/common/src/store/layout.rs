//! The status table's key layout (see the table in [`super`]): which partition and sort
//! key hold each item of a run.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use crate::rules::batch::BatchId;
use crate::rules::run::RunId;

pub(super) type Item = HashMap<String, AttributeValue>;

/// The sort key of the run item in its partition.
pub(super) const RUN_SK: &str = "run";

pub(super) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(super) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(super) fn key(pk: String, sk: impl Into<String>) -> Item {
    HashMap::from([("pk".to_string(), s(pk)), ("sk".to_string(), s(sk))])
}

pub(super) fn run_pk(run: &RunId) -> String {
    format!("{run}#run")
}

pub(super) fn batch_pk(run: &RunId) -> String {
    format!("{run}#batch")
}

pub(super) fn outcome_pk(run: &RunId) -> String {
    format!("{run}#outcome")
}

pub(super) fn failed_pk(run: &RunId) -> String {
    format!("{run}#failed")
}

pub(super) fn upload_pk(run: &RunId) -> String {
    format!("{run}#upload")
}

/// The run item's key.
pub(super) fn run_key(run: &RunId) -> Item {
    key(run_pk(run), RUN_SK)
}

/// The counter shard a batch's outcomes are counted on.
pub(super) fn counter_key(run: &RunId, batch: &BatchId) -> Item {
    let shard = crate::rules::table::counter_shard(batch);
    key(run_pk(run), format!("counter#{shard:02}"))
}

/// Whether a run partition's item is one of its counter shards.
pub(super) fn is_counter(sk: &str) -> bool {
    sk.starts_with("counter#")
}
