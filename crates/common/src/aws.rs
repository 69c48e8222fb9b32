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

/// The configuration every client of a function is built from. A function builds only
/// the clients it uses, so its binary links no other client's code.
#[derive(Clone, Debug)]
pub struct Aws {
    sdk: SdkConfig,
    s3_force_path_style: bool,
}

impl Aws {
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

    /// From a configuration the caller made; tests pass their own.
    pub fn from_sdk_config(sdk: &SdkConfig, s3_force_path_style: bool) -> Self {
        Aws {
            sdk: sdk.clone(),
            s3_force_path_style,
        }
    }

    pub fn s3(&self) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&self.sdk)
                .force_path_style(self.s3_force_path_style)
                .build(),
        )
    }

    pub fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.sdk)
    }

    pub fn sfn(&self) -> aws_sdk_sfn::Client {
        let timeouts = TimeoutConfig::builder()
            .read_timeout(ACTIVITY_POLL_READ_TIMEOUT)
            .build();
        aws_sdk_sfn::Client::from_conf(
            aws_sdk_sfn::config::Builder::from(&self.sdk)
                .timeout_config(timeouts)
                .build(),
        )
    }

    pub fn lambda(&self) -> aws_sdk_lambda::Client {
        aws_sdk_lambda::Client::new(&self.sdk)
    }
}

/// Every client, for code that drives several functions at once (the tests, the bench).
#[derive(Clone, Debug)]
pub struct Clients {
    pub s3: aws_sdk_s3::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sfn: aws_sdk_sfn::Client,
    pub lambda: aws_sdk_lambda::Client,
}

impl Clients {
    pub async fn from_env(config: &Config, function: &'static str) -> Self {
        Self::of(&Aws::from_env(config, function).await)
    }

    pub fn from_sdk_config(sdk: &SdkConfig, s3_force_path_style: bool) -> Self {
        Self::of(&Aws::from_sdk_config(sdk, s3_force_path_style))
    }

    fn of(aws: &Aws) -> Self {
        Clients {
            s3: aws.s3(),
            dynamodb: aws.dynamodb(),
            sfn: aws.sfn(),
            lambda: aws.lambda(),
        }
    }
}
