//! A dry run's plan: what a run would move, in which storage classes, what would fail
//! and why, and what the real run would cost at list prices.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::rules::batch::ListedFile;
use crate::rules::copy::{IfExists, Refused, refused_copy};
use crate::rules::keys::too_long;
use crate::rules::run::RunSpec;

/// List prices (us-east-1, on demand) behind the estimate; README "Cost per million files".
const COPY_REQUEST_USD: f64 = 0.005 / 1000.0;
/// DynamoDB, Lambda invocations and compute per file, as measured for 100-file batches.
const BOOKKEEPING_PER_FILE_USD: f64 = 0.17 / 1_000_000.0;
/// The slave's defaults: objects from this size are copied in parts of this size.
const MULTIPART_THRESHOLD: u64 = 256 * 1024 * 1024;
const PART_SIZE: u64 = 64 * 1024 * 1024;
/// Files per batch (master's default), each batch one `DeleteObjects`.
const FILES_PER_BATCH: u64 = 100;

/// Files and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub files: u64,
    pub bytes: u64,
}

/// What a run would do, counted as its listing goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Files that would move.
    pub files: u64,
    pub bytes: u64,
    /// Files and bytes that would move, by the storage class their copies would have.
    pub by_storage_class: BTreeMap<String, Totals>,
    /// Files that would fail, by why.
    pub would_fail: BTreeMap<String, u64>,
    /// S3 requests that copying in parts would add (`CreateMultipartUpload`, one
    /// `UploadPartCopy` per part, `CompleteMultipartUpload`).
    pub part_requests: u64,
    /// Files whose destination holds another object and would be left in place
    /// (`if_destination_exists: skip`).
    #[serde(default)]
    pub would_skip: u64,
    /// Files that would move over another object at their destination
    /// (`if_destination_exists: overwrite`); counted among the files that would move.
    #[serde(default)]
    pub would_overwrite: u64,
    /// Keys a manifest names, each looked up with one listing request by the real run.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub key_lookups: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Why a file whose destination holds another object would fail
/// (`if_destination_exists: fail`).
pub const DESTINATION_EXISTS: &str =
    "the destination exists and the run may not overwrite it (if_destination_exists: fail)";

/// Why a listed file would fail, if the listing alone can tell.
pub fn would_fail(spec: &RunSpec, file: &ListedFile) -> Option<&'static str> {
    if file.is_not_found() {
        return Some(crate::rules::manifest::NOT_FOUND);
    }
    let destination = spec.destination_key(&file.key).ok()?;
    if too_long(&destination).is_some() {
        return Some("the destination key would be longer than the 1,024 bytes S3 allows");
    }
    match file.storage_class.as_deref() {
        Some("GLACIER" | "DEEP_ARCHIVE") => {
            Some("archived: S3 copies only restored objects (restore them first)")
        }
        _ => None,
    }
}

impl Plan {
    /// Counts one listed file the run selects; `destination` is its destination's size
    /// and ETag where an object is there (`None`: nothing), as master's listing of its key
    /// found it.
    /// A destination that already holds the listed object (an earlier run's copy) is no
    /// obstacle: the real run recognises it and moves the file.
    pub fn add(&mut self, spec: &RunSpec, file: &ListedFile, destination: Option<(i64, &str)>) {
        if let Some(reason) = would_fail(spec, file) {
            *self.would_fail.entry(reason.to_string()).or_default() += 1;
            return;
        }
        if destination.is_some() && refused_copy(file, None, destination) == Refused::Occupied {
            match spec.if_destination_exists {
                IfExists::Skip => {
                    self.would_skip += 1;
                    return;
                }
                IfExists::Fail => {
                    *self
                        .would_fail
                        .entry(DESTINATION_EXISTS.to_string())
                        .or_default() += 1;
                    return;
                }
                IfExists::Overwrite => self.would_overwrite += 1,
            }
        }
        self.files += 1;
        self.bytes += file.size;
        let class = crate::rules::copy::destination_class(
            spec.storage_class.as_deref(),
            file.storage_class.as_deref(),
        )
        .unwrap_or("STANDARD");
        let totals = self.by_storage_class.entry(class.to_string()).or_default();
        totals.files += 1;
        totals.bytes += file.size;
        if file.size >= MULTIPART_THRESHOLD {
            self.part_requests += file.size.div_ceil(PART_SIZE) + 2;
        }
    }

