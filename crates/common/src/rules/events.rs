//! What the functions receive and answer, and how an event is read and checked.

use std::time::Duration;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::rules::batch::BatchId;
use crate::rules::copy::{IfExists, STORAGE_CLASSES};
use crate::rules::manifest::Manifest;
use crate::rules::plan::Plan;
use crate::rules::run::{EventError, Location, RunDefaults, RunId, RunSpec, Suffixes};
use crate::rules::select::{Glob, Selection, Timestamp};

/// The longest a run may last, in seconds (three days). An execution's history holds
/// at most 25,000 events, and an unfinished run adds about 3 with each status call,
/// one every 46 s or so: about 17,000 in three days.
pub const MAX_RUN_TIMEOUT_SECONDS: u32 = 259_200;
/// The state machine's timing defaults (its `Defaults` state), which apply where the
/// execution input leaves a field out.
pub const DEFAULT_WAIT_BEFORE_MASTER_SECONDS: u32 = 5;
pub const DEFAULT_WAIT_BEFORE_STATUS_SECONDS: u32 = 0;
pub const DEFAULT_RUN_TIMEOUT_SECONDS: u32 = 3600;

/// Parses an event, naming the field that is wrong; unknown fields are refused so that
/// a misspelt `source_prefx` cannot silently fall back to the default prefix.
pub fn parse_event<T: DeserializeOwned>(payload: serde_json::Value) -> Result<T, EventError> {
    serde_path_to_error::deserialize(payload).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            EventError(e.inner().to_string())
        } else {
            EventError(format!("{path}: {}", e.inner()))
        }
    })
}

/// What `master` receives: the execution input with the run id added. Everything but
/// `run_id` falls back to the function's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterEvent {
    pub run_id: Option<String>,
    pub source_bucket: Option<String>,
    pub source_prefix: Option<String>,
    pub destination_bucket: Option<String>,
    pub destination_prefix: Option<String>,
    pub suffixes: Option<Vec<String>>,
    /// Glob patterns on the key relative to the source prefix: only keys matching one
    /// of `include`, and none of `exclude`, are taken.
    pub include: Option<Vec<String>>,
    pub exclude: Option<Vec<String>>,
    /// Sizes in bytes, both inclusive.
    pub min_size: Option<u64>,
    pub max_size: Option<u64>,
    /// RFC 3339 times: objects modified at or after `modified_after`, and before
    /// `modified_before`.
    pub modified_after: Option<String>,
    pub modified_before: Option<String>,
    /// The storage class every copy is written in; by default each keeps its source's.
    pub storage_class: Option<String>,
    /// The KMS key (id, key ARN or alias ARN) every copy is encrypted with (SSE-KMS); by
    /// default each keeps its source's encryption.
    pub kms_key_id: Option<String>,
    /// `overwrite` (the default), `skip` or `fail`: what happens to a destination key
    /// that already holds an object.
    pub if_destination_exists: Option<String>,
    /// In a bucket that keeps versions: `true` leaves each copied version as a noncurrent
    /// version; by default it is deleted, so moved data is not kept twice.
    pub keep_source_versions: Option<bool>,
    /// `true`: list and select as the run would, and end with its plan (files and bytes
    /// by storage class, what would fail and why, the estimated cost); nothing moves.
    pub dry_run: Option<bool>,
    /// `{"bucket", "key", "format": "csv" | "jsonl" | "s3-inventory"}`: the run moves the
    /// files this manifest names (each under the source prefix), instead of listing the
    /// source prefix.
    pub manifest: Option<Manifest>,
    /// The 12-digit AWS accounts expected to own the source and destination buckets:
    /// every request names them (`ExpectedBucketOwner`), and S3 refuses a request about a
    /// bucket another account owns.
    pub source_bucket_owner: Option<String>,
    pub destination_bucket_owner: Option<String>,
    /// The ETag the manifest must have: the input check reads the manifest and the
    /// state machine passes its ETag on (see [`Pinned`]), so that the run reads the
    /// manifest that was checked, and nothing put in its place since.
    pub manifest_etag: Option<String>,
    /// The timing fields are read by the state machine (its Wait states and the activity
    /// task's timeout, with defaults there); master accepts them so that the whole
    /// execution input is checked in one place, and only checks they are whole seconds.
    pub wait_before_master_seconds: Option<u32>,
    pub wait_before_status_seconds: Option<u32>,
    pub run_timeout_seconds: Option<u32>,
}

