//! `master`: lists a run's source prefix, records every selected file as `started` in
//! batches, and hands each batch to `slave` in an asynchronous invocation.
//!
//! Listing progress lives on the run item, not in the event: `recorded_through` is the
//! listing position up to which files are recorded in batches and counted,
//! `handed_through` the position up to which those batches have been handed to slaves.
//! A call resumes from there: batches recorded but not handed out are read back from
//! the table and handed out, and listing goes on after `recorded_through`. A page's
//! batches are recorded in the same transaction as the position they reach, on
//! condition that the position has not moved, so a retried, continued or concurrent call
//! never records a file twice (which could reset a completed file to `started` or count
//! it twice) and never leaves a recorded file without a slave.
//!
//! Before the execution does anything, the state machine asks master to check its input
//! (`{"check": ...}`): every field, the timing ones included, and that the source and
//! destination can be listed.

use std::time::SystemTime;

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use aws_sdk_s3::types::EncodingType;
use common::lambda::remaining;
use common::rules::batch::{BatchId, BatchLimits, ListedFile, split};
use common::rules::events::{
    CheckOutput, InputCheck, MasterEvent, MasterOutput, SlaveEvent, parse_event,
};
use common::rules::keys::decode_listed_key;
use common::rules::plan::{Plan, would_fail};
use common::rules::run::Location;
use common::rules::select::Timestamp;
use common::store::MasterRecords;
use common::{
    AwsError, Clients, Config, ConfigError, EventError, MasterSettings, RunId, RunSpec, Store,
    StoreError,
};
use futures::{StreamExt, TryStreamExt, stream};
use lambda_runtime::LambdaEvent;
use serde_json::Value;
use tracing::info;

