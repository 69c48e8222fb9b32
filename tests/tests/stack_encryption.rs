//! Encryption on the local stack through the real state machine, with the slave set as
//! the template sets it where the stack lists KMS keys (`READ_SOURCE_ENCRYPTION`): each
//! whole copy reads its source's encryption and checksum first and is made with them. The
//! keys are made in the local stack's KMS.

use std::sync::OnceLock;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;
use aws_sdk_sfn::types::ExecutionStatus;
use integration_tests::body_of;
use integration_tests::stack::{LocalStack, bucket_with, contents, input, run_progress};
use serde_json::json;

fn local_stack() -> &'static LocalStack {
    static STACK: OnceLock<LocalStack> = OnceLock::new();
    STACK.get_or_init(|| LocalStack::up(&[("READ_SOURCE_ENCRYPTION", "true")]))
}

#[tokio::test]
async fn copies_keep_their_source_encryption_unless_the_run_names_a_kms_key() {
    // GIVEN two KMS keys; under raw/, a file encrypted with key A, one with SSE-S3, and
    // a 7 MiB file (copied in parts) encrypted with key A; the same under again/
    let stack = local_stack();
    let (key_a, key_b) = (stack.create_kms_key(), stack.create_kms_key());
    let bucket = bucket_with(stack, &[]).await;
    let s3 = stack.s3().await;
    let big: Vec<u8> = (0..7 * 1024 * 1024u32).map(|i| (i % 239) as u8).collect();
    for prefix in ["raw", "again"] {
        for (name, body, kms) in [
            ("kms.csv", body_of("kms.csv"), true),
            ("plain.csv", body_of("plain.csv"), false),
            ("big.csv", big.clone(), true),
        ] {
            let put = s3
                .put_object()
                .bucket(&bucket)
                .key(format!("{prefix}/{name}"))
                .body(ByteStream::from(body));
            let put = if kms {
                put.server_side_encryption(ServerSideEncryption::AwsKms)
                    .ssekms_key_id(&key_a)
            } else {
                put.server_side_encryption(ServerSideEncryption::Aes256)
            };
            put.send().await.unwrap();
        }
    }
    let encryption = |key: String| {
        let s3 = s3.clone();
        let bucket = bucket.clone();
        async move {
            let head = s3
                .head_object()
                .bucket(&bucket)
                .key(&key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{key}: {e:?}"));
            (
                head.server_side_encryption()
                    .map(|s| s.as_str().to_string()),
                head.ssekms_key_id().map(String::from),
            )
        }
    };
    let kms = |key: &str| (Some("aws:kms".to_string()), Some(key.to_string()));

    // WHEN one run moves raw/ as it is, and another moves again/ naming key B
    let kept = stack.start("kms-kept", &input(&bucket, json!({}))).await;
    let rekeyed = stack
        .start(
            "kms-rekeyed",
            &input(
                &bucket,
                json!({"source_prefix": "again/", "destination_prefix": "rekeyed/",
                       "kms_key_id": key_b}),
            ),
        )
        .await;
    for execution in [&kept, &rekeyed] {
        let described = stack.finished(execution).await;
        assert_eq!(
            described.status,
            ExecutionStatus::Succeeded,
            "{described:?}"
        );
    }

    // THEN every file moved with its bytes; the first run's copies kept their source's
    // encryption (key A, copied whole or in parts; SSE-S3 stays so), and the second's
    // are all encrypted with key B
    let now = contents(stack, &bucket).await;
    assert!(
        now.keys()
            .all(|k| k.starts_with("refined/") || k.starts_with("rekeyed/")),
        "{now:?}"
    );
    for destination in ["refined", "rekeyed"] {
        for (name, body) in [
            ("big.csv", big.clone()),
            ("kms.csv", body_of("kms.csv")),
            ("plain.csv", body_of("plain.csv")),
        ] {
            let copied = s3
                .get_object()
                .bucket(&bucket)
                .key(format!("{destination}/{name}"))
                .send()
                .await
                .unwrap();
            assert_eq!(
                copied.body.collect().await.unwrap().to_vec(),
                body,
                "{destination}/{name}"
            );
        }
    }
    // AND each run counts its three files moved, none failed; verified by the source's
    // CRC32 where the copy's ETag is no MD5 (copies encrypted with a KMS key, whole ones
    // made naming the CRC32, the one in parts completed against it), by ETag otherwise
    // (the SSE-S3 file kept so)
    for (run, by_checksum) in [("kms-kept", 2), ("kms-rekeyed", 3)] {
        let progress = run_progress(stack, run).await;
        assert_eq!(
            (
                progress.selected,
                progress.completed,
                progress.failed,
                progress.by_checksum
            ),
            (3, 3, 0, by_checksum),
            "{run}"
        );
    }
    assert_eq!(encryption("refined/kms.csv".into()).await, kms(&key_a));
    assert_eq!(encryption("refined/big.csv".into()).await, kms(&key_a));
    let (plain, plain_key) = encryption("refined/plain.csv".into()).await;
    assert_ne!(plain.as_deref(), Some("aws:kms"));
    assert_eq!(plain_key, None);
    for name in ["kms.csv", "plain.csv", "big.csv"] {
        assert_eq!(
            encryption(format!("rekeyed/{name}")).await,
            kms(&key_b),
            "{name}"
        );
    }
}

#[tokio::test]
async fn whole_copies_of_kms_objects_are_verified_by_their_source_checksum_and_a_wrong_one_keeps_its_source()
 {
    // GIVEN files encrypted with a KMS key, whose ETags are no MD5 of their bytes, each
    // with the checksum its writer chose (CRC32, CRC32C, SHA-256); and one more whose
    // copy comes out with other bytes of the same size
    let stack = local_stack();
    let key = stack.create_kms_key();
    let bucket = bucket_with(stack, &[]).await;
    let s3 = stack.s3().await;
    use aws_sdk_s3::types::ChecksumAlgorithm as Algorithm;
    let files = [
        ("raw/crc32.csv", Algorithm::Crc32),
        ("raw/crc32c.csv", Algorithm::Crc32C),
        ("raw/sha256.csv", Algorithm::Sha256),
        ("raw/tampered.csv", Algorithm::Crc32),
    ];
    let mut written = Vec::new();
    for (name, algorithm) in &files {
        let put = s3
            .put_object()
            .bucket(&bucket)
            .key(*name)
            .body(ByteStream::from(body_of(name)))
            .checksum_algorithm(algorithm.clone())
            .server_side_encryption(ServerSideEncryption::AwsKms)
            .ssekms_key_id(&key)
            .send()
            .await
            .unwrap();
        written.push(
            [
                put.checksum_crc32(),
                put.checksum_crc32_c(),
                put.checksum_sha256(),
            ]
            .into_iter()
            .flatten()
            .next()
            .map(String::from),
        );
    }
    let _turn = stack
        .turn(
            json!({"rules": [{"service": "s3", "operations": ["CopyObject"],
                                "key_contains": "tampered", "answer": "tamper"}]}),
        )
        .await;

    // WHEN they are moved
    let execution = stack
        .start("kms-checksums", &input(&bucket, json!({})))
        .await;
    let described = stack.finished(&execution).await;
    stack.set_faults(&json!({}));

    // THEN the wrong copy failed by its checksum, with its source kept as it was
    assert_eq!(described.status, ExecutionStatus::Failed, "{described:?}");
    let cause = described.cause.unwrap_or_default();
    assert!(cause.starts_with("1 of 4 files failed to move:"), "{cause}");
    assert!(
        cause.contains("raw/tampered.csv: the destination")
            && cause.contains("does not hold the listed bytes: its CRC32 checksum is"),
        "{cause}"
    );
    let kept = s3
        .get_object()
        .bucket(&bucket)
        .key("raw/tampered.csv")
        .send()
        .await
        .unwrap();
    assert_eq!(
        kept.body.collect().await.unwrap().to_vec(),
        body_of("raw/tampered.csv")
    );
    let now = contents(stack, &bucket).await;
    // AND the others moved with their bytes, still under the key, each copy carrying its
    // source's algorithm
    for ((name, algorithm), source_checksum) in files[..3].iter().zip(&written) {
        let destination = name.replacen("raw/", "refined/", 1);
        assert!(!now.contains_key(*name), "{name}");
        let copied = s3
            .get_object()
            .bucket(&bucket)
            .key(&destination)
            .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
            .send()
            .await
            .unwrap();
        assert_eq!(copied.ssekms_key_id(), Some(key.as_str()), "{name}");
        let reported = match algorithm {
            Algorithm::Crc32 => copied.checksum_crc32(),
            Algorithm::Crc32C => copied.checksum_crc32_c(),
            _ => copied.checksum_sha256(),
        };
        assert!(source_checksum.is_some(), "{name}");
        assert_eq!(reported, source_checksum.as_deref(), "{destination}");
        assert_eq!(
            copied.body.collect().await.unwrap().to_vec(),
            body_of(name),
            "{name}"
        );
    }
    // AND the run counts the three as verified by checksum
    let progress = run_progress(stack, "kms-checksums").await;
    assert_eq!(
        (
            progress.selected,
            progress.completed,
            progress.failed,
            progress.by_checksum
        ),
        (4, 3, 1, 3)
    );
}
