//! What the three functions do the same way around the Lambda runtime.

use std::time::{Duration, SystemTime};

/// The invocation's deadline; `None` when the caller gave none (a zero deadline, as in
/// a hand-built `Context`).
pub fn deadline(context: &lambda_runtime::Context) -> Option<SystemTime> {
    (context.deadline > 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_millis(context.deadline))
}

/// Time left before `deadline`; zero once it has passed.
pub fn remaining(deadline: SystemTime) -> Duration {
    deadline
        .duration_since(SystemTime::now())
        .unwrap_or_default()
}

/// The function built at cold start, or, if its configuration was bad, the
/// `ConfigError` that every invocation answers with.
pub fn configured<A, E: From<crate::ConfigError>>(
    built: &Result<A, crate::ConfigError>,
) -> Result<&A, E> {
    built.as_ref().map_err(|e| E::from(e.clone()))
}
