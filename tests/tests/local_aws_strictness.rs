//! The local AWS server refuses what AWS refuses and moto alone accepts
//! (`local/strict.py`): one test per rule, each made with the SDK the functions use.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{
    AttributeValue, KeysAndAttributes, Put, PutRequest, TransactWriteItem, WriteRequest,
};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use integration_tests::{Fixture, body_of};

/// The error code of a failed call, or "ok".
fn code<T, E: ProvideErrorMetadata>(result: &Result<T, E>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(e) => e.code().unwrap_or("(no code)").to_string(),
    }
}

async fn exists(f: &Fixture, key: &str) -> bool {
    f.clients
        .s3
        .head_object()
        .bucket(&f.bucket)
        .key(key)
        .send()
        .await
        .is_ok()
}

#[tokio::test]
async fn object_keys_longer_than_1024_bytes_are_refused() {
    let f = Fixture::new().await;
    f.put("raw/a.csv", body_of("raw/a.csv")).await;
    let s3 = &f.clients.s3;
    // 1,024 bytes is the limit: 512 two-byte characters fit, one more byte does not.
    let longest = "é".repeat(512);
    let too_long = format!("{longest}x");
    let put = |key: String| {
        s3.put_object()
            .bucket(&f.bucket)
            .key(key)
            .body(ByteStream::from_static(b"x"))
            .send()
    };
    assert_eq!(code(&put(longest.clone()).await), "ok");
    assert_eq!(code(&put(too_long.clone()).await), "KeyTooLongError");
    let copied = s3
        .copy_object()
        .bucket(&f.bucket)
        .key(&too_long)
        .copy_source(format!("{}/raw/a.csv", f.bucket))
        .send()
        .await;
    assert_eq!(code(&copied), "KeyTooLongError");
    let upload = s3
        .create_multipart_upload()
        .bucket(&f.bucket)
        .key(&too_long)
        .send()
        .await;
    assert_eq!(code(&upload), "KeyTooLongError");
    assert!(!exists(&f, &too_long).await);
}

fn objects(keys: &[(String, Option<String>)]) -> Delete {
    Delete::builder()
        .set_objects(Some(
            keys.iter()
                .map(|(key, etag)| {
                    ObjectIdentifier::builder()
                        .key(key)
                        .set_e_tag(etag.clone())
                        .build()
                        .unwrap()
                })
                .collect(),
        ))
        .quiet(true)
        .build()
        .unwrap()
}

#[tokio::test]
async fn delete_objects_takes_at_most_1000_keys() {
    let f = Fixture::new().await;
    let keys: Vec<(String, Option<String>)> = (0..1001).map(|i| (format!("k/{i}"), None)).collect();
    let s3 = &f.clients.s3;
    let too_many = s3
        .delete_objects()
        .bucket(&f.bucket)
        .delete(objects(&keys))
        .send()
        .await;
    assert_eq!(code(&too_many), "MalformedXML");
    let most = s3
        .delete_objects()
        .bucket(&f.bucket)
        .delete(objects(&keys[..1000]))
        .send()
        .await;
    assert_eq!(code(&most), "ok");
}

#[tokio::test]
async fn delete_objects_keeps_each_key_whose_etag_no_longer_matches() {
    // GIVEN two objects, one rewritten since its ETag was read
    let f = Fixture::new().await;
    for key in ["raw/kept.csv", "raw/gone.csv"] {
        f.put(key, body_of(key)).await;
    }
    let etag = |key: &str| format!("\"{}\"", integration_tests::md5_hex(&body_of(key)));
    let read = (etag("raw/kept.csv"), etag("raw/gone.csv"));
    f.put("raw/kept.csv", "rewritten").await;

    // WHEN both are deleted on condition of the ETags read before
    let out = f
        .clients
        .s3
        .delete_objects()
        .bucket(&f.bucket)
        .delete(objects(&[
            ("raw/kept.csv".into(), Some(read.0)),
            ("raw/gone.csv".into(), Some(read.1)),
        ]))
        .send()
        .await
        .unwrap();

    // THEN the rewritten one stays, named with PreconditionFailed, and the other goes
    let errors: Vec<(&str, &str)> = out
        .errors()
        .iter()
        .map(|e| (e.key().unwrap(), e.code().unwrap()))
        .collect();
    assert_eq!(errors, [("raw/kept.csv", "PreconditionFailed")]);
    assert_eq!(f.get("raw/kept.csv").await.unwrap(), b"rewritten");
    assert!(!exists(&f, "raw/gone.csv").await);
}

