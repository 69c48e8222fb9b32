//! `make demo`: the whole workflow on the local stack, checked end to end.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use md5::Digest;
use serde_json::json;

use crate::Problem;
use crate::local::{RunningStack, sdk_config};

const BUCKET: &str = "s3-transfer-demo";

/// The demo's files: `n` CSV files under raw/ with varied sizes and some awkward names,
/// and files the run must leave alone. Deterministic, so a failure can be replayed.
pub fn data_set(n: usize) -> (BTreeMap<String, Vec<u8>>, BTreeMap<String, Vec<u8>>) {
    const AWKWARD: [&str; 8] = [
        "raw/odd names/quarterly report.csv",
        "raw/odd names/a+b=c.csv",
        "raw/odd names/100% done.csv",
        "raw/odd names/café-ünïcødé.csv",
        "raw/odd names/(copy) [1].csv",
        "raw/odd names/semi;colon,comma.csv",
        "raw/odd names/tilde~hash#.csv",
        "raw/odd names/日本語.csv",
    ];
    let mut seed: u64 = 0x5eed;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut selected = BTreeMap::new();
    for i in 0..n {
        let key = match AWKWARD.get(i) {
            Some(name) => name.to_string(),
            None => format!(
                "raw/2026/{:02}/{:02}/orders-{i:05}.csv",
                1 + i % 12,
                1 + i % 28
            ),
        };
        // Mostly small files, some of tens or hundreds of KiB.
        let size = match next() % 10 {
            0 => 100_000 + next() % 400_000,
            1..=3 => 10_000 + next() % 50_000,
            _ => 50 + next() % 4_000,
        } as usize;
        let row = format!("{i},{},{}\n", next() % 1000, next() % 100_000);
        let body = format!("id,customer,amount\n{}", row.repeat(size / row.len() + 1));
        selected.insert(key, body.into_bytes());
    }
    let left_alone = [
        ("raw/README.txt", "not a CSV: stays\n"),
        (
            "raw/2026/01/01/orders.csv.gz",
            "compressed: the suffix is .gz\n",
        ),
        ("raw/2026/01/01/", ""),
        ("archive/2025/orders.csv", "outside the source prefix\n"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
    .collect();
    (selected, left_alone)
}

fn md5_hex(bytes: &[u8]) -> String {
    md5::Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub async fn demo(root: &Path, n: usize) -> Result<bool, Problem> {
    let mut out = std::io::stdout();
    println!("starting the local stack ...");
    let started = Instant::now();
    // The functions built with this program (`make demo` builds them first, with the
    // tests, so that `make test` afterwards compiles nothing again).
    let built = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .ok_or_else(|| Problem("cannot tell where this program was built".into()))?;
    let missing: Vec<&str> = ["master", "slave", "status"]
        .into_iter()
        .filter(|function| !built.join(function).exists())
        .collect();
    if !missing.is_empty() {
        return Err(Problem(format!(
            "{} not built in {}: run `make demo`, which builds them first",
            missing.join(", "),
            built.display()
        )));
    }
    let stack = RunningStack::start(
        root,
        &root.join(".local/demo"),
        "s3-transfer-demo",
        BUCKET,
        &[
            "--no-build".to_string(),
            "--bin-dir".to_string(),
            built.to_string_lossy().into_owned(),
        ],
    )?;
    println!("local stack up in {:.0} s", started.elapsed().as_secs_f64());
    let sdk = sdk_config(stack.var("AWS_ENDPOINT_URL")?).await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );

    let (selected, left_alone) = data_set(n);
    let bytes: usize = selected.values().map(Vec::len).sum();
    println!(
        "uploading {} CSV files ({}) and {} files the run must leave alone to s3://{BUCKET}/ ...",
        selected.len(),
        run::human_bytes(bytes as u64),
        left_alone.len()
    );
    upload(&s3, selected.iter().chain(left_alone.iter())).await?;

    let runner = run::Runner {
        sfn: aws_sdk_sfn::Client::new(&sdk),
        records: common::store::StatusRecords::new(common::store::Store::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            stack.var("TABLE_NAME")?,
            Duration::ZERO,
        )),
        state_machine_arn: stack.var("STATE_MACHINE_ARN")?.to_string(),
    };
    let run_id = common::RunId::parse(&format!(
        "demo-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
    ))
    .expect("a valid run id");
    let input = json!({"wait_before_master_seconds": 1});
    println!("starting execution {run_id} with input {input}");
    let finished = runner
        .run(&run_id, &input, &mut out)
        .await
        .map_err(Problem)?;
    print!("{}", run::report(&finished));

    println!("checking the bucket ...");
    let problems = check(&s3, &selected, &left_alone).await?;
    for problem in &problems {
        println!("  FAILED: {problem}");
    }
    let ok = finished.succeeded() && problems.is_empty();
    if ok {
        println!(
            "  every one of the {} selected files is at refined/ with the same bytes, none is left under raw/, and the {} other files are untouched",
            selected.len(),
            left_alone.len()
        );
        println!("demo passed");
    } else {
        println!("demo FAILED");
    }
    let _ = out.flush();
    Ok(ok)
}

async fn upload<'a>(
    s3: &aws_sdk_s3::Client,
    files: impl Iterator<Item = (&'a String, &'a Vec<u8>)>,
) -> Result<(), Problem> {
    use futures::{StreamExt, TryStreamExt, stream};
    s3.create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .map(|_| ())
        .or_else(|e| match e.as_service_error() {
            Some(e) if e.is_bucket_already_owned_by_you() => Ok(()),
            _ => Err(Problem(format!("CreateBucket: {e:?}"))),
        })?;
    stream::iter(files)
        .map(|(key, body)| {
            s3.put_object()
                .bucket(BUCKET)
                .key(key)
                .body(ByteStream::from(body.clone()))
                .send()
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| Problem(format!("PutObject: {e:?}")))?;
    Ok(())
}

/// What is wrong with the bucket after the run, if anything.
async fn check(
    s3: &aws_sdk_s3::Client,
    selected: &BTreeMap<String, Vec<u8>>,
    left_alone: &BTreeMap<String, Vec<u8>>,
) -> Result<Vec<String>, Problem> {
    let mut now = BTreeMap::new();
    let mut pages = s3.list_objects_v2().bucket(BUCKET).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| Problem(format!("ListObjectsV2: {e:?}")))?;
        for object in page.contents() {
            let etag = object
                .e_tag()
                .unwrap_or_default()
                .trim_matches('"')
                .to_string();
            now.insert(
                object.key().unwrap_or_default().to_string(),
                (etag, object.size()),
            );
        }
    }
    let mut problems = Vec::new();
    for (key, body) in selected {
        let destination = key.replacen("raw/", "refined/", 1);
        match now.get(&destination) {
            Some((etag, size)) if *etag == md5_hex(body) && *size == Some(body.len() as i64) => {}
            Some(_) => problems.push(format!("{destination} differs from its source")),
            None => problems.push(format!("{destination} is missing")),
        }
        if now.contains_key(key) {
            problems.push(format!("{key} is still at the source"));
        }
    }
    for (key, body) in left_alone {
        match now.get(key) {
            Some((etag, _)) if *etag == md5_hex(body) => {}
            _ => problems.push(format!("{key} was touched")),
        }
    }
    let expected = selected.len() + left_alone.len();
    if now.len() != expected {
        problems.push(format!(
            "the bucket holds {} objects, not {expected}",
            now.len()
        ));
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_set_is_deterministic_varied_and_awkward() {
        let (selected, left_alone) = data_set(300);
        assert_eq!(selected.len(), 300);
        assert_eq!(data_set(300).0, selected);
        assert!(
            selected
                .keys()
                .all(|k| k.starts_with("raw/") && k.ends_with(".csv"))
        );
        assert!(selected.contains_key("raw/odd names/100% done.csv"));
        let sizes: Vec<usize> = selected.values().map(Vec::len).collect();
        assert!(sizes.iter().any(|&s| s < 1_000) && sizes.iter().any(|&s| s > 100_000));
        assert!(left_alone.keys().all(|k| !selected.contains_key(k)));
    }
}
