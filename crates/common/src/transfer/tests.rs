//! What a whole copy asks of S3 and how it judges the answers, with the SDK's mocks.

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::operation::copy_object::CopyObjectOutput;
use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode, ChecksumType, CopyObjectResult};
use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};

use super::{CopyOutcome, Mover, RunClients};
use crate::config::SlaveSettings;
use crate::deadline::Deadlines;
use crate::rules::batch::ListedFile;
use crate::rules::checksum::Verification;
use crate::rules::failure::MoveFailure;
use crate::rules::run::{Location, PlannedMove, RunId, RunSpec, Suffixes};
use crate::store::{SlaveRecords, Store};

const CRC: &str = "AAAAAAAAAAE=";
const OTHER_CRC: &str = "AAAAAAAAAAI=";
const COPY_ETAG: &str = "\"0cc175b9c0f1b6a831c399e269772661\"";

/// A file of 10 bytes uploaded in parts: its ETag is no MD5 of its bytes.
const IN_PARTS: &str = "\"9b2cf535f27731c974343645a3985328-2\"";
/// A file of 10 bytes uploaded whole, unencrypted: its ETag is the MD5 of its bytes.
const WHOLE: &str = "\"9b2cf535f27731c974343645a3985328\"";

fn planned(listed_etag: &str) -> PlannedMove {
    PlannedMove {
        file: ListedFile {
            key: "raw/a.csv".into(),
            size: 10,
            etag: listed_etag.into(),
            storage_class: None,
        },
        destination_key: "refined/a.csv".into(),
    }
}

fn spec() -> RunSpec {
    RunSpec::new(
        Location::new("bucket", "raw/").unwrap(),
        Location::new("bucket", "refined/").unwrap(),
        Suffixes::every_key(),
    )
    .unwrap()
}

/// The source's `HeadObject`, which must ask for its checksums, reporting a full-object
/// CRC64NVME.
fn source_with_checksum() -> Rule {
    mock!(Client::head_object)
        .match_requests(|r| {
            r.key() == Some("raw/a.csv") && r.checksum_mode() == Some(&ChecksumMode::Enabled)
        })
        .then_output(|| {
            HeadObjectOutput::builder()
                .content_length(10)
                .checksum_crc64_nvme(CRC)
                .checksum_type(ChecksumType::FullObject)
                .build()
        })
}

/// A `CopyObject` that must name CRC64NVME, answering with `reported` as the copy's.
fn copy_reporting(reported: Option<&'static str>) -> Rule {
    copy_answering(COPY_ETAG, reported)
}

/// A `CopyObject` that must name CRC64NVME, answering with `etag` and `reported`.
fn copy_answering(etag: &'static str, reported: Option<&'static str>) -> Rule {
    mock!(Client::copy_object)
        .match_requests(|r| r.checksum_algorithm() == Some(&ChecksumAlgorithm::Crc64Nvme))
        .then_output(move || {
            CopyObjectOutput::builder()
                .copy_object_result(
                    CopyObjectResult::builder()
                        .e_tag(etag)
                        .set_checksum_crc64_nvme(reported.map(String::from))
                        .build(),
                )
                .build()
        })
}

fn destination_head() -> Rule {
    mock!(Client::head_object)
        .match_requests(|r| r.key() == Some("refined/a.csv"))
        .then_output(|| {
            HeadObjectOutput::builder()
                .content_length(10)
                .e_tag(COPY_ETAG)
                .build()
        })
}

/// Copies the file uploaded in parts with a slave in a stack that keeps no KMS keys, S3
/// answering by `rules` in order; every rule must have been used once.
async fn copy(rules: &[Rule]) -> Result<CopyOutcome, MoveFailure> {
    copy_as(false, IN_PARTS, rules).await
}