#[tokio::test]
async fn copies_are_conditional_on_the_source_etag() {
    let f = Fixture::new().await;
    f.put("raw/a.csv", body_of("raw/a.csv")).await;
    let s3 = &f.clients.s3;
    let source = format!("{}/raw/a.csv", f.bucket);
    let stale = "\"00000000000000000000000000000000\"";
    let copy = s3
        .copy_object()
        .bucket(&f.bucket)
        .key("out/a.csv")
        .copy_source(&source)
        .copy_source_if_match(stale)
        .send()
        .await;
    assert_eq!(code(&copy), "PreconditionFailed");
    assert!(!exists(&f, "out/a.csv").await);
    let upload = s3
        .create_multipart_upload()
        .bucket(&f.bucket)
        .key("out/b.csv")
        .send()
        .await
        .unwrap();
    let part = s3
        .upload_part_copy()
        .bucket(&f.bucket)
        .key("out/b.csv")
        .upload_id(upload.upload_id().unwrap())
        .part_number(1)
        .copy_source(&source)
        .copy_source_if_match(stale)
        .send()
        .await;
    assert_eq!(code(&part), "PreconditionFailed");
}

#[tokio::test]
async fn conditional_writes_do_not_overwrite_an_existing_destination() {
    // GIVEN a destination that exists
    let f = Fixture::new().await;
    for key in ["raw/a.csv", "out/a.csv"] {
        f.put(key, body_of(key)).await;
    }
    let s3 = &f.clients.s3;
    // WHEN a copy and a multipart upload say If-None-Match: *
    let copy = s3
        .copy_object()
        .bucket(&f.bucket)
        .key("out/a.csv")
        .copy_source(format!("{}/raw/a.csv", f.bucket))
        .if_none_match("*")
        .send()
        .await;
    let upload = s3
        .create_multipart_upload()
        .bucket(&f.bucket)
        .key("out/a.csv")
        .send()
        .await
        .unwrap();
    let id = upload.upload_id().unwrap();
    let part = s3
        .upload_part()
        .bucket(&f.bucket)
        .key("out/a.csv")
        .upload_id(id)
        .part_number(1)
        .body(ByteStream::from_static(b"new bytes"))
        .send()
        .await
        .unwrap();
    let complete = s3
        .complete_multipart_upload()
        .bucket(&f.bucket)
        .key("out/a.csv")
        .upload_id(id)
        .if_none_match("*")
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .parts(
                    CompletedPart::builder()
                        .part_number(1)
                        .e_tag(part.e_tag().unwrap())
                        .build(),
                )
                .build(),
        )
        .send()
        .await;
    // AND a copy says If-Match with an ETag the destination does not have
    let wrong_match = s3
        .copy_object()
        .bucket(&f.bucket)
        .key("out/a.csv")
        .copy_source(format!("{}/raw/a.csv", f.bucket))
        .if_match("\"00000000000000000000000000000000\"")
        .send()
        .await;

    // THEN each is refused with 412 and the destination keeps its bytes
    assert_eq!(code(&copy), "PreconditionFailed");
    assert_eq!(code(&complete), "PreconditionFailed");
    assert_eq!(code(&wrong_match), "PreconditionFailed");
    assert_eq!(f.get("out/a.csv").await.unwrap(), body_of("out/a.csv"));
}

fn item(pk: &str, padding: usize) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_string(), AttributeValue::S(pk.into())),
        ("sk".to_string(), AttributeValue::S("x".into())),
        ("pad".to_string(), AttributeValue::S("p".repeat(padding))),
    ])
}

#[tokio::test]
async fn batch_writes_take_at_most_25_items_and_batch_gets_100_keys() {
    let f = Fixture::new().await;
    let dynamodb = &f.clients.dynamodb;
    let puts = |n: usize| -> Vec<WriteRequest> {
        (0..n)
            .map(|i| {
                WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .set_item(Some(item(&format!("p{i}"), 1)))
                            .build()
                            .unwrap(),
                    )
                    .build()
            })
            .collect()
    };
    let write = |n| {
        dynamodb
            .batch_write_item()
            .request_items(&f.table, puts(n))
            .send()
    };
    assert_eq!(code(&write(26).await), "ValidationException");
    assert_eq!(code(&write(25).await), "ok");
    let keys = |n: usize| {
        KeysAndAttributes::builder()
            .set_keys(Some(
                (0..n)
                    .map(|i| {
                        HashMap::from([
                            ("pk".to_string(), AttributeValue::S(format!("p{i}"))),
                            ("sk".to_string(), AttributeValue::S("x".into())),
                        ])
                    })
                    .collect(),
            ))
            .build()
            .unwrap()
    };
    let get = |n| {
        dynamodb
            .batch_get_item()
            .request_items(&f.table, keys(n))
            .send()
    };
    assert_eq!(code(&get(101).await), "ValidationException");
    assert_eq!(code(&get(100).await), "ok");
}

