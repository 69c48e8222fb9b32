//! The AWS clients, built once per cold start from one `SdkConfig`.
//!
//! Endpoints come from the SDK's own `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>`
//! variables, so the same binaries talk to AWS or to a local stack unchanged.

use std::time::Duration;

use aws_config::{AppName, BehaviorVersion, SdkConfig, retry::RetryConfig, timeout::TimeoutConfig};

use crate::config::Config;

/// `GetActivityTask` holds the connection open for up to 60 s; the read timeout must outlast it.
const ACTIVITY_POLL_READ_TIMEOUT: Duration = Duration::from_secs(70);

/// The user agent's `app/` part for a function: `s3-transfer-flow-<function>`.
pub fn app_name(function: &'static str) -> AppName {
    AppName::new(format!("s3-transfer-flow-{function}")).expect("function names are plain words")
}

#[derive(Clone, Debug)]
pub struct Clients {
    pub s3: aws_sdk_s3::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sfn: aws_sdk_sfn::Client,
    pub lambda: aws_sdk_lambda::Client,
}

impl Clients {
    /// Loads credentials, region and endpoints the SDK's usual way. Every request's user
    /// agent ends in `app/s3-transfer-flow-<function>`, so CloudTrail (and the local
    /// stack's front) can tell which function made a call.
    pub async fn from_env(config: &Config, function: &'static str) -> Self {
        let retry = RetryConfig::standard()
            .with_max_attempts(config.sdk_max_attempts)
            .with_initial_backoff(Duration::from_millis(50))
            .with_max_backoff(Duration::from_secs(5));
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(retry)
            .app_name(app_name(function))
            .load()
            .await;
        Self::from_sdk_config(&sdk, config.s3_force_path_style)
    }

    /// Builds every client from one shared configuration; tests pass their own.
    pub fn from_sdk_config(sdk: &SdkConfig, s3_force_path_style: bool) -> Self {
        let s3 = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(s3_force_path_style)
            .build();
        let sfn_timeouts = TimeoutConfig::builder()
            .read_timeout(ACTIVITY_POLL_READ_TIMEOUT)
            .build();
        let sfn = aws_sdk_sfn::config::Builder::from(sdk)
            .timeout_config(sfn_timeouts)
            .build();
        Clients {
            s3: aws_sdk_s3::Client::from_conf(s3),
            dynamodb: aws_sdk_dynamodb::Client::new(sdk),
            sfn: aws_sdk_sfn::Client::from_conf(sfn),
            lambda: aws_sdk_lambda::Client::new(sdk),
        }
    }
}