/// Copies a file listed with `listed_etag`, in a stack that keeps KMS keys
/// (`read_source_encryption`) or not.
async fn copy_as(
    read_source_encryption: bool,
    listed_etag: &str,
    rules: &[Rule],
) -> Result<CopyOutcome, MoveFailure> {
    let s3 = mock_client!(aws_sdk_s3, RuleMode::Sequential, rules, |c| c
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled()));
    let dynamodb = mock_client!(aws_sdk_dynamodb, []);
    let clients = RunClients {
        source: s3.clone(),
        destination: s3,
    };
    let settings = SlaveSettings {
        own_function: None,
        handoff_margin: Duration::from_secs(60),
        move_concurrency: 1,
        multipart_threshold: 1024,
        part_size: 5 * 1024 * 1024,
        part_concurrency: 1,
        read_source_encryption,
    };
    let records = SlaveRecords::new(Store::new(dynamodb, "table", Duration::from_secs(60)));
    let run = RunId::parse("r").unwrap();
    let mover = Mover::new(&clients, &settings, &records, &run, Deadlines::none());
    let outcome = mover
        .copy_verified(&spec(), &planned(listed_etag), None)
        .await;
    for rule in rules {
        assert_eq!(rule.num_calls(), 1, "a rule was not used once");
    }
    outcome
}

fn assert_verified_by_etag(outcome: Result<CopyOutcome, MoveFailure>) {
    assert!(
        matches!(
            outcome,
            Ok(CopyOutcome::Verified {
                verification: Verification::Etag,
                ..
            })
        ),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_whole_copy_whose_etag_proves_nothing_is_proven_by_the_checksum_s3_computed() {
    // the destination's size and ETag are checked too: a store that carries the
    // source's checksum over to a copy reports it whatever it wrote
    let outcome = copy(&[
        source_with_checksum(),
        copy_reporting(Some(CRC)),
        destination_head(),
    ])
    .await;
    assert_eq!(
        outcome.unwrap(),
        CopyOutcome::Verified {
            etag: COPY_ETAG.into(),
            source_version: None,
            verification: Verification::Checksum,
        }
    );
}

#[tokio::test]
async fn a_whole_copy_reporting_another_checksum_fails_for_good() {
    let failure = copy(&[source_with_checksum(), copy_reporting(Some(OTHER_CRC))])
        .await
        .unwrap_err();
    assert!(!failure.transient);
    assert!(
        failure.reason.contains("does not hold the listed bytes")
            && failure.reason.contains(OTHER_CRC)
            && failure.reason.contains("the source was left in place"),
        "{}",
        failure.reason
    );
}

#[tokio::test]
async fn a_store_reporting_no_checksum_of_the_copy_leaves_it_to_size_and_etag() {
    let outcome = copy(&[
        source_with_checksum(),
        copy_reporting(None),
        destination_head(),
    ])
    .await;
    assert_verified_by_etag(outcome);
}

#[tokio::test]
async fn a_source_whose_checksum_is_refused_is_copied_and_checked_without_it() {
    // checksum mode on an SSE-KMS object needs kms:Decrypt of its key
    let refused = mock!(Client::head_object)
        .match_requests(|r| r.checksum_mode() == Some(&ChecksumMode::Enabled))
        .sequence()
        .http_status(403, None)
        .build();
    let plain = mock!(Client::head_object)
        .match_requests(|r| r.key() == Some("raw/a.csv") && r.checksum_mode().is_none())
        .then_output(|| HeadObjectOutput::builder().content_length(10).build());
    let copied = mock!(Client::copy_object)
        .match_requests(|r| r.checksum_algorithm().is_none())
        .then_output(|| {
            CopyObjectOutput::builder()
                .copy_object_result(CopyObjectResult::builder().e_tag(COPY_ETAG).build())
                .build()
        });
    assert_verified_by_etag(copy(&[refused, plain, copied, destination_head()]).await);
}

#[tokio::test]
async fn an_unencrypted_copy_whose_md5_differs_fails_whatever_its_checksum_says() {
    // a stack that keeps KMS keys reads every source first; this one is unencrypted,
    // so the copy's ETag is the MD5 of the bytes S3 wrote, and it is not the listed one
    let failure = copy_as(
        true,
        WHOLE,
        &[source_with_checksum(), copy_answering(COPY_ETAG, Some(CRC))],
    )
    .await
    .unwrap_err();
    assert!(!failure.transient);
    assert!(
        failure
            .reason
            .contains("does not hold the listed bytes: its MD5 is"),
        "{}",
        failure.reason
    );
}

#[tokio::test]
async fn an_unencrypted_copy_reporting_the_listed_md5_is_verified_by_it() {
    let outcome = copy_as(
        true,
        WHOLE,
        &[source_with_checksum(), copy_answering(WHOLE, Some(CRC))],
    )
    .await;
    assert_verified_by_etag(outcome);
}