impl MasterEvent {
    /// The state machine's timing fields as they will apply (the defaults where left
    /// out), checked before its states use them: a run timeout longer than the activity
    /// task's heartbeat (Step Functions wants `HeartbeatSeconds` below `TimeoutSeconds`),
    /// shorter than the time the status table keeps a run's items, and at most
    /// [`MAX_RUN_TIMEOUT_SECONDS`]; and waits that leave time to run within it, as the
    /// run timeout counts from the start, waits included.
    pub fn check_timing(&self, heartbeat: Duration, kept: Duration) -> Result<(), EventError> {
        let timeout = self
            .run_timeout_seconds
            .unwrap_or(DEFAULT_RUN_TIMEOUT_SECONDS);
        let (heartbeat, kept) = (heartbeat.as_secs(), kept.as_secs());
        let limit = (kept.saturating_sub(1)).min(u64::from(MAX_RUN_TIMEOUT_SECONDS));
        if u64::from(timeout) <= heartbeat || u64::from(timeout) > limit {
            return Err(EventError(format!(
                "run_timeout_seconds: {timeout} must be more than the activity task's heartbeat \
                 ({heartbeat} seconds, TaskHeartbeatSeconds) and at most {limit} (three days, \
                 and less than the {kept} seconds the status table keeps a run, RUN_TTL_DAYS)"
            )));
        }
        let master = self
            .wait_before_master_seconds
            .unwrap_or(DEFAULT_WAIT_BEFORE_MASTER_SECONDS);
        let status = self
            .wait_before_status_seconds
            .unwrap_or(DEFAULT_WAIT_BEFORE_STATUS_SECONDS);
        if u64::from(master) + u64::from(status) >= u64::from(timeout) {
            let field = if self.wait_before_master_seconds.is_some() {
                "wait_before_master_seconds"
            } else {
                "wait_before_status_seconds"
            };
            return Err(EventError(format!(
                "{field}: the waits before master ({master} s) and before status ({status} s) \
                 leave no time to run within run_timeout_seconds ({timeout} s), which counts \
                 from the start, waits included"
            )));
        }
        Ok(())
    }

    /// The run this event asks for, with the function's defaults filled in.
    pub fn resolve(self, defaults: &RunDefaults) -> Result<(RunId, RunSpec), EventError> {
        let run_id = RunId::parse(
            &self
                .run_id
                .ok_or_else(|| EventError("run_id is missing".into()))?,
        )?;
        let source_bucket = self
            .source_bucket
            .or_else(|| defaults.source_bucket.clone())
            .ok_or_else(|| {
                EventError("source_bucket is missing and SOURCE_BUCKET is not set".into())
            })?;
        let source_prefix = self
            .source_prefix
            .unwrap_or_else(|| defaults.source_prefix.clone());
        let source = Location::new(&source_bucket, &source_prefix)
            .map_err(|e| EventError(format!("source: {e}")))?;
        let destination_bucket = self
            .destination_bucket
            .or_else(|| defaults.destination_bucket.clone())
            .unwrap_or(source_bucket);
        let destination_prefix = self
            .destination_prefix
            .unwrap_or_else(|| defaults.destination_prefix.clone());
        let destination = Location::new(&destination_bucket, &destination_prefix)
            .map_err(|e| EventError(format!("destination: {e}")))?;
        let selection = selection(
            self.include,
            self.exclude,
            (self.min_size, self.max_size),
            (self.modified_after, self.modified_before),
        )?;
        let suffixes = match self.suffixes {
            Some(list) => Suffixes::new(list).map_err(|e| EventError(format!("suffixes: {e}")))?,
            // Patterns or a manifest say which keys a run takes: the stack's default
            // suffixes would silently narrow them further.
            None if !selection.include.is_empty() || self.manifest.is_some() => {
                Suffixes::every_key()
            }
            None => defaults.suffixes.clone(),
        };
        if let Some(class) = &self.storage_class
            && !STORAGE_CLASSES.contains(&class.as_str())
        {
            return Err(EventError(format!(
                "storage_class: {class:?} is not one of {}",
                STORAGE_CLASSES.join(", ")
            )));
        }
        if let Some(key) = &self.kms_key_id
            && let Err(problem) = check_kms_key_id(key)
        {
            return Err(EventError(format!("kms_key_id: {key:?} {problem}")));
        }
        for (field, owner) in [
            ("source_bucket_owner", &self.source_bucket_owner),
            ("destination_bucket_owner", &self.destination_bucket_owner),
        ] {
            if let Some(owner) = owner
                && (owner.len() != 12 || !owner.bytes().all(|b| b.is_ascii_digit()))
            {
                return Err(EventError(format!(
                    "{field}: {owner:?} is not an AWS account id (12 digits)"
                )));
            }
        }
        if let Some(manifest) = &self.manifest {
            manifest
                .check()
                .map_err(|e| EventError(format!("manifest: {e}")))?;
        } else if self.manifest_etag.is_some() {
            return Err(EventError(
                "manifest_etag: the run names no manifest".into(),
            ));
        }
        let if_exists = match &self.if_destination_exists {
            None => IfExists::Overwrite,
            Some(raw) => IfExists::parse(raw)
                .map_err(|e| EventError(format!("if_destination_exists: {e}")))?,
        };
        Ok((
            run_id,
            RunSpec::new(source, destination, suffixes)?
                .with_selection(selection)
                .with_storage_class(self.storage_class)
                .with_kms_key_id(self.kms_key_id)
                .with_if_destination_exists(if_exists)
                .with_keep_source_versions(self.keep_source_versions.unwrap_or(false))
                .with_dry_run(self.dry_run.unwrap_or(false))
                .with_manifest(self.manifest)
                .with_owners(self.source_bucket_owner, self.destination_bucket_owner),
        ))
    }
}

