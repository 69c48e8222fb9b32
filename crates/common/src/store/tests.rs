//! The status table's answers to failing and racing requests, with the SDK's mocks.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::AttributeValue;

use super::layout::{n, s};
use super::{MasterRecords, SlaveRecords, Store, StoreError};
use crate::rules::batch::{BatchId, ListedFile, positioned};
use crate::rules::outcomes::{Delta, Outcome, Outcomes};
use crate::rules::records::BatchView;
use crate::rules::run::RunId;
use aws_sdk_dynamodb::operation::get_item::GetItemOutput;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsOutput;
use aws_sdk_dynamodb::operation::update_item::UpdateItemOutput;
use aws_sdk_dynamodb::types::CancellationReason;
use aws_sdk_dynamodb::types::error::TransactionCanceledException;
use aws_smithy_mocks::{RuleMode, mock, mock_client};

fn store(client: Client) -> Store {
    Store::new(client, "table", Duration::from_secs(60))
}

fn master(client: Client) -> MasterRecords {
    MasterRecords::new(store(client))
}

fn slave(client: Client) -> SlaveRecords {
    SlaveRecords::new(store(client))
}

fn run() -> RunId {
    RunId::parse("r").unwrap()
}

fn cancelled(codes: &[&str]) -> TransactWriteItemsError {
    let reasons = codes
        .iter()
        .map(|c| CancellationReason::builder().code(*c).build())
        .collect();
    TransactWriteItemsError::TransactionCanceledException(
        TransactionCanceledException::builder()
            .set_cancellation_reasons(Some(reasons))
            .build(),
    )
}

fn file(key: &str) -> ListedFile {
    ListedFile {
        key: key.into(),
        size: 10,
        etag: "e".into(),
        storage_class: None,
    }
}

fn batch_of(keys: &[&str]) -> BatchView {
    BatchView {
        id: BatchId::recorded(keys[0]),
        files: keys.iter().map(|k| file(k)).collect(),
        outcomes: Outcomes::started(keys.len()),
    }
}

#[tokio::test]
async fn a_page_is_recorded_with_its_position_in_one_transaction() {
    // GIVEN three batches of a page, the first transaction meeting a conflict
    let files: Vec<ListedFile> = (0..3).map(|i| file(&format!("raw/{i}"))).collect();
    let keys: Vec<String> = files.iter().map(|f| f.key.clone()).collect();
    let batches = positioned(files.chunks(1).collect(), &keys);
    let recorded = mock!(Client::transact_write_items)
        .match_requests(|r| {
            let items = r.transact_items();
            let puts = items.iter().filter(|i| i.put().is_some()).count();
            let position = items.last().and_then(|i| i.update());
            puts == 3
                && items.iter().take(3).all(|i| {
                    i.put().and_then(|p| p.condition_expression())
                        == Some("attribute_not_exists(pk)")
                })
                && position.is_some_and(|u| {
                    u.expression_attribute_values().unwrap()[":t"]
                        == AttributeValue::S("raw/9".into())
                        && u.expression_attribute_values().unwrap()[":n"]
                            == AttributeValue::N("3".into())
                })
        })
        .sequence()
        .error(|| cancelled(&["None", "None", "None", "TransactionConflict"]))
        .output(|| TransactWriteItemsOutput::builder().build())
        .build();
    let client = mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&recorded]);

    // WHEN it is recorded through its last key
    master(client)
        .record_page(&run(), Some("raw/0-before"), &batches, "raw/9")
        .await
        .unwrap();

    // THEN one transaction held the batches and the position, tried again
    assert_eq!(recorded.num_calls(), 2);
}

#[tokio::test]
async fn a_page_someone_else_recorded_is_a_progress_conflict() {
    let moved = mock!(Client::transact_write_items)
        .then_error(|| cancelled(&["None", "ConditionalCheckFailed"]));
    let client = mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&moved]);
    let files = [file("raw/a")];
    let keys = ["raw/a".to_string()];
    let err = master(client)
        .record_page(
            &run(),
            Some("raw/0"),
            &positioned(vec![&files[..]], &keys),
            "raw/b",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::ProgressConflict { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_throttled_service_is_retried_by_the_sdk() {
    let flaky = mock!(Client::update_item)
        .sequence()
        .http_status(503, None)
        .times(2)
        .output(|| UpdateItemOutput::builder().build())
        .build();
    let client = mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&flaky]);
    master(client).complete_listing(&run()).await.unwrap();
    assert_eq!(flaky.num_calls(), 3);
}

#[tokio::test]
async fn a_conflicting_transaction_is_tried_again() {
    let conflict = mock!(Client::transact_write_items)
        .sequence()
        .error(|| cancelled(&["None", "TransactionConflict"]))
        .output(|| TransactWriteItemsOutput::builder().build())
        .build();
    let client = mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&conflict]);
    let delta = slave(client)
        .record_outcomes(
            &run(),
            &batch_of(&["raw/a"]),
            &[(
                0,
                Outcome::Completed {
                    size: 10,
                    verification: Default::default(),
                },
            )],
        )
        .await
        .unwrap();
    assert_eq!(delta.completed, 1);
    assert_eq!(conflict.num_calls(), 2);
}

#[tokio::test]
async fn a_batch_recorded_by_another_delivery_is_read_again_and_not_counted_twice() {
    // The transaction is cancelled because another delivery wrote the outcome
    // item first; reading it again shows the file completed, so nothing is left
    // to record.
    let raced = mock!(Client::transact_write_items)
        .then_error(|| cancelled(&["ConditionalCheckFailed", "None"]));
    let reread = mock!(Client::get_item).then_output(|| {
        let item = HashMap::from([
            ("pk".to_string(), s("r#outcome")),
            ("sk".to_string(), s("raw/a")),
            ("states".to_string(), s("c")),
            ("version".to_string(), n(1)),
        ]);
        GetItemOutput::builder().set_item(Some(item)).build()
    });
    let client = mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&raced, &reread]);
    let delta = slave(client)
        .record_outcomes(
            &run(),
            &batch_of(&["raw/a"]),
            &[(
                0,
                Outcome::Completed {
                    size: 10,
                    verification: Default::default(),
                },
            )],
        )
        .await
        .unwrap();
    assert_eq!(delta, Delta::default());
    assert_eq!((raced.num_calls(), reread.num_calls()), (1, 1));
}
