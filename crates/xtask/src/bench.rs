//! `cargo xtask bench-move`: one run's move path as the Lambdas take it, without Step
//! Functions. master's own code lists the source prefix, records its files `started` in
//! batches and invokes slave asynchronously once per batch; the invocations reach an in-process Lambda
//! endpoint that answers 202 and hands each event to slave's own code, `LAMBDAS` at a
//! time, as Lambda would run them side by side. Every S3 and DynamoDB request is real.
//!
//! Settings come from the environment, as for the functions (`TABLE_NAME`,
//! `SOURCE_BUCKET`, `BATCH_SIZE`, `MOVE_CONCURRENCY`, the SDK's endpoint variables, …).
//! It prints one JSON line: files, seconds, invocations, completed, failed, and
//! by_checksum (the files whose copies were verified by the source's checksum).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use common::rules::events::{MasterOutput, SlaveOutput};
use common::{Clients, Config, MasterSettings, SlaveSettings};
use serde_json::json;
use tokio::sync::mpsc;

use crate::Problem;

/// What one benchmarked run did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Moved {
    pub files: u64,
    pub seconds: f64,
    pub invocations: u64,
    pub completed: u64,
    pub failed: u64,
    pub by_checksum: u64,
}

/// `template` declares the status table, created if it does not exist yet.
pub async fn bench_move(
    run_id: &str,
    lambdas: usize,
    template: &deployment::template::Template,
) -> Result<Moved, Problem> {
    let problem = |e: common::ConfigError| Problem(e.to_string());
    let config = Config::from_env().map_err(problem)?;
    let master_settings = MasterSettings::from_env().map_err(problem)?;
    let slave_settings = SlaveSettings::from_env().map_err(problem)?;
    let mut clients = Clients::from_env(&config, "bench").await;
    crate::local::table_if_missing(&clients.dynamodb, template, &config.table_name).await?;

    let (events, inbox) = mpsc::unbounded_channel();
    let endpoint = crate::async_invoke::start(events)
        .await
        .map_err(|e| Problem(format!("no port for the Lambda endpoint: {e}")))?;
    clients.lambda = aws_sdk_lambda::Client::from_conf(
        aws_sdk_lambda::config::Builder::from(
            &aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await,
        )
        .endpoint_url(endpoint)
        .build(),
    );
    let master = master::Master::new(&clients, config.clone(), master_settings);
    let slave = Arc::new(slave::Slave::new(&clients, &config, slave_settings));
    let totals = Arc::new(Totals::default());
    let workers = run_slaves(slave, inbox, lambdas, totals.clone());

    let started = Instant::now();
    let mut invocations = 0;
    let selected = loop {
        let out: MasterOutput = master
            .handle(json!({ "run_id": run_id }), None)
            .await
            .map_err(|e| Problem(format!("master: {e}")))?;
        invocations += out.invocations;
        if out.listing_complete {
            break out.selected;
        }
    };
    // Every invocation master made is in the channel; wait until each is handled.
    while totals.handled.load(Ordering::SeqCst) < invocations {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    workers.abort();
    let run = common::RunId::parse(run_id).map_err(|e| Problem(e.to_string()))?;
    let by_checksum = common::store::StatusRecords::new(common::Store::new(
        clients.dynamodb.clone(),
        &config.table_name,
        config.run_ttl,
    ))
    .run_view(&run)
    .await
    .map_err(|e| Problem(format!("status table: {e}")))?
    .map_or(0, |view| view.progress.by_checksum);
    Ok(Moved {
        by_checksum,
        files: selected,
        seconds,
        invocations,
        completed: totals.completed.load(Ordering::SeqCst),
        failed: totals.failed.load(Ordering::SeqCst),
    })
}

/// What the slaves have done so far.
#[derive(Default)]
struct Totals {
    /// Events handled, successfully or not.
    handled: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
}

/// Handles events `lambdas` at a time, adding up what they did.
fn run_slaves(
    slave: Arc<slave::Slave>,
    mut inbox: mpsc::UnboundedReceiver<crate::async_invoke::Invocation>,
    lambdas: usize,
    totals: Arc<Totals>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(lambdas));
        while let Some((_, event)) = inbox.recv().await {
            let permit = slots.clone().acquire_owned().await.expect("never closed");
            let (slave, totals) = (slave.clone(), totals.clone());
            tokio::spawn(async move {
                let out: SlaveOutput = match slave.handle(event, None).await {
                    Ok(out) => out,
                    Err(e) => {
                        eprintln!("slave: {e}");
                        SlaveOutput::default()
                    }
                };
                totals.completed.fetch_add(out.completed, Ordering::SeqCst);
                totals.failed.fetch_add(out.failed, Ordering::SeqCst);
                totals.handled.fetch_add(1, Ordering::SeqCst);
                drop(permit);
            });
        }
    })
}