#[tokio::test]
async fn transactions_take_at_most_100_actions_and_4_mb() {
    let f = Fixture::new().await;
    let put = |pk: String, padding| {
        TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(&f.table)
                    .set_item(Some(item(&pk, padding)))
                    .build()
                    .unwrap(),
            )
            .build()
    };
    let transact = |items: Vec<TransactWriteItem>| {
        f.clients
            .dynamodb
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
    };
    let many = |n: usize| (0..n).map(|i| put(format!("t{i}"), 1)).collect::<Vec<_>>();
    assert_eq!(code(&transact(many(101)).await), "ValidationException");
    assert_eq!(code(&transact(many(100)).await), "ok");
    // 11 items of 390 KB each: every item fits, the transaction does not.
    let heavy = (0..11).map(|i| put(format!("h{i}"), 390_000)).collect();
    assert_eq!(code(&transact(heavy).await), "ValidationException");
}

#[tokio::test]
async fn items_over_400_kb_are_refused_in_every_write() {
    let f = Fixture::new().await;
    let dynamodb = &f.clients.dynamodb;
    let over = item("big", 410_000);
    let put = dynamodb
        .put_item()
        .table_name(&f.table)
        .set_item(Some(over.clone()))
        .send()
        .await;
    assert_eq!(code(&put), "ValidationException");
    let batch = dynamodb
        .batch_write_item()
        .request_items(
            &f.table,
            vec![
                WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .set_item(Some(over.clone()))
                            .build()
                            .unwrap(),
                    )
                    .build(),
            ],
        )
        .send()
        .await;
    assert_eq!(code(&batch), "ValidationException");
    let transaction = dynamodb
        .transact_write_items()
        .transact_items(
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(&f.table)
                        .set_item(Some(over))
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .send()
        .await;
    assert_eq!(code(&transaction), "ValidationException");
    let fits = dynamodb
        .put_item()
        .table_name(&f.table)
        .set_item(Some(item("ok", 390_000)))
        .send()
        .await;
    assert_eq!(code(&fits), "ok");
}

#[tokio::test]
async fn an_upload_completed_with_another_full_object_checksum_is_refused_and_stays_open() {
    // GIVEN an upload made with a full-object CRC32, and one part
    let f = Fixture::new().await;
    let s3 = &f.clients.s3;
    let upload = s3
        .create_multipart_upload()
        .bucket(&f.bucket)
        .key("out/c.csv")
        .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32)
        .checksum_type(aws_sdk_s3::types::ChecksumType::FullObject)
        .send()
        .await
        .unwrap();
    let id = upload.upload_id().unwrap();
    let part = s3
        .upload_part()
        .bucket(&f.bucket)
        .key("out/c.csv")
        .upload_id(id)
        .part_number(1)
        .body(ByteStream::from_static(b"the part's bytes"))
        .send()
        .await
        .unwrap();
    let complete = |crc32: &'static str| {
        s3.complete_multipart_upload()
            .bucket(&f.bucket)
            .key("out/c.csv")
            .upload_id(id)
            .checksum_type(aws_sdk_s3::types::ChecksumType::FullObject)
            .checksum_crc32(crc32)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .parts(
                        CompletedPart::builder()
                            .part_number(1)
                            .e_tag(part.e_tag().unwrap())
                            .build(),
                    )
                    .build(),
            )
            .send()
    };
    // WHEN it is completed naming another checksum, THEN S3's answer is BadDigest,
    // nothing is written and the upload is still open
    assert_eq!(code(&complete("AAAAAA==").await), "BadDigest");
    assert!(!exists(&f, "out/c.csv").await);
    let parts = s3
        .list_parts()
        .bucket(&f.bucket)
        .key("out/c.csv")
        .upload_id(id)
        .send()
        .await
        .unwrap();
    assert_eq!(parts.parts().len(), 1);
}