/// Whether `key` can name a KMS key: a key id, key ARN or alias ARN is a non-empty
/// string of at most 2,048 characters with no whitespace.
fn check_kms_key_id(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        Err("is empty")
    } else if key.chars().count() > 2048 {
        Err("is longer than the 2,048 characters a KMS key id may have")
    } else if key.chars().any(char::is_whitespace) {
        Err("contains whitespace; name a key id, key ARN or alias ARN")
    } else {
        Ok(())
    }
}

/// The selection an event asks for, each value checked and named when it is wrong.
fn selection(
    include: Option<Vec<String>>,
    exclude: Option<Vec<String>>,
    (min_size, max_size): (Option<u64>, Option<u64>),
    (modified_after, modified_before): (Option<String>, Option<String>),
) -> Result<Selection, EventError> {
    let globs = |field: &str, list: Option<Vec<String>>| -> Result<Vec<Glob>, EventError> {
        if field == "include" && list.as_ref().is_some_and(Vec::is_empty) {
            return Err(EventError(
                "include: an empty list selects nothing; leave the field out to take every key"
                    .into(),
            ));
        }
        list.unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, raw)| Glob::new(raw).map_err(|e| EventError(format!("{field}[{i}]: {e}"))))
            .collect()
    };
    let time = |field: &str, raw: Option<String>| -> Result<Option<Timestamp>, EventError> {
        raw.map(|raw| {
            Timestamp::parse_rfc3339(&raw).map_err(|e| EventError(format!("{field}: {e}")))
        })
        .transpose()
    };
    let selection = Selection {
        include: globs("include", include)?,
        exclude: globs("exclude", exclude)?,
        min_size,
        max_size,
        modified_after: time("modified_after", modified_after)?,
        modified_before: time("modified_before", modified_before)?,
    };
    selection.check().map_err(EventError)?;
    Ok(selection)
}

/// What the state machine asks of `master` before anything else: whether an
/// execution's input is one it can run. The input is the execution input as given,
/// which must be an object of master's event fields; the run id is the execution's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputCheck {
    pub run_id: String,
    pub input: serde_json::Value,
}

