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
//! A run with a manifest reads its files from the manifest instead of the listing
//! (`manifest.rs`): positions in the manifest stand for listing positions, and each key
//! is looked up as the listing would have found it.
//!
//! Before the execution does anything, the state machine asks master to check its input
//! (`{"check": ...}`): every field, the timing ones included, that the source and
//! destination can be listed, and every line of a manifest; the check answers the
//! manifest's ETag, which the run then reads only.

mod manifest;

use std::time::SystemTime;

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use aws_sdk_s3::types::EncodingType;
use common::lambda::remaining;
use common::rules::batch::{BatchId, BatchLimits, ListedFile, positioned, split};
use common::rules::events::{
    CheckOutput, InputCheck, MasterEvent, MasterOutput, Pinned, SlaveEvent, parse_event,
};
use common::rules::keys::decode_listed_key;
use common::rules::manifest::{KeyHashes, Position, Repeats, parse_line};
use common::rules::plan::{Plan, would_fail};
use common::rules::run::Location;
use common::rules::select::Timestamp;
use common::store::MasterRecords;
use common::transfer::{RunClients, S3Clients};
use common::{
    Aws, AwsError, Clients, Config, ConfigError, EventError, MasterSettings, RunId, RunSpec, Store,
    StoreError,
};
use futures::{StreamExt, TryStreamExt, stream};
use lambda_runtime::LambdaEvent;
use manifest::{ManifestError, ManifestReader};
use serde_json::Value;
use tracing::info;

/// The most bytes of encoded file names in one batch: a batch is one DynamoDB item, and
/// this keeps it well within the 400 KB an item may have, however long the keys.
const BATCH_NAMES_BYTES: usize = 96 * 1024;
/// Listings of single keys in flight at once: a dry run's destination keys, and the
/// keys a manifest names.
const KEY_LOOKUPS_AT_ONCE: usize = 32;
/// Keys of manifest lines read into one page, as a listing page has at most 1,000 keys;
/// and the most lines read into one page, however few of them name keys the run takes
/// (an inventory's lines of noncurrent versions, say), so that a page always ends soon
/// and the deadline is looked at.
const MANIFEST_PAGE_KEYS: usize = 1000;
const MANIFEST_PAGE_LINES: usize = 100_000;
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
    #[error("reading the manifest failed: {0}")]
    ManifestReading(AwsError),
    #[error("finding a bucket's region failed: {0}")]
    BucketRegion(AwsError),
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
            Error::Listing { .. } | Error::ManifestReading(_) | Error::BucketRegion(_) => {
                "ListingFailed"
            }
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

impl From<ManifestError> for Error {
    fn from(e: ManifestError) -> Self {
        match e {
            ManifestError::Refused(problem) => Error::InvalidEvent(EventError(problem)),
            ManifestError::Failed(source) => Error::ManifestReading(source),
        }
    }
}

pub struct Master {
    s3: S3Clients,
    lambda: aws_sdk_lambda::Client,
    records: MasterRecords,
    config: Config,
    settings: MasterSettings,
}

/// One page of what the run reads (its listing or its manifest), with the files the
/// run selects from it.
struct Page {
    selected: Vec<ListedFile>,
    /// Where each selected file is: its key in a listing, its line's position in a
    /// manifest.
    positions: Vec<String>,
    /// Where the page ends: its last key or line, selected or not; `None` for a page
    /// with nothing in it.
    through: Option<String>,
    /// Keys looked up one by one to make the page (a manifest's); 0 for a listing.
    looked_up: u64,
}