/// The most bytes of encoded file names in one batch: a batch is one DynamoDB item, and
/// this keeps it well within the 400 KB an item may have, however long the keys.
const BATCH_NAMES_BYTES: usize = 96 * 1024;
/// A dry run's listings of destination keys in flight at once.
const DESTINATION_CHECKS_AT_ONCE: usize = 32;
/// S3 error codes that no retry will change: the bucket is not there, or the functions
/// may not list it.
const REFUSED_LISTING: &[&str] = &[
    "NoSuchBucket",
    "AccessDenied",
    "AllAccessDisabled",
    "PermanentRedirect",
    "InvalidBucketName",
    "AuthorizationHeaderMalformed",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    InvalidEvent(#[from] EventError),
    #[error("listing {location} failed: {source}")]
    Listing {
        location: Location,
        source: AwsError,
    },
    #[error("{location} cannot be listed: {source}")]
    ListingRefused {
        location: Location,
        source: AwsError,
    },
    #[error("status table: {0}")]
    Store(#[from] StoreError),
    #[error("invoking the slave function failed: {0}")]
    Invoke(AwsError),
}

impl Error {
    /// The stable `errorType` Step Functions sees.
    pub fn error_type(&self) -> &'static str {
        match self {
            Error::Config(_) => "ConfigError",
            Error::InvalidEvent(_) | Error::Store(StoreError::SpecMismatch { .. }) => {
                "InvalidEvent"
            }
            Error::Listing { .. } => "ListingFailed",
            Error::ListingRefused { .. } => "ListingRefused",
            Error::Store(StoreError::ProgressConflict { .. }) => "ListingConflict",
            Error::Store(e) => e.error_type(),
            Error::Invoke(_) => "SlaveInvokeFailed",
        }
    }
}

/// Every `errorType` this function can raise, for checking the state machine against.
pub const ERROR_TYPES: &[&str] = &[
    "ConfigError",
    "InvalidEvent",
    "ListingFailed",
    "ListingRefused",
    "ListingConflict",
    "StatusTableError",
    "StatusTableRefused",
    "SlaveInvokeFailed",
];

common::diagnostic!(Error);

pub struct Master {
    s3: aws_sdk_s3::Client,
    lambda: aws_sdk_lambda::Client,
    records: MasterRecords,
    config: Config,
    settings: MasterSettings,
}

/// One page of the listing, with the files the run selects from it.
struct Page {
    selected: Vec<ListedFile>,
    last_key: Option<String>,
    next_token: Option<String>,
}

/// Where this call has got to.
struct Cursor {
    recorded_through: Option<String>,
    selected: u64,
    invocations: u64,
}

impl Master {
    /// Reads the configuration and builds the clients, once per cold start.
    pub async fn from_env() -> Result<Self, ConfigError> {
        let config = Config::from_env()?;
        let settings = MasterSettings::from_env()?;
        let clients = Clients::from_env(&config, "master").await;
        Ok(Self::new(&clients, config, settings))
    }

    pub fn new(clients: &Clients, config: Config, settings: MasterSettings) -> Self {
        Master {
            s3: clients.s3.clone(),
            lambda: clients.lambda.clone(),
            records: MasterRecords::new(Store::new(
                clients.dynamodb.clone(),
                &config.table_name,
                config.run_ttl,
            )),
            config,
            settings,
        }
    }

    /// Handles one event. With a `deadline`, stops between pages once less than the
    /// configured margin is left and answers `listing_complete: false`; calling again
    /// with the same event resumes.
    #[tracing::instrument(skip_all)]
    pub async fn handle(
        &self,
        payload: Value,
        deadline: Option<SystemTime>,
    ) -> Result<MasterOutput, Error> {
        let event: MasterEvent = parse_event(payload)?;
        event.check_timing(self.config.task_heartbeat, self.config.run_ttl)?;
        let (run, spec) = event.resolve(&self.config.defaults)?;
        let record = self.records.start_run(&run, &spec).await?;
        let mut cursor = Cursor {
            recorded_through: record.recorded_through.clone(),
            selected: record.selected,
            invocations: 0,
        };
        let output = |cursor: &Cursor, listing_complete| MasterOutput {
            run_id: run.clone(),
            listing_complete,
            selected: cursor.selected,
            invocations: cursor.invocations,
        };
        let Some(resume) = record.resume() else {
            return Ok(output(&cursor, true));
        };
        info!(run_id = %run, source = %spec.source, destination = %spec.destination,
              resume_after = resume.list_after.as_deref().unwrap_or(""), "listing");
        if let Some(pending) = &resume.pending {
            // An earlier call stopped between recording batches and handing them out.
            let batches = self.records.pending_batches(&run, pending).await?;
            cursor.invocations += self.invoke_slaves(&run, batches.iter()).await?;
            self.records.advance_handed(&run, &pending.through).await?;
        }

        let mut plan = spec
            .dry_run
            .then(|| record.plan.clone().unwrap_or_default());
        let mut page = self.list(&spec, resume.list_after, None).await?;
        loop {
            // The next page is fetched while this one is recorded and handed out.
            let next = async {
                match &page.next_token {
                    Some(token) => Some(self.list(&spec, None, Some(token.clone())).await),
                    None => None,
                }
            };
            let (handed, next) = match &mut plan {
                Some(plan) => {
                    tokio::join!(self.plan_page(&run, &spec, &page, &mut cursor, plan), next)
                }
                None => tokio::join!(self.hand_page(&run, &spec, &page, &mut cursor), next),
            };
            handed?;
            let Some(next) = next else {
                self.records.complete_listing(&run).await?;
                info!(run_id = %run, selected = cursor.selected, invocations = cursor.invocations, "listing complete");
                return Ok(output(&cursor, true));
            };
            if deadline.is_some_and(|d| remaining(d) < self.settings.deadline_margin) {
                info!(run_id = %run, selected = cursor.selected, "deadline near; returning a continuation");
                return Ok(output(&cursor, false));
            }
            page = next?;
        }
    }

    /// Checks an execution's input before the execution uses any of it: every field
    /// as a run would read it, and that the source and destination can be listed. A
    /// location that does not exist, or that this stack may not list, is refused at
    /// once with `InvalidEvent`, not retried. Records nothing.
    #[tracing::instrument(skip_all)]
    pub async fn check(&self, check: InputCheck) -> Result<CheckOutput, Error> {
        let event = check.event()?;
        event.check_timing(self.config.task_heartbeat, self.config.run_ttl)?;
        let (run, spec) = event.resolve(&self.config.defaults)?;
        for (field, location) in [("source", &spec.source), ("destination", &spec.destination)] {
            let listed = self
                .s3
                .list_objects_v2()
                .bucket(&location.bucket)
                .prefix(&location.prefix)
                .max_keys(1)
                .encoding_type(EncodingType::Url)
                .send()
                .await;
            if let Err(e) = listed {
                return Err(match self.listing_error(location, e) {
                    Error::ListingRefused { location, source } => Error::InvalidEvent(EventError(
                        format!("{field} {location} cannot be listed: {}", source.message),
                    )),
                    other => other,
                });
            }
        }
        info!(run_id = %run, source = %spec.source, destination = %spec.destination, "input checked");
        Ok(CheckOutput {
            run_id: run,
            source: spec.source.to_string(),
            destination: spec.destination.to_string(),
        })
    }

    fn listing_error(
        &self,
        location: &Location,
        err: aws_sdk_s3::error::SdkError<
            aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Error,
            aws_sdk_s3::config::http::HttpResponse,
        >,
    ) -> Error {
        listing_error(location.clone(), AwsError::from_sdk("ListObjectsV2", err))
    }

    /// One page of the listing after `start_after` (or at `token`). Keys are asked for
    /// URL-encoded, so that a key with characters XML cannot carry does not make the page
    /// unreadable.
    async fn list(
        &self,
        spec: &RunSpec,
        start_after: Option<String>,
        token: Option<String>,
    ) -> Result<Page, Error> {
        let out = self
            .s3
            .list_objects_v2()
            .bucket(&spec.source.bucket)
            .prefix(&spec.source.prefix)
            .encoding_type(EncodingType::Url)
            .set_start_after(start_after)
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| self.listing_error(&spec.source, e))?;
        let objects = out.contents.unwrap_or_default();
        let mut last_key = None;
        let mut selected = Vec::new();
        for object in objects {
            let Some(encoded) = object.key else { continue };
            let key = decode_listed_key(&encoded).map_err(|problem| Error::Listing {
                location: spec.source.clone(),
                source: AwsError::permanent("ListObjectsV2", problem),
            })?;
            let size = object.size.unwrap_or(0).max(0) as u64;
            let last_modified = object
                .last_modified
                .and_then(|t| t.to_millis().ok())
                .map(Timestamp);
            if spec.selects(&key, size, last_modified) {
                selected.push(ListedFile {
                    key: key.clone(),
                    size,
                    etag: object.e_tag.unwrap_or_default(),
                    storage_class: object
                        .storage_class
                        .map(|class| class.as_str().to_string())
                        .filter(|class| class != "STANDARD"),
                });
            }
            last_key = Some(key);
        }
        Ok(Page {
            selected,
            last_key,
            next_token: out
                .next_continuation_token
                .filter(|_| out.is_truncated == Some(true)),
        })
    }

    /// A dry run's page: its selected files are counted in the plan, each with what its
    /// destination holds, and the plan is recorded with the listing position it covers;
    /// nothing else is recorded or invoked.
    async fn plan_page(
        &self,
        run: &RunId,
        spec: &RunSpec,
        page: &Page,
        cursor: &mut Cursor,
        plan: &mut Plan,
    ) -> Result<(), Error> {
        let Some(last_key) = &page.last_key else {
            return Ok(());
        };
        let destinations = self.destinations(spec, &page.selected).await?;
        let mut next = plan.clone();
        for (file, found) in page.selected.iter().zip(&destinations) {
            next.add(spec, file, found.as_ref().map(|(s, e)| (*s, e.as_str())));
        }
        self.records
            .record_plan_page(run, cursor.recorded_through.as_deref(), last_key, &next)
            .await?;
        *plan = next;
        cursor.recorded_through = Some(last_key.clone());
        cursor.selected = plan.files;
        info!(run_id = %run, through = %last_key, files = plan.files, "page planned");
        Ok(())
    }

    /// What each file's destination holds (size and ETag), `None` where nothing is
    /// there, as a dry run needs to say what the run would skip, fail or overwrite: one
    /// `ListObjectsV2` of the destination key as a prefix per file that the listing
    /// alone does not fail. A listing needs only the `s3:ListBucket` on the destination
    /// prefix that the input check already has, where a `HeadObject` of a missing key
    /// would answer 403 to a caller that may not list the whole bucket.
    async fn destinations(
        &self,
        spec: &RunSpec,
        files: &[ListedFile],
    ) -> Result<Vec<Option<(i64, String)>>, Error> {
        stream::iter(files)
            .map(|file| async move {
                if would_fail(spec, file).is_some() {
                    return Ok(None);
                }
                let Ok(key) = spec.destination_key(&file.key) else {
                    return Ok(None);
                };
                let listed = self
                    .s3
                    .list_objects_v2()
                    .bucket(&spec.destination.bucket)
                    .prefix(&key)
                    .max_keys(1)
                    .encoding_type(EncodingType::Url)
                    .send()
                    .await
                    .map_err(|e| self.listing_error(&spec.destination, e))?;
                // The first key under the prefix is the key itself, if it exists.
                Ok(listed.contents().first().and_then(|object| {
                    let found = decode_listed_key(object.key()?).ok()?;
                    (found == key).then(|| {
                        (
                            object.size.unwrap_or(-1),
                            object.e_tag.clone().unwrap_or_default(),
                        )
                    })
                }))
            })
            .buffered(DESTINATION_CHECKS_AT_ONCE)
            .try_collect()
            .await
    }

    /// Records the page's selected files in batches, then hands each batch to a slave.
    async fn hand_page(
        &self,
        run: &RunId,
        spec: &RunSpec,
        page: &Page,
        cursor: &mut Cursor,
    ) -> Result<(), Error> {
        let Some(last_key) = &page.last_key else {
            return Ok(());
        };
        let limits = BatchLimits {
            files: self.settings.batch_size,
            names_bytes: BATCH_NAMES_BYTES,
            object_bytes: self.settings.batch_bytes,
        };
        let batches = split(&page.selected, limits);
        self.records
            .record_page(run, cursor.recorded_through.as_deref(), &batches, last_key)
            .await?;
        cursor.recorded_through = Some(last_key.clone());
        cursor.selected += page.selected.len() as u64;

        let ids: Vec<BatchId> = batches.iter().map(|files| BatchId::of(&files[0])).collect();
        let invocations = self.invoke_slaves(run, ids.iter()).await?;
        self.records.advance_handed(run, last_key).await?;
        cursor.invocations += invocations;
        info!(run_id = %run, source = %spec.source, through = %last_key, files = page.selected.len(),
              invocations, "page handed");
        Ok(())
    }

    /// Invokes slave asynchronously once per batch, `MAX_INVOCATIONS_IN_FLIGHT` at once;
    /// returns how many invocations were made.
    async fn invoke_slaves<'a>(
        &self,
        run: &RunId,
        batches: impl Iterator<Item = &'a BatchId>,
    ) -> Result<u64, Error> {
        let mut count = 0;
        stream::iter(batches)
            .map(|batch| {
                count += 1;
                self.invoke_slave(run, batch)
            })
            .buffer_unordered(self.settings.max_invocations_in_flight)
            .try_collect::<()>()
            .await?;
        Ok(count)
    }

    async fn invoke_slave(&self, run: &RunId, batch: &BatchId) -> Result<(), Error> {
        let event = SlaveEvent {
            run_id: run.clone(),
            batch: batch.clone(),
            handed_on: None,
        };
        let payload = serde_json::to_vec(&event).expect("a slave event always serializes");
        self.lambda
            .invoke()
            .function_name(&self.settings.slave_function)
            .invocation_type(InvocationType::Event)
            .payload(Blob::new(payload))
            .send()
            .await
            .map_err(|e| Error::Invoke(AwsError::from_sdk("Invoke", e)))?;
        Ok(())
    }
}

