//! Failures as the project sees them: an AWS call that failed, and why a file could
//! not be moved, each saying whether a later attempt may succeed.

/// A failed AWS call, after the SDK's own retries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation}: {message}")]
pub struct AwsError {
    pub operation: &'static str,
    /// The service's error code, such as `NoSuchKey` or `ThrottlingException`.
    pub code: Option<String>,
    pub message: String,
    /// Whether trying again later may succeed (throttling, 5xx, timeouts, network).
    pub transient: bool,
}

/// Error codes that mean "not now" rather than "never".
const TRANSIENT_CODES: &[&str] = &[
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "TransactionConflict",
    "TransactionInProgressException",
    "InternalServerError",
    "ServiceException",
    "EC2ThrottledException",
    "InternalFailure",
    "ProvisionedThroughputExceeded",
    "ActivityWorkerLimitExceeded",
    // Concurrent conditional writes of one key (If-None-Match, If-Match): try again.
    "ConditionalRequestConflict",
];

/// HTTP statuses that mean "not now" whatever the code, or when there is none: S3
/// answers a `HEAD` with a bare status, no body to name its error.
pub const TRANSIENT_STATUSES: &[u16] = &[429, 500, 502, 503, 504];

impl AwsError {
    /// An error the caller builds itself, such as a DynamoDB item that is not what it should be.
    pub fn permanent(operation: &'static str, message: impl Into<String>) -> Self {
        AwsError {
            operation,
            code: None,
            message: message.into(),
            transient: false,
        }
    }

    pub fn code_is(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }
}

pub fn is_transient_code(code: &str) -> bool {
    TRANSIENT_CODES.contains(&code)
}

/// Why a file could not be moved. The source is untouched unless said otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct MoveFailure {
    pub reason: String,
    /// Whether a later attempt may succeed.
    pub transient: bool,
}

impl MoveFailure {
    /// A failure no later attempt changes.
    pub fn permanent(reason: impl Into<String>) -> Self {
        MoveFailure {
            reason: reason.into(),
            transient: false,
        }
    }
}

impl From<AwsError> for MoveFailure {
    fn from(e: AwsError) -> Self {
        MoveFailure {
            reason: e.to_string(),
            transient: e.transient,
        }
    }
}
