//! Every decision of the workflow, as pure functions over the project's own types:
//! nothing here calls AWS, reads the environment or the clock, or sleeps, so each rule
//! is tested on its own. The rest of `common` (the status table, the S3 move, the
//! clients) does the calls and asks these rules what the answers mean.
//!
//! | question | rule |
//! |---|---|
//! | which keys does a run take? | [`run::RunSpec::selects`], [`select::Selection::admits`] |
//! | where does each key go? | [`run::RunSpec::destination_key`], carried by [`run::PlannedMove`] |
//! | how is a manifest line read; where does a manifest run stand? | [`manifest::parse_line`], [`manifest::Position`] |
//! | how are files batched? | [`batch::split`], named by [`batch::BatchId`] |
//! | what does an outcome do to a file and the counters? | [`outcomes::transition`], [`outcomes::Outcomes::apply`] |
//! | which files of a batch are left to move? | [`outcomes::Outcomes::open`] |
//! | how is a file copied, and when is the copy verified? | [`copy::copy_method`], [`copy::check_copy`], [`copy::holds_copy`] |
//! | what does a refused copy or delete mean for the source? | [`copy::source_refusal`], [`copy::part_refusal`], [`copy::delete_refusal`] |
//! | what is a copy encrypted with? | [`encryption::requested`] |
//! | which checksum proves a copy, and does it? when does a whole copy read its source first? | [`checksum::Reported::full_object`], [`checksum::check_checksum`], [`copy::whole_copy_reads_source`] |
//! | does a file whose source is gone count as moved? | [`copy::holds_listed_object`] |
//! | where does a resumed master call continue? | [`records::RunRecord::resume`] |
//! | when does a batch's failed marker change; what does a cancelled write mean? | [`table::marker_change`], [`table::cancellation`] |
//! | when does a slave hand its batch on, and when does it stop? | [`handoff::handoff_stalls`], [`handoff::stalled_for_good`] |
//! | when is a run done, and how did it end? | [`progress::RunProgress::verdict`] |
//! | may status keep waiting, or poll again? | [`progress::may_wait`], [`activity::may_poll`] |
//! | whose activity task is this; was the result delivered? | [`activity::route_task`], [`activity::activity_state`] |
//! | is an event valid, and what does it ask? | [`events::parse_event`], [`events::MasterEvent::resolve`] |

pub mod activity;
pub mod batch;
pub mod checksum;
pub mod copy;
pub mod encryption;
pub mod events;
pub mod failure;
pub mod handoff;
pub mod keys;
pub mod manifest;
pub mod outcomes;
pub mod plan;
pub mod progress;
pub mod records;
pub mod run;
pub mod select;
pub mod table;

#[cfg(test)]
mod tests {
    /// Crates a rule may not use: the AWS SDK, the Lambda runtime, the async runtime.
    const IMPURE: &[&str] = &[
        "aws_",
        "lambda_runtime",
        "tokio",
        "std::env",
        "SystemTime::now",
        "Instant::now",
    ];

    #[test]
    fn no_rule_calls_aws_or_reads_the_environment_or_the_clock() {
        let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/rules");
        let mut read = 0;
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().is_some_and(|n| n == "mod.rs") {
                continue;
            }
            let source = std::fs::read_to_string(&path).unwrap();
            // Only the rules themselves: a test module may use what it likes.
            let rules = source.split("#[cfg(test)]").next().unwrap();
            for word in IMPURE {
                assert!(
                    !rules.contains(word),
                    "{} uses {word}: a rule takes what it needs as arguments",
                    path.display()
                );
            }
            read += 1;
        }
        assert!(read >= 10, "read {read} files of {}", folder.display());
    }
}
