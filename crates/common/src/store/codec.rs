//! Items of the status table read as the project's types, and the project's types
//! written as items: a run item, a batch's files, a batch's outcomes.

use std::collections::BTreeMap;

use aws_sdk_dynamodb::types::AttributeValue;

use super::StoreError;
use super::layout::{Item, key, n, outcome_pk, s};
use crate::rules::batch::{BatchId, ListedFile, decode_files};
use crate::rules::copy::IfExists;
use crate::rules::outcomes::Outcomes;
use crate::rules::records::{Delivered, FileStatus, RunRecord};
use crate::rules::run::{Location, RunId, RunSpec, Suffixes};
use crate::rules::select::Selection;

pub(super) fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

pub(super) fn get_n(item: &Item, name: &str) -> Option<i64> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

/// The outcome item of a batch holding `outcomes`, to be kept until `expires`.
pub(super) fn outcome_item(
    run: &RunId,
    id: &BatchId,
    outcomes: &Outcomes,
    updated_at: String,
    expires: AttributeValue,
) -> Item {
    let mut item = key(outcome_pk(run), id.as_str());
    item.insert("states".into(), s(outcomes.encode_states()));
    item.insert("version".into(), n(outcomes.version));
    item.insert("updated_at".into(), s(updated_at));
    item.insert("expires_at".into(), expires);
    let by_position = |map: &BTreeMap<usize, String>| {
        AttributeValue::M(map.iter().map(|(i, v)| (i.to_string(), s(v))).collect())
    };
    if !outcomes.reasons.is_empty() {
        item.insert("reasons".into(), by_position(&outcomes.reasons));
    }
    if !outcomes.copied.is_empty() {
        item.insert("copied".into(), by_position(&outcomes.copied));
    }
    item
}

/// A batch item and its outcome item (if any), as one file status each.
pub(super) fn join(
    run: &RunId,
    batch: &Item,
    outcome: Option<&Item>,
) -> Result<Vec<FileStatus>, StoreError> {
    let files = parse_files(run, batch)?;
    let mut outcomes = parse_outcomes(run, outcome, files.len())?;
    Ok(files
        .into_iter()
        .zip(outcomes.states)
        .enumerate()
        .map(|(i, (file, state))| FileStatus {
            file,
            state,
            reason: outcomes.reasons.remove(&i),
        })
        .collect())
}

pub(super) fn describe(spec: &RunSpec) -> String {
    let mut described = format!(
        "{} -> {}, suffixes {:?}",
        spec.source,
        spec.destination,
        spec.suffixes.as_slice()
    );
    if !spec.selection.is_everything() {
        described.push_str(&format!(
            ", selection {}",
            encode_selection(&spec.selection)
        ));
    }
    if let Some(class) = &spec.storage_class {
        described.push_str(&format!(", storage class {class}"));
    }
    if let Some(key) = &spec.kms_key_id {
        described.push_str(&format!(", KMS key {key}"));
    }
    if spec.keep_source_versions {
        described.push_str(", keeping source versions");
    }
    if spec.dry_run {
        described.push_str(", dry run");
    }
    if let Some(manifest) = &spec.manifest {
        described.push_str(&format!(", manifest {manifest}"));
    }
    if let Some(owner) = &spec.source_owner {
        described.push_str(&format!(", source owned by {owner}"));
    }
    if let Some(owner) = &spec.destination_owner {
        described.push_str(&format!(", destination owned by {owner}"));
    }
    if spec.if_destination_exists != IfExists::Overwrite {
        described.push_str(&format!(
            ", if_destination_exists {}",
            spec.if_destination_exists.as_str()
        ));
    }
    described
}

/// A run's selection as its run item keeps it: JSON, `{}` for every key.
pub(super) fn encode_selection(selection: &Selection) -> String {
    serde_json::to_string(selection).expect("a selection always serializes")
}

