//! What the three functions do the same way around the Lambda runtime.

use std::time::{Duration, SystemTime};

/// The invocation's deadline; `None` when the caller gave none (a zero deadline, as in
/// a hand-built `Context`).
pub fn deadline(context: &lambda_runtime::Context) -> Option<SystemTime> {
    deadline_from(context.deadline, SystemTime::now())
}

/// Lambda sends the deadline as Unix time in milliseconds. `cargo lambda watch` sends
/// the function's timeout instead (600000): a value too small to be a time since 2001
/// is read as milliseconds from now, so the functions pace themselves locally as they
/// do on AWS instead of seeing a deadline long past.
fn deadline_from(raw_ms: u64, now: SystemTime) -> Option<SystemTime> {
    const EPOCH_MS_IN_2001: u64 = 1_000_000_000_000;
    match raw_ms {
        0 => None,
        timeout if timeout < EPOCH_MS_IN_2001 => Some(now + Duration::from_millis(timeout)),
        epoch => Some(SystemTime::UNIX_EPOCH + Duration::from_millis(epoch)),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_are_unix_milliseconds_or_a_timeout_from_now() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_582_357);
        assert_eq!(deadline_from(0, now), None);
        assert_eq!(
            deadline_from(1_795_582_417_000, now),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_582_417))
        );
        assert_eq!(
            deadline_from(600_000, now),
            Some(now + Duration::from_secs(600))
        );
    }
}