    /// What the real run would cost at list prices, in US dollars: a `CopyObject` per
    /// file (or the requests of a copy in parts), a `DeleteObjects` per batch, a listing
    /// request per 1,000 keys (and one per key a manifest names), and the status table
    /// and Lambda time per file. Storage and data transfer (none within a region) are
    /// not included.
    pub fn estimated_cost_usd(&self) -> f64 {
        let requests = self.files
            + self.files.div_ceil(FILES_PER_BATCH)
            + self.files.div_ceil(1000)
            + self.key_lookups
            + self.part_requests;
        let usd = requests as f64 * COPY_REQUEST_USD + self.files as f64 * BOOKKEEPING_PER_FILE_USD;
        (usd * 100.0).round() / 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::run::{Location, Suffixes};

    fn spec() -> RunSpec {
        RunSpec::new(
            Location::new("bucket", "raw/").unwrap(),
            Location::new("bucket", "refined/").unwrap(),
            Suffixes::every_key(),
        )
        .unwrap()
    }

    fn file(key: &str, size: u64, class: Option<&str>) -> ListedFile {
        ListedFile {
            key: key.into(),
            size,
            etag: "\"e\"".into(),
            storage_class: class.map(String::from),
        }
    }

    #[test]
    fn a_plan_counts_what_would_move_by_class_and_what_would_fail_by_why() {
        let mut plan = Plan::default();
        let spec = spec();
        plan.add(&spec, &file("raw/a", 10, None), None);
        plan.add(&spec, &file("raw/b", 20, Some("STANDARD_IA")), None);
        plan.add(&spec, &file("raw/c", 30, Some("STANDARD_IA")), None);
        plan.add(&spec, &file("raw/cold", 40, Some("GLACIER")), None);
        plan.add(
            &spec,
            &file(&format!("raw/{}", "k".repeat(1020)), 50, None),
            None,
        );
        assert_eq!((plan.files, plan.bytes), (3, 60));
        assert_eq!(
            plan.by_storage_class["STANDARD"],
            Totals {
                files: 1,
                bytes: 10
            }
        );
        assert_eq!(
            plan.by_storage_class["STANDARD_IA"],
            Totals {
                files: 2,
                bytes: 50
            }
        );
        assert_eq!(plan.would_fail.values().sum::<u64>(), 2);
        assert!(
            plan.would_fail
                .keys()
                .any(|why| why.starts_with("archived"))
        );
        // the run's class is what copies would have
        let mut forced = Plan::default();
        let spec = spec.with_storage_class(Some("ONEZONE_IA".into()));
        forced.add(&spec, &file("raw/b", 20, Some("STANDARD_IA")), None);
        assert_eq!(
            forced.by_storage_class.keys().collect::<Vec<_>>(),
            ["ONEZONE_IA"]
        );
    }

    #[test]
    fn an_existing_destination_is_counted_as_the_run_would_treat_it() {
        let other = Some((10, "\"other\""));
        let same = Some((10, "\"e\""));
        let plan_for = |mode: IfExists| {
            let spec = spec().with_if_destination_exists(mode);
            let mut plan = Plan::default();
            plan.add(&spec, &file("raw/free", 10, None), None);
            plan.add(&spec, &file("raw/taken", 10, None), other);
            plan.add(&spec, &file("raw/copied-before", 10, None), same);
            plan
        };
        let skip = plan_for(IfExists::Skip);
        assert_eq!(
            (skip.files, skip.would_skip, skip.would_overwrite),
            (2, 1, 0)
        );
        assert!(skip.would_fail.is_empty());
        let fail = plan_for(IfExists::Fail);
        assert_eq!((fail.files, fail.would_skip), (2, 0));
        assert_eq!(
            fail.would_fail,
            BTreeMap::from([(DESTINATION_EXISTS.to_string(), 1)])
        );
        let overwrite = plan_for(IfExists::Overwrite);
        assert_eq!(
            (
                overwrite.files,
                overwrite.would_skip,
                overwrite.would_overwrite
            ),
            (3, 0, 1)
        );
    }

    #[test]
    fn the_estimate_follows_the_published_cost_per_million_files() {
        let plan = Plan {
            files: 1_000_000,
            ..Plan::default()
        };
        // 1,011,000 requests at $0.005 per 1,000, and $0.17 of bookkeeping
        assert_eq!(plan.estimated_cost_usd(), 5.23);
        // copies in parts: every part request is priced as a copy
        let large = Plan {
            part_requests: 2_000_000,
            ..Plan::default()
        };
        assert_eq!(large.estimated_cost_usd(), 10.0);
        // a manifest's keys: each looked up with one listing request
        let named = Plan {
            files: 1_000_000,
            key_lookups: 1_000_000,
            ..Plan::default()
        };
        assert_eq!(named.estimated_cost_usd(), 10.23);
        assert_eq!(Plan::default().estimated_cost_usd(), 0.0);
    }
}
