//! AWS call failures read from the SDK's errors, and the errors' stable names.

use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::rules::failure::TRANSIENT_STATUSES;
pub use crate::rules::failure::{AwsError, is_transient_code};

impl AwsError {
    /// What an SDK call's error says: its code, its message, and whether it is transient.
    pub fn from_sdk<E>(
        operation: &'static str,
        err: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        use aws_sdk_s3::error::SdkError;
        let code = err.code().map(str::to_string);
        let transient = match &err {
            SdkError::TimeoutError(_)
            | SdkError::DispatchFailure(_)
            | SdkError::ResponseError(_) => true,
            SdkError::ServiceError(service) => {
                code.as_deref().is_some_and(is_transient_code)
                    || TRANSIENT_STATUSES.contains(&service.raw().status().as_u16())
            }
            _ => false,
        };
        // A service error says what is wrong in its code and message; the full context
        // would add the raw response, which is far too long for a reason or a cause.
        let message = match (&code, err.message()) {
            (Some(code), Some(text)) => format!("{code}: {text}"),
            (Some(code), None) => code.clone(),
            (None, _) => DisplayErrorContext(&err).to_string(),
        };
        AwsError {
            operation,
            code,
            message,
            transient,
        }
    }

    /// What a HEAD request's error says. Its answer has no body, so where the SDK names
    /// no code the status stands for one (403 `AccessDenied`, 404 `NotFound`, 412
    /// `PreconditionFailed`), and the message is the status rather than the SDK's dump.
    pub fn from_head<E>(
        operation: &'static str,
        err: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let mut error = Self::from_sdk(operation, err);
        if let (None, Some(status)) = (&error.code, status) {
            error.code = match status {
                403 => Some("AccessDenied".into()),
                404 => Some("NotFound".into()),
                412 => Some("PreconditionFailed".into()),
                _ => None,
            };
            error.message = format!("HTTP {status}");
        }
        error
    }
}

/// One `impl From<$error> for lambda_runtime::Diagnostic` per function crate, so that
/// Step Functions sees each error's stable name (`$error::error_type`) as `errorType`.
#[macro_export]
macro_rules! diagnostic {
    ($error:ty) => {
        impl From<$error> for ::lambda_runtime::Diagnostic {
            fn from(err: $error) -> Self {
                ::lambda_runtime::Diagnostic {
                    error_type: err.error_type().to_string(),
                    error_message: err.to_string(),
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::operation::get_object_tagging::GetObjectTaggingError;
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    #[tokio::test]
    async fn throttling_is_transient_and_access_denied_is_not() {
        let throttled = mock!(aws_sdk_s3::Client::get_object_tagging)
            .sequence()
            .http_status(
                503,
                Some("<Error><Code>SlowDown</Code><Message>slow</Message></Error>".into()),
            )
            .build();
        let denied = mock!(aws_sdk_s3::Client::get_object_tagging)
            .sequence()
            .http_status(
                403,
                Some("<Error><Code>AccessDenied</Code><Message>no</Message></Error>".into()),
            )
            .build();
        let client = mock_client!(
            aws_sdk_s3,
            RuleMode::Sequential,
            [&throttled, &denied],
            |c| c.retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
        );

        let err: aws_sdk_s3::error::SdkError<GetObjectTaggingError, _> = client
            .get_object_tagging()
            .bucket("b")
            .key("k")
            .send()
            .await
            .unwrap_err();
        let err = AwsError::from_sdk("GetObjectTagging", err);
        assert!(err.transient, "{err:?}");

        let err = AwsError::from_sdk(
            "GetObjectTagging",
            client
                .get_object_tagging()
                .bucket("b")
                .key("k")
                .send()
                .await
                .unwrap_err(),
        );
        assert!(!err.transient, "{err:?}");
        assert!(err.to_string().starts_with("GetObjectTagging: "), "{err}");
    }

    #[tokio::test]
    async fn a_bare_5xx_answer_to_a_head_is_transient_and_a_bare_403_is_not() {
        // S3 answers a HEAD with a status and no body, so no error code.
        let bare = |status| {
            mock!(aws_sdk_s3::Client::head_object)
                .sequence()
                .http_status(status, None)
                .build()
        };
        let rules = [bare(503), bare(500), bare(403)];
        let client = mock_client!(aws_sdk_s3, RuleMode::Sequential, &rules, |c| c
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled()));
        let mut transient = Vec::new();
        for _ in &rules {
            let err = client
                .head_object()
                .bucket("b")
                .key("k")
                .send()
                .await
                .unwrap_err();
            transient.push(AwsError::from_sdk("HeadObject", err).transient);
        }
        assert_eq!(transient, [true, true, false]);
    }
}