pub(super) fn parse_run(run: &RunId, item: &Item) -> Result<RunRecord, StoreError> {
    let corrupt = |problem: String| StoreError::Corrupt {
        run: run.clone(),
        problem,
    };
    let flag = |name: &str| {
        item.get(name)
            .and_then(|v| v.as_bool().ok())
            .copied()
            .unwrap_or(false)
    };
    let spec = match get_s(item, "source_bucket") {
        None => None,
        Some(source_bucket) => {
            let field =
                |name| get_s(item, name).ok_or_else(|| corrupt(format!("run item has no {name}")));
            let suffixes = item
                .get("suffixes")
                .and_then(|v| v.as_l().ok())
                .map(|l| l.iter().filter_map(|v| v.as_s().ok().cloned()).collect())
                .ok_or_else(|| corrupt("run item has no suffixes".into()))?;
            let source = Location::new(source_bucket, field("source_prefix")?).map_err(corrupt)?;
            let destination =
                Location::new(field("destination_bucket")?, field("destination_prefix")?)
                    .map_err(corrupt)?;
            let suffixes = Suffixes::new(suffixes).map_err(corrupt)?;
            // Runs recorded before selections existed took every key their suffixes did.
            let selection = match get_s(item, "selection") {
                None => Selection::default(),
                Some(raw) => serde_json::from_str(raw)
                    .map_err(|e| corrupt(format!("run item's selection: {e}")))?,
            };
            Some(
                RunSpec::new(source, destination, suffixes)
                    .map_err(|e| corrupt(e.0))?
                    .with_selection(selection)
                    .with_storage_class(get_s(item, "storage_class").map(String::from))
                    .with_kms_key_id(get_s(item, "kms_key_id").map(String::from))
                    .with_if_destination_exists(match get_s(item, "if_destination_exists") {
                        // Runs recorded before the choice existed overwrote.
                        None => IfExists::Overwrite,
                        Some(raw) => IfExists::parse(raw).map_err(corrupt)?,
                    })
                    .with_keep_source_versions(flag("keep_source_versions"))
                    .with_dry_run(flag("dry_run"))
                    .with_manifest(
                        get_s(item, "manifest")
                            .map(|raw| {
                                serde_json::from_str(raw)
                                    .map_err(|e| corrupt(format!("run item's manifest: {e}")))
                            })
                            .transpose()?,
                    )
                    .with_owners(
                        get_s(item, "source_owner").map(String::from),
                        get_s(item, "destination_owner").map(String::from),
                    ),
            )
        }
    };
    let delivered = match get_s(item, "delivered") {
        None => None,
        Some("succeeded") => Some(Delivered::Succeeded),
        Some("failed") => Some(Delivered::Failed),
        Some(other) => return Err(corrupt(format!("unknown delivered value {other:?}"))),
    };
    let plan = get_s(item, "plan")
        .map(|raw| serde_json::from_str(raw).map_err(|e| corrupt(format!("run item's plan: {e}"))))
        .transpose()?;
    Ok(RunRecord {
        spec,
        plan,
        manifest_etag: get_s(item, "manifest_etag").map(String::from),
        listing_complete: item
            .get("listing_complete")
            .and_then(|v| v.as_bool().ok())
            .copied()
            .unwrap_or(false),
        selected: get_n(item, "selected").unwrap_or(0).max(0) as u64,
        recorded_through: get_s(item, "recorded_through").map(String::from),
        handed_through: get_s(item, "handed_through").map(String::from),
        task_tokens: item
            .get("task_tokens")
            .and_then(|v| v.as_ss().ok())
            .cloned()
            .unwrap_or_default(),
        delivered,
    })
}

pub(super) fn parse_files(run: &RunId, item: &Item) -> Result<Vec<ListedFile>, StoreError> {
    let corrupt = |problem: String| StoreError::Corrupt {
        run: run.clone(),
        problem,
    };
    let raw = get_s(item, "files").ok_or_else(|| corrupt("a batch item has no files".into()))?;
    let files = decode_files(raw).map_err(corrupt)?;
    if files.is_empty() {
        return Err(corrupt("a batch item has an empty file list".into()));
    }
    Ok(files)
}

/// A batch's outcomes from its outcome item; a batch without one has none yet.
pub(super) fn parse_outcomes(
    run: &RunId,
    item: Option<&Item>,
    files: usize,
) -> Result<Outcomes, StoreError> {
    let Some(item) = item else {
        return Ok(Outcomes::started(files));
    };
    let corrupt = |problem: String| StoreError::Corrupt {
        run: run.clone(),
        problem,
    };
    let by_position = |name: &str| match item.get(name).map(|v| v.as_m()) {
        None => Ok(BTreeMap::new()),
        Some(Ok(map)) => map
            .iter()
            .map(|(i, value)| {
                let i = i.parse().map_err(|_| format!("{name} index {i:?}"))?;
                let value = value
                    .as_s()
                    .map_err(|_| format!("{name} {i} is not a string"))?;
                Ok((i, value.clone()))
            })
            .collect::<Result<_, String>>()
            .map_err(corrupt),
        Some(Err(_)) => Err(corrupt(format!("an outcome item's {name} are not a map"))),
    };
    let states =
        get_s(item, "states").ok_or_else(|| corrupt("an outcome item has no states".into()))?;
    let version = get_n(item, "version").unwrap_or(0).max(0) as u64;
    Outcomes::decode(
        states,
        by_position("reasons")?,
        by_position("copied")?,
        version,
        files,
    )
    .map_err(corrupt)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::rules::outcomes::FileState;

    #[test]
    fn outcome_items_read_back_with_their_reasons() {
        let run = RunId::parse("r").unwrap();
        assert_eq!(parse_outcomes(&run, None, 2).unwrap(), Outcomes::started(2));
        let item = HashMap::from([
            ("states".to_string(), s("cf")),
            ("version".to_string(), n(3)),
            (
                "reasons".to_string(),
                AttributeValue::M(HashMap::from([("1".to_string(), s("denied"))])),
            ),
        ]);
        let read = parse_outcomes(&run, Some(&item), 2).unwrap();
        assert_eq!(read.version, 3);
        assert_eq!(read.states, [FileState::Completed, FileState::Failed]);
        assert_eq!(read.reasons, BTreeMap::from([(1, "denied".to_string())]));
        let err = parse_outcomes(&run, Some(&item), 3).unwrap_err();
        assert!(err.to_string().contains("batch of 3 files"), "{err}");
    }
}