/// A listing that failed: refused for good when no retry will change the answer (the
/// bucket is not there, or the functions may not list it), and otherwise worth retrying.
fn listing_error(location: Location, source: AwsError) -> Error {
    if REFUSED_LISTING.iter().any(|code| source.code_is(code)) {
        Error::ListingRefused { location, source }
    } else {
        Error::Listing { location, source }
    }
}

/// The Lambda handler: an input check or a run request. A configuration error read at
/// cold start is every invocation's answer.
pub async fn handle(
    master: &Result<Master, ConfigError>,
    event: LambdaEvent<Value>,
) -> Result<Value, Error> {
    let master = common::lambda::configured::<_, Error>(master)?;
    let answer = match InputCheck::from_payload(&event.payload) {
        Some(check) => serde_json::to_value(master.check(check?).await?),
        None => serde_json::to_value(
            master
                .handle(event.payload, common::lambda::deadline(&event.context))
                .await?,
        ),
    };
    Ok(answer.expect("answers always serialize"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_is_refused_for_good_only_when_no_retry_can_change_it() {
        let location = Location::new("bucket", "raw/").unwrap();
        let answer = |code: &str, transient| AwsError {
            operation: "ListObjectsV2",
            code: Some(code.into()),
            message: code.into(),
            transient,
        };
        for code in ["NoSuchBucket", "AccessDenied", "PermanentRedirect"] {
            let err = listing_error(location.clone(), answer(code, false));
            assert_eq!(err.error_type(), "ListingRefused", "{code}");
        }
        for code in ["SlowDown", "InternalError"] {
            let err = listing_error(location.clone(), answer(code, true));
            assert_eq!(err.error_type(), "ListingFailed", "{code}");
        }
    }

    #[test]
    fn every_error_type_is_listed() {
        let run = RunId::parse("r").unwrap();
        let samples = [
            Error::Config(ConfigError {
                variable: "V",
                problem: "p".into(),
            }),
            Error::InvalidEvent(EventError("e".into())),
            Error::Store(StoreError::SpecMismatch {
                run: run.clone(),
                existing: "x".into(),
            }),
            Error::Listing {
                location: Location::new("bucket", "p/").unwrap(),
                source: AwsError::permanent("Op", "m"),
            },
            Error::ListingRefused {
                location: Location::new("bucket", "p/").unwrap(),
                source: AwsError::permanent("Op", "m"),
            },
            Error::Store(StoreError::ProgressConflict { run }),
            Error::Store(StoreError::Aws(AwsError::permanent("Op", "m"))),
            Error::Store(StoreError::Aws(AwsError {
                transient: true,
                ..AwsError::permanent("Op", "m")
            })),
            Error::Invoke(AwsError::permanent("Op", "m")),
        ];
        let seen: std::collections::BTreeSet<_> = samples.iter().map(Error::error_type).collect();
        let listed: std::collections::BTreeSet<_> = ERROR_TYPES.iter().copied().collect();
        assert_eq!(seen, listed);
    }
}