impl InputCheck {
    /// The `{"check": ...}` envelope the state machine sends, if `payload` is one.
    pub fn from_payload(payload: &serde_json::Value) -> Option<Result<Self, EventError>> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Envelope {
            check: InputCheck,
        }
        payload.get("check")?;
        Some(parse_event::<Envelope>(payload.clone()).map(|e| e.check))
    }

    /// The input as master's event, with the run id. A field given as `null` is refused:
    /// the state machine would put it over the field's default.
    pub fn event(self) -> Result<MasterEvent, EventError> {
        let serde_json::Value::Object(mut fields) = self.input else {
            return Err(EventError(format!(
                "the execution input must be a JSON object of fields, not {}",
                self.input
            )));
        };
        if let Some((field, _)) = fields.iter().find(|(_, v)| v.is_null()) {
            return Err(EventError(format!(
                "{field}: null is not a value; leave the field out to use its default"
            )));
        }
        if fields.contains_key("run_id") {
            return Err(EventError(
                "run_id: the run id is the execution's name; leave it out of the input".into(),
            ));
        }
        fields.insert("run_id".into(), serde_json::Value::String(self.run_id));
        parse_event(serde_json::Value::Object(fields))
    }
}

/// What `master` answers an input check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckOutput {
    pub run_id: RunId,
    pub source: String,
    pub destination: String,
    /// The keys the run's manifest names, every line of it read and checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_keys: Option<u64>,
    /// What the run must find as the check found it; the state machine merges it into
    /// master's event.
    pub pinned: Pinned,
}

/// What an input check read that the run must read the same: `{}`, or the manifest's
/// ETag.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pinned {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_etag: Option<String>,
}

/// What `master` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterOutput {
    pub run_id: RunId,
    /// False when master stopped before its deadline: call it again with the same event.
    pub listing_complete: bool,
    /// Files selected so far in the whole run.
    pub selected: u64,
    /// Slave invocations made by this call.
    pub invocations: u64,
}

/// What `slave` receives: a batch that master recorded for the run, named by its first
/// key. The files themselves are read from the status table, so an event can only ever
/// move what master recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaveEvent {
    pub run_id: RunId,
    pub batch: BatchId,
    /// Set when a slave short of time hands on the rest of the batch: how many
    /// invocations in a row have handed it on without finishing a file or a part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handed_on: Option<u32>,
}

/// What `slave` answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlaveOutput {
    pub completed: u64,
    pub failed: u64,
    /// Files left in place because their destination exists (`if_destination_exists: skip`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped: u64,
    /// Files that an earlier delivery of the same batch had already completed.
    pub already_done: u64,
    pub bytes: u64,
    /// Files left for a new invocation, which this one started before its deadline.
    pub handed_on: u64,
}

/// What `status` receives. The state machine also names its execution, whose history
/// tells whether a result was delivered, and the run's start and timeout, past which an
/// unfinished run ends with `RunTimedOut`; a hand-made event may leave them out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusEvent {
    pub run_id: RunId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_timeout_seconds: Option<u32>,
}

/// A run's result, as `status` reports it and hands to the activity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_id: RunId,
    pub source: String,
    pub destination: String,
    pub files: u64,
    pub completed: u64,
    pub failed: u64,
    /// Files left in place because their destination exists (`if_destination_exists:
    /// skip`); shown only when there are some.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped: u64,
    pub bytes: u64,
    /// Completed files verified by the source's full-object checksum, and by size and
    /// ETag; shown when there are some.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub verified_by_checksum: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub verified_by_etag: u64,
    /// A dry run's plan; the counts above are then all 0 but `files`, the files that
    /// would move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanSummary>,
}

/// A dry run's plan as the execution's output shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanSummary {
    #[serde(flatten)]
    pub plan: Plan,
    pub estimated_cost_usd: f64,
}

