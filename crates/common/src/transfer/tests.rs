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
fn planned() -> PlannedMove {
    PlannedMove {
        file: ListedFile {
            key: "raw/a.csv".into(),
            size: 10,
            etag: "\"9b2cf535f27731c974343645a3985328-2\"".into(),
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
    mock!(Client::copy_object)
        .match_requests(|r| r.checksum_algorithm() == Some(&ChecksumAlgorithm::Crc64Nvme))
        .then_output(move || {
            CopyObjectOutput::builder()
                .copy_object_result(
                    CopyObjectResult::builder()
                        .e_tag(COPY_ETAG)
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

/// Copies the file with a slave in a stack that keeps no KMS keys, S3 answering by
/// `rules` in order; every rule must have been used.
async fn copy(rules: &[Rule]) -> Result<CopyOutcome, MoveFailure> {
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
        read_source_encryption: false,
    };
    let records = SlaveRecords::new(Store::new(dynamodb, "table", Duration::from_secs(60)));
    let run = RunId::parse("r").unwrap();
    let mover = Mover::new(&clients, &settings, &records, &run, Deadlines::none());
    let outcome = mover.copy_verified(&spec(), &planned(), None).await;
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
    // the source's HEAD replaces the destination's: no request more than by ETag
    let outcome = copy(&[source_with_checksum(), copy_reporting(Some(CRC))]).await;
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
