//! The whole local stack (`local/stack.py`): moto, the three functions under
//! `cargo lambda watch`, the front that makes local Lambda behave as on AWS, and the
//! state machine deployed from `statemachine.asl.json`. One per test binary.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_sdk_sfn::operation::describe_execution::DescribeExecutionOutput;
use aws_sdk_sfn::types::{ExecutionStatus, HistoryEvent};
use serde_json::Value;

use xtask::local::RunningStack;

use crate::{sdk_config, unique, workspace_root};

pub struct LocalStack {
    pub endpoint: String,
    running: RunningStack,
}

/// The stack of this test binary, started on first use and stopped when it exits.
pub fn local_stack() -> &'static LocalStack {
    static STACK: OnceLock<LocalStack> = OnceLock::new();
    STACK.get_or_init(|| {
        let dir = std::env::temp_dir().join(unique("local-stack"));
        let running = RunningStack::start(
            &workspace_root(),
            &dir,
            "s3-transfer-tests",
            "s3-transfer-tests",
        )
        .unwrap_or_else(|problem| panic!("{problem}"));
        LocalStack {
            endpoint: running.var("AWS_ENDPOINT_URL").unwrap().to_string(),
            running,
        }
    })
}

impl LocalStack {
    pub fn var(&self, name: &str) -> &str {
        self.running
            .var(name)
            .unwrap_or_else(|problem| panic!("{problem}"))
    }

    pub async fn sfn(&self) -> aws_sdk_sfn::Client {
        aws_sdk_sfn::Client::new(&sdk_config(&self.endpoint).await)
    }

    pub async fn s3(&self) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&sdk_config(&self.endpoint).await)
                .force_path_style(true)
                .build(),
        )
    }

    pub async fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&sdk_config(&self.endpoint).await)
    }

    /// Starts an execution of the deployed state machine.
    pub async fn start(&self, name: &str, input: &Value) -> String {
        self.sfn()
            .await
            .start_execution()
            .state_machine_arn(self.var("STATE_MACHINE_ARN"))
            .name(name)
            .input(input.to_string())
            .send()
            .await
            .unwrap()
            .execution_arn
    }

    /// Waits for the execution to end.
    pub async fn finished(&self, execution: &str) -> DescribeExecutionOutput {
        let sfn = self.sfn().await;
        let started = Instant::now();
        loop {
            let described = sfn
                .describe_execution()
                .execution_arn(execution)
                .send()
                .await
                .unwrap();
            if described.status != ExecutionStatus::Running {
                return described;
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "{execution} still runs after 10 minutes"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub async fn history(&self, execution: &str) -> Vec<HistoryEvent> {
        let sfn = self.sfn().await;
        let mut events = Vec::new();
        let mut token = None;
        loop {
            let page = sfn
                .get_execution_history()
                .execution_arn(execution)
                .set_next_token(token)
                .send()
                .await
                .unwrap();
            events.extend(page.events);
            token = page.next_token;
            if token.is_none() {
                return events;
            }
        }
    }
}

/// The error names of the Lambda failures in a history, in order.
pub fn lambda_failures(history: &[HistoryEvent]) -> Vec<String> {
    history
        .iter()
        .filter_map(|e| e.lambda_function_failed_event_details.as_ref())
        .filter_map(|d| d.error.clone())
        .collect()
}