impl From<Plan> for PlanSummary {
    fn from(plan: Plan) -> Self {
        PlanSummary {
            estimated_cost_usd: plan.estimated_cost_usd(),
            plan,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::select::Timestamp;
    use serde_json::json;

    fn defaults() -> RunDefaults {
        RunDefaults {
            source_bucket: Some("data-bucket".into()),
            source_prefix: "raw/".into(),
            destination_bucket: None,
            destination_prefix: "refined/".into(),
            suffixes: Suffixes::default(),
        }
    }

    #[test]
    fn an_event_with_only_a_run_id_takes_the_defaults() {
        let event: MasterEvent = parse_event(json!({"run_id": "exec-1"})).unwrap();
        let (run, spec) = event.resolve(&defaults()).unwrap();
        assert_eq!(run.as_str(), "exec-1");
        assert_eq!(spec.source, Location::new("data-bucket", "raw/").unwrap());
        assert_eq!(
            spec.destination,
            Location::new("data-bucket", "refined/").unwrap()
        );
        assert_eq!(spec.suffixes.as_slice(), [".csv"]);
    }

    #[test]
    fn the_event_overrides_every_default() {
        let event: MasterEvent = parse_event(json!({
            "run_id": "r", "source_bucket": "in-bucket", "source_prefix": "a/",
            "destination_bucket": "out-bucket", "destination_prefix": "", "suffixes": [".txt", ".gz"]
        }))
        .unwrap();
        let (_, spec) = event.resolve(&defaults()).unwrap();
        assert_eq!(spec.source.to_string(), "s3://in-bucket/a/");
        assert_eq!(spec.destination.to_string(), "s3://out-bucket/");
        assert_eq!(spec.suffixes.as_slice(), [".txt", ".gz"]);
    }

    #[test]
    fn misspelt_fields_are_refused_by_name() {
        let err =
            parse_event::<MasterEvent>(json!({"run_id": "r", "source_prefx": "x/"})).unwrap_err();
        assert!(err.0.contains("unknown field `source_prefx`"), "{err}");
        let err =
            parse_event::<SlaveEvent>(json!({"run_id": "r", "batch": ["raw/a.csv"]})).unwrap_err();
        assert!(err.0.starts_with("batch: invalid type"), "{err}");
        let err =
            parse_event::<MasterEvent>(json!({"run_id": "r", "wait_before_status_seconds": -5}))
                .unwrap_err();
        assert!(
            err.0
                .starts_with("wait_before_status_seconds: invalid value"),
            "{err}"
        );
        let err = parse_event::<MasterEvent>(json!({"run_id": "r", "suffixes": [".csv", 7]}))
            .unwrap_err();
        assert!(err.0.starts_with("suffixes[1]: invalid type"), "{err}");
    }

    #[test]
    fn the_state_machines_timing_fields_are_accepted_and_ignored() {
        let event: MasterEvent = parse_event(json!({
            "run_id": "r", "wait_before_master_seconds": 0, "wait_before_status_seconds": 2,
            "run_timeout_seconds": 600
        }))
        .unwrap();
        assert_eq!(event.run_timeout_seconds, Some(600));
        let (_, spec) = event.resolve(&defaults()).unwrap();
        assert_eq!(spec.source.to_string(), "s3://data-bucket/raw/");
    }

    #[test]
    fn timing_fields_are_checked_before_the_state_machine_uses_them() {
        let heartbeat = Duration::from_secs(300);
        let kept = Duration::from_secs(30 * 86400);
        let event = |extra: serde_json::Value| {
            let mut fields = json!({"run_id": "r"});
            fields
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            parse_event::<MasterEvent>(fields)
        };
        assert!(
            event(json!({"wait_before_master_seconds": 0, "run_timeout_seconds": 301}))
                .unwrap()
                .check_timing(heartbeat, kept)
                .is_ok()
        );
        let err = event(json!({"wait_before_master_seconds": -1})).unwrap_err();
        assert!(
            err.0
                .starts_with("wait_before_master_seconds: invalid value"),
            "{err}"
        );
        let err = event(json!({"run_timeout_seconds": "soon"})).unwrap_err();
        assert!(
            err.0.starts_with("run_timeout_seconds: invalid type"),
            "{err}"
        );
        for timeout in [0, 300, MAX_RUN_TIMEOUT_SECONDS + 1] {
            let err = event(json!({"run_timeout_seconds": timeout}))
                .unwrap()
                .check_timing(heartbeat, kept)
                .unwrap_err();
            assert!(err.0.starts_with("run_timeout_seconds: "), "{err}");
            assert!(err.0.contains("heartbeat (300 seconds, "), "{err}");
        }
        let err = event(json!({"wait_before_status_seconds": 3600}))
            .unwrap()
            .check_timing(heartbeat, kept)
            .unwrap_err();
        assert!(err.0.starts_with("wait_before_status_seconds: "), "{err}");
        assert!(err.0.contains("(3600 s)"), "{err}");
        let err = event(json!({"wait_before_master_seconds": 600, "run_timeout_seconds": 600}))
            .unwrap()
            .check_timing(heartbeat, kept)
            .unwrap_err();
        assert!(err.0.starts_with("wait_before_master_seconds: "), "{err}");
        assert!(
            event(json!({"wait_before_master_seconds": 600, "run_timeout_seconds": 601}))
                .unwrap()
                .check_timing(heartbeat, kept)
                .is_ok()
        );
        // the default timeout must fit too, and a run must end before its items expire
        let long_heartbeat = Duration::from_secs(u64::from(DEFAULT_RUN_TIMEOUT_SECONDS));
        assert!(
            event(json!({}))
                .unwrap()
                .check_timing(long_heartbeat, kept)
                .is_err()
        );
        let one_day = Duration::from_secs(86400);
        let err = event(json!({"run_timeout_seconds": 86400}))
            .unwrap()
            .check_timing(heartbeat, one_day)
            .unwrap_err();
        assert!(err.0.contains("at most 86399"), "{err}");
    }

    #[test]
    fn an_input_check_takes_the_execution_input_as_given() {
        let check = |input: serde_json::Value| {
            InputCheck::from_payload(&json!({"check": {"run_id": "exec-1", "input": input}}))
                .unwrap()
                .and_then(InputCheck::event)
        };
        let event = check(json!({"source_prefix": "in/"})).unwrap();
        assert_eq!(event.run_id.as_deref(), Some("exec-1"));
        assert_eq!(event.source_prefix.as_deref(), Some("in/"));
        assert!(
            check(json!([1]))
                .unwrap_err()
                .0
                .contains("must be a JSON object")
        );
        assert!(
            check(json!("x"))
                .unwrap_err()
                .0
                .contains("must be a JSON object")
        );
        assert!(
            check(json!({"run_id": "other"}))
                .unwrap_err()
                .0
                .starts_with("run_id: ")
        );
        assert!(
            check(json!({"source_prefx": "x/"}))
                .unwrap_err()
                .0
                .contains("source_prefx")
        );
        assert!(InputCheck::from_payload(&json!({"run_id": "r"})).is_none());
        let err = InputCheck::from_payload(&json!({"check": {"run_id": "r"}}))
            .unwrap()
            .unwrap_err();
        assert!(err.0.contains("missing field `input`"), "{err}");
    }

    #[test]
    fn run_ids_follow_execution_name_rules() {
        assert!(RunId::parse("2026-11-25_nightly.run-7").is_ok());
        for bad in ["", "has space", "a#b", "a/b", "x:y", &"n".repeat(81)] {
            let err = RunId::parse(bad).unwrap_err();
            assert!(err.0.contains("run_id"), "{bad}: {err}");
        }
        let err = parse_event::<StatusEvent>(json!({"run_id": "a#b"})).unwrap_err();
        assert!(err.0.contains("'#'"), "{err}");
    }

    #[test]
    fn missing_pieces_are_named() {
        let err = MasterEvent::default().resolve(&defaults()).unwrap_err();
        assert_eq!(err.0, "run_id is missing");
        let no_bucket = RunDefaults {
            source_bucket: None,
            ..defaults()
        };
        let event = MasterEvent {
            run_id: Some("r".into()),
            ..Default::default()
        };
        let err = event.resolve(&no_bucket).unwrap_err();
        assert!(err.0.contains("source_bucket is missing"), "{err}");
    }

    #[test]
    fn a_selection_is_read_from_the_event_and_checked_by_field() {
        let event: MasterEvent = parse_event(json!({
            "run_id": "r", "include": ["**/*.parquet"], "exclude": ["tmp/**"],
            "min_size": 1, "max_size": 1024,
            "modified_after": "2026-11-01T00:00:00Z", "modified_before": "2026-11-28T00:00:00+01:00"
        }))
        .unwrap();
        let (_, spec) = event.resolve(&defaults()).unwrap();
        assert_eq!(spec.selection.include[0].as_str(), "**/*.parquet");
        assert_eq!(spec.selection.exclude[0].as_str(), "tmp/**");
        assert_eq!(
            (spec.selection.min_size, spec.selection.max_size),
            (Some(1), Some(1024))
        );
        assert_eq!(
            spec.selection.modified_before,
            Some(Timestamp::parse_rfc3339("2026-11-27T23:00:00Z").unwrap())
        );
        // patterns say which keys: the stack's default suffixes (.csv) do not narrow them
        assert_eq!(spec.suffixes.as_slice(), [""]);
        assert!(spec.selects(
            "raw/d/a.parquet",
            10,
            Some(Timestamp::parse_rfc3339("2026-11-02T00:00:00Z").unwrap())
        ));
        // suffixes given with patterns: both apply
        let event: MasterEvent =
            parse_event(json!({"run_id": "r", "include": ["**"], "suffixes": [".gz"]})).unwrap();
        assert_eq!(
            event.resolve(&defaults()).unwrap().1.suffixes.as_slice(),
            [".gz"]
        );
        // without patterns, the defaults apply as before
        let event: MasterEvent = parse_event(json!({"run_id": "r", "min_size": 1})).unwrap();
        assert_eq!(
            event.resolve(&defaults()).unwrap().1.suffixes.as_slice(),
            [".csv"]
        );

        for (bad, named) in [
            (json!({"include": []}), "include: an empty list"),
            (
                json!({"storage_class": "COLD"}),
                "storage_class: \"COLD\" is not one of STANDARD, ",
            ),
            (
                json!({"if_destination_exists": "keep"}),
                "if_destination_exists: \"keep\" is not one of",
            ),
            (json!({"kms_key_id": ""}), "kms_key_id: \"\" is empty"),
            (
                json!({"kms_key_id": "alias/my key"}),
                "kms_key_id: \"alias/my key\" contains whitespace",
            ),
            (
                json!({"include": ["a", "b[1]"]}),
                "include[1]: pattern \"b[1]\"",
            ),
            (json!({"exclude": [""]}), "exclude[0]: an empty pattern"),
            (
                json!({"min_size": 5, "max_size": 4}),
                "min_size: 5 is more than max_size 4",
            ),
            (
                json!({"modified_after": "2026-11-28"}),
                "modified_after: \"2026-11-28\" is not an RFC 3339 time",
            ),
            (
                json!({"modified_after": "2026-11-28T00:00:00Z", "modified_before": "2026-11-01T00:00:00Z"}),
                "modified_after: it is not before modified_before",
            ),
        ] {
            let mut event = bad.clone();
            event["run_id"] = json!("r");
            let err = parse_event::<MasterEvent>(event)
                .and_then(|e| e.resolve(&defaults()))
                .unwrap_err();
            assert!(err.0.starts_with(named), "{bad}: {err}");
        }
    }

    #[test]
    fn bad_buckets_and_empty_suffix_lists_are_refused() {
        let event = MasterEvent {
            run_id: Some("r".into()),
            source_bucket: Some("Bad_Bucket".into()),
            ..Default::default()
        };
        assert!(
            event
                .resolve(&defaults())
                .unwrap_err()
                .0
                .contains("not a valid S3 bucket name")
        );
        let event = MasterEvent {
            run_id: Some("r".into()),
            suffixes: Some(vec![]),
            ..Default::default()
        };
        assert!(
            event
                .resolve(&defaults())
                .unwrap_err()
                .0
                .contains("suffix list is empty")
        );
    }

    #[test]
    fn overlapping_source_and_destination_are_refused() {
        for (src, dst) in [
            ("raw/", "raw/refined/"),
            ("", "refined/"),
            ("raw/", "raw/"),
            ("data/raw/", "data/"),
        ] {
            let event = MasterEvent {
                run_id: Some("r".into()),
                source_prefix: Some(src.into()),
                destination_prefix: Some(dst.into()),
                ..Default::default()
            };
            let err = event.resolve(&defaults()).unwrap_err();
            assert!(err.0.contains("overlap"), "{src} -> {dst}: {err}");
        }
        let event = MasterEvent {
            run_id: Some("r".into()),
            source_prefix: Some("".into()),
            destination_bucket: Some("other-bucket".into()),
            ..Default::default()
        };
        assert!(event.resolve(&defaults()).is_ok());
    }

    fn any_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            "\\PC{0,20}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("run_id".to_string()),
                        Just("source_prefix".to_string()),
                        Just("suffixes".to_string()),
                        Just("batch".to_string()),
                        "[a-z_]{1,10}",
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn no_event_makes_parsing_panic(event in any_json()) {
            // Whatever arrives is either a run or an EventError naming what is wrong.
            if let Ok(master) = parse_event::<MasterEvent>(event.clone()) {
                let _ = master.resolve(&defaults());
            } else {
                proptest::prop_assert!(!parse_event::<MasterEvent>(event.clone()).unwrap_err().0.is_empty());
            }
            let _ = parse_event::<SlaveEvent>(event);
        }
    }
}
