//! Every setting the functions read from their environment, in one place.
//!
//! Each function reads its settings once per cold start. A missing or malformed
//! variable is a [`ConfigError`] that names the variable, so the first invocation
//! fails with `ConfigError` instead of a panic or a silent default.

use std::time::Duration;

use crate::rules::copy::{MAX_PART_SIZE, MIN_PART_SIZE};
use crate::rules::run::{Location, RunDefaults, Suffixes};

/// Settings every function shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `TABLE_NAME`: the DynamoDB status table. Required.
    pub table_name: String,
    /// `RUN_TTL_DAYS`, default 30: how long run and file items are kept.
    pub run_ttl: Duration,
    /// `S3_FORCE_PATH_STYLE`, default false: path-style S3 addressing, for local S3 servers.
    pub s3_force_path_style: bool,
    /// `SDK_MAX_ATTEMPTS`, default 6: attempts per AWS request before an error is reported.
    pub sdk_max_attempts: u32,
    /// `TASK_HEARTBEAT_SECONDS`, default 300: the activity task's `HeartbeatSeconds` in
    /// the state machine. A token nobody heartbeats for this long is replaced by a new
    /// one; status heartbeats the tokens it keeps, and a run's timeout must exceed it.
    pub task_heartbeat: Duration,
    pub defaults: RunDefaults,
}

/// Settings of the `master` function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterSettings {
    /// `SLAVE_FUNCTION`: name or ARN of the slave function. Required.
    pub slave_function: String,
    /// `BATCH_SIZE`, default 100: files per batch, that is per slave invocation (a batch
    /// is also capped in bytes of names, so that it fits in one DynamoDB item).
    pub batch_size: usize,
    /// `BATCH_BYTES`, default 10 GiB: the most bytes of objects in one batch (an object
    /// larger than that travels alone), so that large objects spread over slaves.
    pub batch_bytes: u64,
    /// `MAX_INVOCATIONS_IN_FLIGHT`, default 8: concurrent `Invoke` calls.
    pub max_invocations_in_flight: usize,
    /// `DEADLINE_MARGIN_MS`, default 30000: master returns a continuation when less
    /// than this much time is left in the invocation.
    pub deadline_margin: Duration,
}

/// Settings of the `slave` function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlaveSettings {
    /// `AWS_LAMBDA_FUNCTION_NAME`, set by Lambda: the function a slave invokes to hand
    /// on what it could not finish before its deadline.
    pub own_function: Option<String>,
    /// `HANDOFF_MARGIN_MS`, default 60000: with less time left than this, a slave starts
    /// no new copy and hands what is left to a fresh invocation.
    pub handoff_margin: Duration,
    /// `MOVE_CONCURRENCY`, default 16: objects moved at once within a batch.
    pub move_concurrency: usize,
    /// `MULTIPART_THRESHOLD_BYTES`, default 256 MiB: objects at least this large are
    /// copied in parts with `UploadPartCopy`.
    pub multipart_threshold: u64,
    /// `MULTIPART_PART_SIZE_BYTES`, default 64 MiB, at least 5 MiB.
    pub part_size: u64,
    /// `PART_CONCURRENCY`, default 8: parts of one object copied at once.
    pub part_concurrency: usize,
    /// `READ_SOURCE_ENCRYPTION`, default false (the template sets it where the stack
    /// lists KMS keys): each whole copy first reads its source's encryption
    /// (`HeadObject`) and is made with it, so an SSE-KMS object keeps its key. Without
    /// it, a copy takes the destination bucket's default encryption.
    pub read_source_encryption: bool,
}

/// Settings of the `status` function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSettings {
    /// `ACTIVITY_ARN`: the Step Functions activity whose tasks status completes. Required.
    pub activity_arn: String,
    /// `ACTIVITY_POLL_SECONDS`, default 60: how long one `GetActivityTask` may wait;
    /// status stops polling when less than this (plus a margin) is left.
    pub activity_poll: Duration,
    /// `WORKER_NAME`, default `status`: the worker name given to `GetActivityTask`.
    pub worker_name: String,
    /// `STATUS_WAIT_SECONDS`, default 45: how long one call waits for an unfinished run
    /// to finish before it answers `TransferIncomplete`; the function's timeout must
    /// cover this wait and one activity poll.
    pub run_wait: Duration,
    /// `STATUS_CHECK_INTERVAL_MS`, default 1000: the longest pause before a waiting call
    /// reads the run's counters again (`rules::progress::next_check` shortens it while
    /// files are finishing).
    pub check_interval: Duration,
}

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment variable {variable}: {problem}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

/// A source of variables: the process environment in the functions, a map in tests.
pub trait Lookup {
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Lookup for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<const N: usize> Lookup for [(&str, &str); N] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

struct Reader<'a, L: Lookup + ?Sized>(&'a L);