/// Where the next page comes from.
enum Pages {
    Listing {
        start_after: Option<String>,
        token: Option<String>,
        started: bool,
    },
    Manifest(Box<ManifestReader>),
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
        let aws = Aws::from_env(&config, "master").await;
        Ok(Self::with_clients(
            aws.s3(),
            aws.lambda(),
            aws.dynamodb(),
            config,
            settings,
        ))
    }

    pub fn new(clients: &Clients, config: Config, settings: MasterSettings) -> Self {
        Self::with_clients(
            clients.s3.clone(),
            clients.lambda.clone(),
            clients.dynamodb.clone(),
            config,
            settings,
        )
    }

    /// Built from only the clients master uses, so that its binary links no other.
    fn with_clients(
        s3: aws_sdk_s3::Client,
        lambda: aws_sdk_lambda::Client,
        dynamodb: aws_sdk_dynamodb::Client,
        config: Config,
        settings: MasterSettings,
    ) -> Self {
        Master {
            s3: S3Clients::new(s3),
            lambda,
            records: MasterRecords::new(Store::new(dynamodb, &config.table_name, config.run_ttl)),
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
        let checked_etag = event.manifest_etag.clone();
        let (run, spec) = event.resolve(&self.config.defaults)?;
        // A manifest is opened only while the run still reads it, and only as the object
        // the input check read (and the run recorded when it started). A run id used
        // again with another spec is left to `start_run` to refuse by name.
        let mut reader = None;
        if spec.manifest.is_some() {
            let existing = self.records.run(&run).await?;
            let reads = existing.as_ref().is_none_or(|r| {
                !r.listing_complete && r.spec.as_ref().is_none_or(|have| *have == spec)
            });
            if reads {
                let etag = existing
                    .as_ref()
                    .and_then(|r| r.manifest_etag.clone())
                    .or(checked_etag);
                reader = Some(ManifestReader::open(&self.s3, &spec, etag.as_deref()).await?);
            }
        }
        let record = self
            .records
            .start_run(&run, &spec, reader.as_ref().map(|r| r.etag.as_str()))
            .await?;
        if let Some(reader) = &reader
            && record.manifest_etag.as_deref() != Some(reader.etag.as_str())
        {
            // Another call started the run with another object under the manifest's name.
            return Err(EventError(format!(
                "manifest {} was replaced after the run started (its ETag changed); start a \
                 new execution to read the new manifest",
                spec.manifest.as_ref().expect("a reader reads a manifest")
            ))
            .into());
        }
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
        let mut pages = match reader {
            Some(mut reader) => {
                if let Some(after) = &resume.list_after {
                    let position = Position::parse(after).ok_or_else(|| StoreError::Corrupt {
                        run: run.clone(),
                        problem: format!("the manifest position {after:?} is not one"),
                    })?;
                    reader.resume_after(position);
                }
                Pages::Manifest(Box::new(reader))
            }
            // A run with a manifest never lists its prefix: that would take every file
            // under it, not the ones named.
            None if spec.manifest.is_some() => {
                return Err(StoreError::Corrupt {
                    run: run.clone(),
                    problem: "the run reads a manifest that was not opened".into(),
                }
                .into());
            }
            None => Pages::Listing {
                start_after: resume.list_after,
                token: None,
                started: false,
            },
        };
        let clients = self.s3.for_run(&spec).await.map_err(Error::BucketRegion)?;
        let mut page = self.next_page(&spec, &clients, &mut pages).await?;
        while let Some(current) = page {
            // The next page is read while this one is recorded and handed out.
            let next = self.next_page(&spec, &clients, &mut pages);
            let (handed, next) = match &mut plan {
                Some(plan) => {
                    tokio::join!(
                        self.plan_page(&run, &spec, &clients, &current, &mut cursor, plan),
                        next
                    )
                }
                None => tokio::join!(self.hand_page(&run, &spec, &current, &mut cursor), next),
            };
            handed?;
            // Near the deadline, a next page is left to the next call, even one that
            // could not be read.
            if !matches!(next, Ok(None))
                && deadline.is_some_and(|d| remaining(d) < self.settings.deadline_margin)
            {
                info!(run_id = %run, selected = cursor.selected, "deadline near; returning a continuation");
                return Ok(output(&cursor, false));
            }
            page = next?;
        }
        self.records.complete_listing(&run).await?;
        info!(run_id = %run, selected = cursor.selected, invocations = cursor.invocations, "listing complete");
        Ok(output(&cursor, true))
    }

    /// The next page of the listing or the manifest; `None` after the last.
    async fn next_page(
        &self,
        spec: &RunSpec,
        clients: &RunClients,
        pages: &mut Pages,
    ) -> Result<Option<Page>, Error> {
        match pages {
            Pages::Listing {
                start_after,
                token,
                started,
            } => {
                if *started && token.is_none() {
                    return Ok(None);
                }
                *started = true;
                let (page, next_token) = self
                    .list(&clients.source, spec, start_after.take(), token.take())
                    .await?;
                *token = next_token;
                Ok(Some(page))
            }
            Pages::Manifest(reader) => self.manifest_page(spec, clients, reader).await,
        }
    }

    /// The next up to [`MANIFEST_PAGE_KEYS`] keys of the manifest, each key looked up
    /// as a listing of it finds it, so that its size, ETag, storage class and time are
    /// what the run's rules and copies see for a listed file; a key with no object is
    /// recorded to fail ([`ListedFile::not_found`]). `None` after the last line.
    async fn manifest_page(
        &self,
        spec: &RunSpec,
        clients: &RunClients,
        reader: &mut ManifestReader,
    ) -> Result<Option<Page>, Error> {
        let mut named = Vec::new();
        let (mut through, mut lines) = (None, 0);
        while named.len() < MANIFEST_PAGE_KEYS && lines < MANIFEST_PAGE_LINES {
            lines += 1;
            let Some(line) = reader.next_line().await? else {
                break;
            };
            let end = line.end.encode();
            if let Some(key) = manifest_key(reader, &line, &spec.source)? {
                named.push((key, end.clone()));
            }
            through = Some(end);
        }
        let Some(through) = through else {
            return Ok(None);
        };
        let looked_up = named.len() as u64;
        let found = self
            .look_up(
                &clients.source,
                &spec.source,
                named.iter().map(|(key, _)| key.as_str()),
            )
            .await?;
        let (mut selected, mut positions) = (Vec::new(), Vec::new());
        for ((key, position), object) in named.into_iter().zip(found) {
            let file = match object {
                // A key with no object is the run's to fail only if its name alone says
                // the run would take it.
                None if !spec.selects_key(&key) => continue,
                None => ListedFile::not_found(key),
                Some(object) => {
                    let (file, last_modified) = listed_file(key, object);
                    if !spec.selects(&file.key, file.size, last_modified) {
                        continue;
                    }
                    file
                }
            };
            selected.push(file);
            positions.push(position);
        }
        Ok(Some(Page {
            selected,
            positions,
            through: Some(through),
            looked_up,
        }))
    }

    /// Checks an execution's input before the execution uses any of it: every field
    /// as a run would read it, and that the source and destination can be listed. A
    /// location that does not exist, or that this stack may not list, is refused at
    /// once with `InvalidEvent`, not retried. Records nothing.
    #[tracing::instrument(skip_all)]
    pub async fn check(&self, check: InputCheck) -> Result<CheckOutput, Error> {
        let event = check.event()?;
        event.check_timing(self.config.task_heartbeat, self.config.run_ttl)?;
        let pinned = event.manifest_etag.clone();
        let (run, spec) = event.resolve(&self.config.defaults)?;
        let clients = self.s3.for_run(&spec).await.map_err(Error::BucketRegion)?;
        for (field, location, client) in [
            ("source", &spec.source, &clients.source),
            ("destination", &spec.destination, &clients.destination),
        ] {
            let listed = client
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
        let (manifest_keys, manifest_etag) = match &spec.manifest {
            Some(_) => {
                let (keys, etag) = self.check_manifest(&spec, pinned.as_deref()).await?;
                (Some(keys), Some(etag))
            }
            None => (None, None),
        };
        info!(run_id = %run, source = %spec.source, destination = %spec.destination, "input checked");
        Ok(CheckOutput {
            run_id: run,
            source: spec.source.to_string(),
            destination: spec.destination.to_string(),
            manifest_keys,
            pinned: Pinned { manifest_etag },
        })
    }

    /// Reads the run's whole manifest, line by line, before anything moves: a line that
    /// is not readable, names another bucket or a key outside the source prefix, or
    /// names a key an earlier line named is refused (`InvalidEvent`, with where it is).
    /// A key named twice is looked for in two readings, the second only when two keys
    /// share a hash ([`KeyHashes`]), so memory stays at 8 bytes a key. Returns how many
    /// keys the manifest names, and its ETag, which the run then reads only.
    async fn check_manifest(
        &self,
        spec: &RunSpec,
        etag: Option<&str>,
    ) -> Result<(u64, String), Error> {
        let mut reader = ManifestReader::open(&self.s3, spec, etag).await?;
        let mut hashes = KeyHashes::default();
        let mut keys = 0u64;
        while let Some(line) = reader.next_line().await? {
            if let Some(key) = manifest_key(&reader, &line, &spec.source)? {
                hashes.add(&key);
                keys += 1;
            }
        }
        let repeated = hashes.repeated();
        if !repeated.is_empty() {
            let mut again = ManifestReader::open(&self.s3, spec, Some(&reader.etag)).await?;
            let mut repeats = Repeats::new(repeated);
            while let Some(line) = again.next_line().await? {
                let Some(key) = manifest_key(&again, &line, &spec.source)? else {
                    continue;
                };
                if let Some((object, place)) = repeats.first_named(&key, &line.object, &line.place)
                {
                    let first = if object == line.object {
                        place
                    } else {
                        format!("{object} {place}")
                    };
                    return Err(EventError(format!(
                        "manifest {} names the key {:?} again ({first} named it first); a \
                         manifest names each key once",
                        line.named(),
                        common::rules::keys::shown(&key)
                    ))
                    .into());
                }
            }
        }
        Ok((keys, reader.etag))
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

    /// One page of the listing after `start_after` (or at `token`), and the token of
    /// the next. Keys are asked for URL-encoded, so that a key with characters XML
    /// cannot carry does not make the page unreadable.
    async fn list(
        &self,
        client: &aws_sdk_s3::Client,
        spec: &RunSpec,
        start_after: Option<String>,
        token: Option<String>,
    ) -> Result<(Page, Option<String>), Error> {
        let out = client
            .list_objects_v2()
            .bucket(&spec.source.bucket)
            .prefix(&spec.source.prefix)
            .encoding_type(EncodingType::Url)
            .set_start_after(start_after)
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| self.listing_error(&spec.source, e))?;
        let mut through = None;
        let (mut selected, mut positions) = (Vec::new(), Vec::new());
        for object in out.contents.unwrap_or_default() {
            let Some(encoded) = &object.key else { continue };
            let key = decode_listed_key(encoded).map_err(|problem| Error::Listing {
                location: spec.source.clone(),
                source: AwsError::permanent("ListObjectsV2", problem),
            })?;
            let (file, last_modified) = listed_file(key.clone(), object);
            if spec.selects(&key, file.size, last_modified) {
                selected.push(file);
                positions.push(key.clone());
            }
            through = Some(key);
        }
        let next_token = out
            .next_continuation_token
            .filter(|_| out.is_truncated == Some(true));
        Ok((
            Page {
                selected,
                positions,
                through,
                looked_up: 0,
            },
            next_token,
        ))
    }

    /// A dry run's page: its selected files are counted in the plan, each with what its
    /// destination holds, and the plan is recorded with the position it covers;
    /// nothing else is recorded or invoked.
    async fn plan_page(
        &self,
        run: &RunId,
        spec: &RunSpec,
        clients: &RunClients,
        page: &Page,
        cursor: &mut Cursor,
        plan: &mut Plan,
    ) -> Result<(), Error> {
        let Some(through) = &page.through else {
            return Ok(());
        };
        let destinations = self
            .destinations(&clients.destination, spec, &page.selected)
            .await?;
        let mut next = plan.clone();
        next.key_lookups += page.looked_up;
        for (file, found) in page.selected.iter().zip(&destinations) {
            next.add(spec, file, found.as_ref().map(|(s, e)| (*s, e.as_str())));
        }
        self.records
            .record_plan_page(run, cursor.recorded_through.as_deref(), through, &next)
            .await?;
        *plan = next;
        cursor.recorded_through = Some(through.clone());
        cursor.selected = plan.files;
        info!(run_id = %run, through = %through, files = plan.files, "page planned");
        Ok(())
    }

    /// What each file's destination holds (size and ETag), `None` where nothing is
    /// there, as a dry run needs to say what the run would skip, fail or overwrite. A
    /// file that would fail anyway is not looked up.
    async fn destinations(
        &self,
        client: &aws_sdk_s3::Client,
        spec: &RunSpec,
        files: &[ListedFile],
    ) -> Result<Vec<Option<(i64, String)>>, Error> {
        let keys: Vec<Option<String>> = files
            .iter()
            .map(|file| {
                would_fail(spec, file)
                    .is_none()
                    .then(|| spec.destination_key(&file.key).ok())
                    .flatten()
            })
            .collect();
        let found = self
            .look_up(
                client,
                &spec.destination,
                keys.iter().map(|k| k.as_deref().unwrap_or("")),
            )
            .await?;
        Ok(keys
            .iter()
            .zip(found)
            .map(|(key, object)| {
                key.as_ref()?;
                let object = object?;
                Some((object.size.unwrap_or(-1), object.e_tag.unwrap_or_default()))
            })
            .collect())
    }

    /// Each key's object in `location`'s bucket as a listing finds it, `None` where
    /// there is none (and for an empty key, which is not looked up): one
    /// `ListObjectsV2` of the key as a prefix per key, [`KEY_LOOKUPS_AT_ONCE`] at once.
    /// A listing needs only the `s3:ListBucket` the input check already has, where a
    /// `HeadObject` of a missing key would answer 403 to a caller that may not list the
    /// whole bucket.
    async fn look_up<'k>(
        &self,
        client: &aws_sdk_s3::Client,
        location: &Location,
        keys: impl Iterator<Item = &'k str>,
    ) -> Result<Vec<Option<aws_sdk_s3::types::Object>>, Error> {
        stream::iter(keys)
            .map(|key| async move {
                if key.is_empty() {
                    return Ok(None);
                }
                let listed = client
                    .list_objects_v2()
                    .bucket(&location.bucket)
                    .prefix(key)
                    .max_keys(1)
                    .encoding_type(EncodingType::Url)
                    .send()
                    .await
                    .map_err(|e| self.listing_error(location, e))?;
                // The first key under the prefix is the key itself, if it exists.
                Ok(listed
                    .contents
                    .unwrap_or_default()
                    .into_iter()
                    .next()
                    .filter(|object| {
                        object
                            .key
                            .as_deref()
                            .and_then(|encoded| decode_listed_key(encoded).ok())
                            .is_some_and(|found| found == key)
                    }))
            })
            .buffered(KEY_LOOKUPS_AT_ONCE)
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
        let Some(through) = &page.through else {
            return Ok(());
        };
        let limits = BatchLimits {
            files: self.settings.batch_size,
            names_bytes: BATCH_NAMES_BYTES,
            object_bytes: self.settings.batch_bytes,
        };
        let batches = positioned(split(&page.selected, limits), &page.positions);
        self.records
            .record_page(run, cursor.recorded_through.as_deref(), &batches, through)
            .await?;
        cursor.recorded_through = Some(through.clone());
        cursor.selected += page.selected.len() as u64;

        let ids: Vec<BatchId> = batches.into_iter().map(|batch| batch.id).collect();
        let invocations = self.invoke_slaves(run, ids.iter()).await?;
        self.records.advance_handed(run, through).await?;
        cursor.invocations += invocations;
        info!(run_id = %run, source = %spec.source, through = %through, files = page.selected.len(),
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

/// The key a manifest line names, if any; a line refused is `InvalidEvent` naming where.
fn manifest_key(
    reader: &ManifestReader,
    line: &manifest::Line,
    source: &Location,
) -> Result<Option<String>, Error> {
    parse_line(reader.format(), &line.text, source)
        .map_err(|problem| EventError(format!("manifest {} {problem}", line.named())).into())
}

/// A file as a listing names it, and when it was last modified, for the run's rules.
fn listed_file(key: String, object: aws_sdk_s3::types::Object) -> (ListedFile, Option<Timestamp>) {
    let last_modified = object
        .last_modified
        .and_then(|t| t.to_millis().ok())
        .map(Timestamp);
    let file = ListedFile {
        key,
        size: object.size.unwrap_or(0).max(0) as u64,
        etag: object.e_tag.unwrap_or_default(),
        storage_class: object
            .storage_class
            .map(|class| class.as_str().to_string())
            .filter(|class| class != "STANDARD"),
    };
    (file, last_modified)
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