#[tokio::test]
async fn an_sse_kms_object_has_an_etag_that_is_not_the_md5_of_its_bytes() {
    // GIVEN the same bytes written with SSE-S3 and with SSE-KMS
    let f = Fixture::new().await;
    let s3 = &f.clients.s3;
    let body = body_of("raw/a.csv");
    for (key, kms) in [("raw/s3.csv", false), ("raw/kms.csv", true)] {
        let put = s3
            .put_object()
            .bucket(&f.bucket)
            .key(key)
            .body(ByteStream::from(body.clone()));
        let put = if kms {
            put.server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::AwsKms)
                .ssekms_key_id("arn:aws:kms:us-east-1:123456789012:key/test")
        } else {
            put.server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::Aes256)
        };
        put.send().await.unwrap();
    }
    let bucket = &f.bucket;
    let etag = |key: &'static str| async move {
        let head = s3
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        head.e_tag().unwrap().trim_matches('"').to_string()
    };
    // THEN the SSE-S3 object's ETag is the MD5 of its bytes and the SSE-KMS object's is
    // not, as on S3
    let md5 = integration_tests::md5_hex(&body);
    assert_eq!(etag("raw/s3.csv").await, md5.trim_matches('"'));
    let first = etag("raw/kms.csv").await;
    assert_ne!(first, md5.trim_matches('"'));
    // AND it is the same however the object is read, and another write of the same
    // bytes has another
    let listed = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix("raw/kms.csv")
        .send()
        .await
        .unwrap();
    assert_eq!(
        listed.contents()[0].e_tag().unwrap().trim_matches('"'),
        first
    );
    assert_eq!(etag("raw/kms.csv").await, first);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    s3.put_object()
        .bucket(bucket)
        .key("raw/kms.csv")
        .body(ByteStream::from(body.clone()))
        .server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::AwsKms)
        .ssekms_key_id("arn:aws:kms:us-east-1:123456789012:key/test")
        .send()
        .await
        .unwrap();
    assert_ne!(etag("raw/kms.csv").await, first);
}

#[tokio::test]
async fn a_request_for_a_bucket_of_another_region_is_redirected_to_that_region() {
    // GIVEN a bucket in eu-west-1, and clients signing for the stack's region and for it
    let f = Fixture::new().await;
    let bucket = format!("{}-eu", f.bucket);
    let home = &f.clients.s3;
    integration_tests::create_bucket_in(home, &bucket, "eu-west-1").await;
    let ireland = integration_tests::client_in(home, "eu-west-1");
    let put = |client: &aws_sdk_s3::Client| {
        client
            .put_object()
            .bucket(&bucket)
            .key("raw/a.csv")
            .body(ByteStream::from_static(b"x"))
            .send()
    };

    // WHEN each asks for the bucket: THEN the home region is redirected, with the
    // bucket's region named (a HeadBucket too, which has no body), and eu-west-1 served
    let redirected = put(home).await;
    assert_eq!(code(&redirected), "PermanentRedirect");
    let head = home.head_bucket().bucket(&bucket).send().await.unwrap_err();
    let region = head
        .raw_response()
        .and_then(|r| r.headers().get("x-amz-bucket-region"));
    assert_eq!(region, Some("eu-west-1"));
    assert_eq!(code(&put(&ireland).await), "ok");
    // AND the region routing the functions use finds the bucket's region from home
    let routed = common::transfer::S3Clients::new(home.clone())
        .for_bucket(&bucket, None, None)
        .await
        .unwrap();
    assert_eq!(code(&put(&routed).await), "ok");
}

#[tokio::test]
async fn a_request_that_expects_another_bucket_owner_is_refused() {
    let f = Fixture::new().await;
    f.put("raw/a.csv", body_of("raw/a.csv")).await;
    let s3 = &f.clients.s3;
    let head = |owner: &str| {
        s3.head_object()
            .bucket(&f.bucket)
            .key("raw/a.csv")
            .expected_bucket_owner(owner)
            .send()
    };
    assert_eq!(code(&head(xtask::local::ACCOUNT).await), "ok");
    let refused = head("111122223333").await.unwrap_err();
    assert_eq!(
        refused.raw_response().map(|r| r.status().as_u16()),
        Some(403)
    );
    let copy = |owner: &str| {
        s3.copy_object()
            .bucket(&f.bucket)
            .key("refined/a.csv")
            .copy_source(format!("{}/raw/a.csv", f.bucket))
            .expected_source_bucket_owner(owner)
            .send()
    };
    assert_eq!(code(&copy("111122223333").await), "AccessDenied");
    assert_eq!(code(&copy(xtask::local::ACCOUNT).await), "ok");
}