impl<L: Lookup + ?Sized> Reader<'_, L> {
    /// The variable's value, trimmed, where empty is a value ("" for a prefix is the
    /// whole bucket); `None` only when it is unset.
    fn set(&self, variable: &'static str) -> Option<String> {
        self.0.get(variable).map(|v| v.trim().to_string())
    }

    /// The variable's value; empty counts as unset.
    fn optional(&self, variable: &'static str) -> Option<String> {
        self.0
            .get(variable)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    fn required(&self, variable: &'static str) -> Result<String, ConfigError> {
        self.optional(variable).ok_or_else(|| ConfigError {
            variable,
            problem: "is not set".into(),
        })
    }

    fn number<T>(
        &self,
        variable: &'static str,
        default: T,
        min: T,
        max: T,
    ) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let Some(raw) = self.optional(variable) else {
            return Ok(default);
        };
        let value: T = raw.parse().map_err(|_| ConfigError {
            variable,
            problem: format!("{raw:?} is not a whole number"),
        })?;
        if value < min || value > max {
            return Err(ConfigError {
                variable,
                problem: format!("{value} is outside {min}..={max}"),
            });
        }
        Ok(value)
    }

    fn flag(&self, variable: &'static str) -> Result<bool, ConfigError> {
        match self
            .optional(variable)
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("false" | "0" | "no") => Ok(false),
            Some("true" | "1" | "yes") => Ok(true),
            Some(other) => Err(ConfigError {
                variable,
                problem: format!("{other:?} is not true or false"),
            }),
        }
    }
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&ProcessEnv)
    }

    pub fn from_lookup(env: &(impl Lookup + ?Sized)) -> Result<Self, ConfigError> {
        let env = Reader(env);
        let suffixes = match env.set("SUFFIXES") {
            None => Suffixes::default(),
            Some(raw) => Suffixes::parse_list(&raw),
        };
        let source_prefix = env.set("SOURCE_PREFIX").unwrap_or_else(|| "raw/".into());
        let destination_prefix = env
            .set("DESTINATION_PREFIX")
            .unwrap_or_else(|| "refined/".into());
        let defaults = RunDefaults {
            source_bucket: env.optional("SOURCE_BUCKET"),
            source_prefix,
            destination_bucket: env.optional("DESTINATION_BUCKET"),
            destination_prefix,
            suffixes,
        };
        if let Some(bucket) = &defaults.source_bucket {
            Location::new(bucket, &defaults.source_prefix).map_err(|problem| ConfigError {
                variable: "SOURCE_BUCKET",
                problem,
            })?;
        }
        Ok(Config {
            table_name: env.required("TABLE_NAME")?,
            run_ttl: Duration::from_secs(24 * 3600 * env.number("RUN_TTL_DAYS", 30u64, 1, 3650)?),
            s3_force_path_style: env.flag("S3_FORCE_PATH_STYLE")?,
            sdk_max_attempts: env.number("SDK_MAX_ATTEMPTS", 6u32, 1, 20)?,
            task_heartbeat: Duration::from_secs(env.number(
                "TASK_HEARTBEAT_SECONDS",
                300u64,
                5,
                3600,
            )?),
            defaults,
        })
    }
}

impl MasterSettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&ProcessEnv)
    }

    pub fn from_lookup(env: &(impl Lookup + ?Sized)) -> Result<Self, ConfigError> {
        let env = Reader(env);
        Ok(MasterSettings {
            slave_function: env.required("SLAVE_FUNCTION")?,
            batch_size: env.number("BATCH_SIZE", 100usize, 1, 1000)?,
            batch_bytes: env.number("BATCH_BYTES", 10 * GIB, MIN_PART_SIZE, 5 * 1024 * GIB)?,
            max_invocations_in_flight: env.number("MAX_INVOCATIONS_IN_FLIGHT", 8usize, 1, 256)?,
            deadline_margin: Duration::from_millis(env.number(
                "DEADLINE_MARGIN_MS",
                30_000u64,
                0,
                // Lambda's longest timeout: a margin that long ends every call after one
                // page, which a test of continuations wants.
                900_000,
            )?),
        })
    }
}

impl SlaveSettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&ProcessEnv)
    }

    pub fn from_lookup(env: &(impl Lookup + ?Sized)) -> Result<Self, ConfigError> {
        let env = Reader(env);
        Ok(SlaveSettings {
            own_function: env.optional("AWS_LAMBDA_FUNCTION_NAME"),
            handoff_margin: Duration::from_millis(env.number(
                "HANDOFF_MARGIN_MS",
                60_000u64,
                15_000,
                890_000,
            )?),
            move_concurrency: env.number("MOVE_CONCURRENCY", 16usize, 1, 512)?,
            multipart_threshold: env.number(
                "MULTIPART_THRESHOLD_BYTES",
                256 * MIB,
                MIN_PART_SIZE,
                MAX_PART_SIZE,
            )?,
            part_size: env.number(
                "MULTIPART_PART_SIZE_BYTES",
                64 * MIB,
                MIN_PART_SIZE,
                MAX_PART_SIZE,
            )?,
            part_concurrency: env.number("PART_CONCURRENCY", 8usize, 1, 64)?,
            read_source_encryption: env.flag("READ_SOURCE_ENCRYPTION")?,
        })
    }
}

