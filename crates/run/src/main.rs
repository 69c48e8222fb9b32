//! `run-transfer`: starts one execution and follows it. See `USAGE`.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::RunId;
use common::store::{StatusRecords, Store};
use run::{Runner, report};
use serde_json::Value;

const USAGE: &str =
    "usage: run-transfer [--name NAME] [--input JSON | --input-file PATH] [--dry-run]
       run-transfer --files RUN_ID

Starts an execution of the transfer state machine (its name is the run id; by default
run-<unix time>), shows the run's progress until it ends, then reports the outcome and
lists failed files with their reasons. Exits 0 if the execution succeeded.

--dry-run adds \"dry_run\": true to the input: the execution lists and selects as the run
would and ends with its plan (files and bytes by storage class, what would fail and
why, the estimated cost), which the report prints; nothing moves.

--files lists every file of a run, one per line: its state (started, completed, failed
or skipped), its key and, for a failed or skipped file, the reason, separated by tabs.

Reads STATE_MACHINE_ARN and TABLE_NAME from the environment (`.local/env` sets them for
the local stack; on AWS take them from the stack's outputs), and the endpoint, region
and credentials as the AWS CLI does.";

fn main() -> ExitCode {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    match runtime.block_on(run_cli(std::env::args().skip(1).collect())) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(problem) => {
            eprintln!("run-transfer: {problem}");
            ExitCode::from(2)
        }
    }
}

async fn run_cli(args: Vec<String>) -> Result<bool, String> {
    let mut name = None;
    let mut input = Value::Object(Default::default());
    let mut dry_run = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value\n\n{USAGE}"));
        match arg.as_str() {
            "--name" => name = Some(value()?),
            "--dry-run" => dry_run = true,
            "--files" => return list_files(&value()?).await,
            "--input" => input = parse_input(&value()?)?,
            "--input-file" => {
                let path = value()?;
                let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
                input = parse_input(&text)?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(true);
            }
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    if dry_run {
        input["dry_run"] = Value::Bool(true);
    }
    let name = name.unwrap_or_else(|| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        format!("run-{}", now.as_secs())
    });
    let run_id = RunId::parse(&name).map_err(|e| e.to_string())?;
    let state_machine_arn = variable("STATE_MACHINE_ARN")?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let runner = Runner {
        sfn: aws_sdk_sfn::Client::new(&sdk),
        records: records(&sdk)?,
        state_machine_arn,
    };
    let finished = runner.run(&run_id, &input, &mut std::io::stdout()).await?;
    print!("{}", report(&finished));
    Ok(finished.succeeded())
}

/// Prints every file of the run with its state, and the reason of each failed file.
async fn list_files(run: &str) -> Result<bool, String> {
    let run = RunId::parse(run).map_err(|e| e.to_string())?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let files = records(&sdk)?
        .files(&run)
        .await
        .map_err(|e| format!("reading the status table: {e}"))?;
    if files.is_empty() {
        return Err(format!("run {run} has no files recorded"));
    }
    let mut out = std::io::stdout().lock();
    for file in &files {
        if writeln!(out, "{}", run::file_line(file)).is_err() {
            break; // the reader has gone (`| head`)
        }
    }
    Ok(true)
}

fn variable(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| {
        format!("{name} is not set (source .local/env, or export it from the stack's outputs)")
    })
}

/// The runs recorded in the status table named by `TABLE_NAME`.
fn records(sdk: &aws_config::SdkConfig) -> Result<StatusRecords, String> {
    let table = variable("TABLE_NAME")?;
    // Only reads: the retention given to new items is never used.
    Ok(StatusRecords::new(Store::new(
        aws_sdk_dynamodb::Client::new(sdk),
        table,
        Duration::ZERO,
    )))
}

fn parse_input(text: &str) -> Result<Value, String> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("the input is not JSON: {e}"))?;
    if !value.is_object() {
        return Err(
            "the input must be a JSON object, such as {} or {\"source_prefix\": \"raw/2026/\"}"
                .into(),
        );
    }
    Ok(value)
}