impl StatusSettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&ProcessEnv)
    }

    pub fn from_lookup(env: &(impl Lookup + ?Sized)) -> Result<Self, ConfigError> {
        let env = Reader(env);
        let activity_arn = env.required("ACTIVITY_ARN")?;
        if !activity_arn.starts_with("arn:") || !activity_arn.contains(":activity:") {
            return Err(ConfigError {
                variable: "ACTIVITY_ARN",
                problem: format!("{activity_arn:?} is not an activity ARN"),
            });
        }
        Ok(StatusSettings {
            activity_arn,
            activity_poll: Duration::from_secs(env.number(
                "ACTIVITY_POLL_SECONDS",
                60u64,
                1,
                60,
            )?),
            worker_name: env
                .optional("WORKER_NAME")
                .unwrap_or_else(|| "status".into()),
            run_wait: Duration::from_secs(env.number("STATUS_WAIT_SECONDS", 45u64, 0, 840)?),
            check_interval: Duration::from_millis(env.number(
                "STATUS_CHECK_INTERVAL_MS",
                1000u64,
                50,
                60_000,
            )?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_original_layout() {
        let config = Config::from_lookup(&[("TABLE_NAME", "t")]).unwrap();
        assert_eq!(config.table_name, "t");
        assert_eq!(config.defaults.source_prefix, "raw/");
        assert_eq!(config.defaults.destination_prefix, "refined/");
        assert_eq!(config.defaults.suffixes, Suffixes::default());
        assert_eq!(config.defaults.source_bucket, None);
        assert!(!config.s3_force_path_style);
    }

    #[test]
    fn empty_settings_mean_what_the_template_says() {
        // an empty prefix is the whole bucket, an empty suffix list selects every file
        let config = Config::from_lookup(&[
            ("TABLE_NAME", "t"),
            ("SOURCE_PREFIX", ""),
            ("DESTINATION_PREFIX", " "),
            ("SUFFIXES", ""),
        ])
        .unwrap();
        assert_eq!(config.defaults.source_prefix, "");
        assert_eq!(config.defaults.destination_prefix, "");
        assert_eq!(config.defaults.suffixes.as_slice(), [""]);
        let config =
            Config::from_lookup(&[("TABLE_NAME", "t"), ("SUFFIXES", ".csv, .txt")]).unwrap();
        assert_eq!(config.defaults.suffixes.as_slice(), [".csv", ".txt"]);
        let config = Config::from_lookup(&[("TABLE_NAME", "t"), ("SUFFIXES", ".csv,")]).unwrap();
        assert_eq!(config.defaults.suffixes.as_slice(), [".csv", ""]);
    }

    #[test]
    fn a_missing_table_names_the_variable() {
        let err = Config::from_lookup(&[("SOURCE_PREFIX", "raw/")]).unwrap_err();
        assert_eq!(err.variable, "TABLE_NAME");
        assert_eq!(
            err.to_string(),
            "environment variable TABLE_NAME: is not set"
        );
    }

    #[test]
    fn malformed_numbers_and_flags_name_the_variable() {
        let err = MasterSettings::from_lookup(&[("SLAVE_FUNCTION", "s"), ("BATCH_SIZE", "ten")])
            .unwrap_err();
        assert_eq!(err.variable, "BATCH_SIZE");
        let err = MasterSettings::from_lookup(&[("SLAVE_FUNCTION", "s"), ("BATCH_SIZE", "0")])
            .unwrap_err();
        assert!(err.problem.contains("outside"), "{err}");
        let err = Config::from_lookup(&[("TABLE_NAME", "t"), ("S3_FORCE_PATH_STYLE", "maybe")])
            .unwrap_err();
        assert_eq!(err.variable, "S3_FORCE_PATH_STYLE");
    }

    #[test]
    fn parts_smaller_than_s3_allows_are_refused() {
        let err =
            SlaveSettings::from_lookup(&[("MULTIPART_PART_SIZE_BYTES", "1048576")]).unwrap_err();
        assert_eq!(err.variable, "MULTIPART_PART_SIZE_BYTES");
        let ok = SlaveSettings::from_lookup(&[("MULTIPART_THRESHOLD_BYTES", "5242880")]).unwrap();
        assert_eq!(ok.multipart_threshold, MIN_PART_SIZE);
    }

    #[test]
    fn status_needs_an_activity_arn() {
        assert_eq!(
            StatusSettings::from_lookup(&[]).unwrap_err().variable,
            "ACTIVITY_ARN"
        );
        let err = StatusSettings::from_lookup(&[("ACTIVITY_ARN", "file-transfer")]).unwrap_err();
        assert!(err.problem.contains("not an activity ARN"));
        let ok = StatusSettings::from_lookup(&[(
            "ACTIVITY_ARN",
            "arn:aws:states:us-east-1:123456789012:activity:a",
        )])
        .unwrap();
        assert_eq!(ok.activity_poll, Duration::from_secs(60));
        assert_eq!(
            (ok.run_wait, ok.check_interval),
            (Duration::from_secs(45), Duration::from_secs(1))
        );
    }
}
