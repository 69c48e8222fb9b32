//! Runs one transfer: starts an execution of the state machine, shows the run's progress
//! from the status table while it runs, and reports how it ended, with every failed file
//! and its reason. The same on AWS and on the local stack: only the endpoint differs.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use aws_sdk_sfn::types::ExecutionStatus;
use common::rules::progress::RunProgress;
use common::rules::records::FileStatus;
use common::rules::run::RunId;
use common::store::StatusRecords;
use serde_json::Value;

/// Failed files listed after a failed run.
const FAILED_FILES_SHOWN: usize = 100;

pub struct Runner {
    pub sfn: aws_sdk_sfn::Client,
    pub records: StatusRecords,
    pub state_machine_arn: String,
}

/// How an execution ended.
#[derive(Debug, Clone)]
pub struct Finished {
    pub execution_arn: String,
    pub status: ExecutionStatus,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub cause: Option<String>,
    pub progress: Option<RunProgress>,
    pub failed_files: Vec<(String, String)>,
    pub elapsed: Duration,
}

impl Finished {
    pub fn succeeded(&self) -> bool {
        self.status == ExecutionStatus::Succeeded
    }
}

impl Runner {
    /// Starts an execution named `name` (the run id) with `input`, follows it to its end
    /// and writes progress to `out` as it goes.
    pub async fn run(
        &self,
        name: &RunId,
        input: &Value,
        out: &mut dyn Write,
    ) -> Result<Finished, String> {
        let started = Instant::now();
        let execution_arn = self
            .sfn
            .start_execution()
            .state_machine_arn(&self.state_machine_arn)
            .name(name.as_str())
            .input(input.to_string())
            .send()
            .await
            .map_err(|e| {
                format!(
                    "StartExecution: {}",
                    common::error::AwsError::from_sdk("StartExecution", e)
                )
            })?
            .execution_arn;
        let _ = writeln!(out, "execution {execution_arn}");
        let live = std::io::stdout().is_terminal();
        let mut last_line = Instant::now();
        loop {
            let described = self
                .sfn
                .describe_execution()
                .execution_arn(&execution_arn)
                .send()
                .await
                .map_err(|e| format!("DescribeExecution: {e:?}"))?;
            let progress = self
                .records
                .run_view(name)
                .await
                .map_err(|e| format!("reading the status table: {e}"))?
                .map(|view| view.progress);
            let line = progress_line(
                progress.as_ref(),
                described.status.as_str(),
                started.elapsed(),
            );
            if live {
                let _ = write!(out, "\r{line}\x1b[K");
                let _ = out.flush();
            } else if last_line.elapsed() >= Duration::from_secs(5)
                || described.status != ExecutionStatus::Running
            {
                let _ = writeln!(out, "{line}");
                last_line = Instant::now();
            }
            if described.status != ExecutionStatus::Running {
                if live {
                    let _ = writeln!(out);
                }
                let failed_files = match &progress {
                    Some(p) if p.failed > 0 => self
                        .records
                        .failed_files(name, FAILED_FILES_SHOWN)
                        .await
                        .map_err(|e| format!("reading failed files: {e}"))?,
                    _ => Vec::new(),
                };
                return Ok(Finished {
                    execution_arn,
                    status: described.status,
                    output: described.output.and_then(|o| serde_json::from_str(&o).ok()),
                    error: described.error,
                    cause: described.cause,
                    progress,
                    failed_files,
                    elapsed: started.elapsed(),
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// `[##########..........] 512/1200 files, 3.2 MiB, 12 s, RUNNING`
pub fn progress_line(progress: Option<&RunProgress>, state: &str, elapsed: Duration) -> String {
    const WIDTH: u64 = 30;
    let Some(p) = progress else {
        return format!(
            "[{}] starting, {} s, {state}",
            ".".repeat(WIDTH as usize),
            elapsed.as_secs()
        );
    };
    let done = p.completed + p.failed + p.skipped;
    // Nothing selected yet: empty while listing, full once listing found nothing.
    let filled = match (WIDTH * done).checked_div(p.selected) {
        Some(filled) => filled.min(WIDTH),
        None if p.listing_complete => WIDTH,
        None => 0,
    };
    let total = if p.listing_complete {
        p.selected.to_string()
    } else {
        format!("{}+", p.selected)
    };
    let failed = match (p.failed, p.skipped) {
        (0, 0) => String::new(),
        (failed, 0) => format!(" ({failed} failed)"),
        (0, skipped) => format!(" ({skipped} skipped)"),
        (failed, skipped) => format!(" ({failed} failed, {skipped} skipped)"),
    };
    format!(
        "[{}{}] {done}/{total} files{failed}, {}, {} s, {state}",
        "#".repeat(filled as usize),
        ".".repeat((WIDTH - filled) as usize),
        human_bytes(p.bytes),
        elapsed.as_secs()
    )
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The report printed when a run ends.
pub fn report(finished: &Finished) -> String {
    let mut text = format!(
        "execution {}: {}\n",
        finished.execution_arn,
        finished.status.as_str()
    );
    if let Some(p) = &finished.progress {
        text.push_str(&format!(
            "files: {} selected, {} moved, {} failed{}; {} moved in {:.1} s\n",
            p.selected,
            p.completed,
            p.failed,
            if p.skipped > 0 {
                format!(", {} skipped", p.skipped)
            } else {
                String::new()
            },
            human_bytes(p.bytes),
            finished.elapsed.as_secs_f64()
        ));
        if p.completed > 0 {
            text.push_str(&format!(
                "verified: {} by the source's checksum, {} by size and ETag\n",
                p.by_checksum.min(p.completed),
                p.completed.saturating_sub(p.by_checksum)
            ));
        }
    }
    if let Some(output) = &finished.output {
        text.push_str(&format!("output: {output}\n"));
    }
    if let Some(error) = &finished.error {
        text.push_str(&format!("error: {error}\n"));
    }
    if let Some(cause) = finished.cause.as_deref().filter(|c| !c.is_empty()) {
        let first = cause.lines().next().unwrap_or_default();
        text.push_str(&format!("cause: {first}\n"));
    }
    if !finished.failed_files.is_empty() {
        text.push_str("failed files:\n");
        for (key, reason) in &finished.failed_files {
            text.push_str(&format!("  {key}: {reason}\n"));
        }
    }
    text
}

/// One line per file: its state, its key and, for a failed file, the reason, separated
/// by tabs.
pub fn file_line(file: &FileStatus) -> String {
    match &file.reason {
        Some(reason) => format!("{}\t{}\t{reason}", file.state.as_str(), file.file.key),
        None => format!("{}\t{}", file.state.as_str(), file.file.key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(selected: u64, completed: u64, failed: u64, listing_complete: bool) -> RunProgress {
        RunProgress {
            listing_complete,
            selected,
            completed,
            failed,
            bytes: 3 * 1024 * 1024 + 200 * 1024,
            ..RunProgress::default()
        }
    }

    #[test]
    fn the_progress_line_shows_files_done_of_total_and_the_state() {
        let line = progress_line(
            Some(&progress(1200, 500, 12, true)),
            "RUNNING",
            Duration::from_secs(12),
        );
        assert_eq!(
            line,
            format!(
                "[{}{}] 512/1200 files (12 failed), 3.2 MiB, 12 s, RUNNING",
                "#".repeat(12),
                ".".repeat(18)
            )
        );
        let listing = progress_line(
            Some(&progress(1000, 0, 0, false)),
            "RUNNING",
            Duration::ZERO,
        );
        assert!(listing.contains("0/1000+ files"), "{listing}");
        let empty = progress_line(Some(&progress(0, 0, 0, true)), "SUCCEEDED", Duration::ZERO);
        assert!(
            empty.starts_with(&format!("[{}]", "#".repeat(30))),
            "{empty}"
        );
    }

    #[test]
    fn each_file_is_one_line_with_its_reason_if_it_failed() {
        use common::rules::batch::ListedFile;
        use common::rules::outcomes::FileState;
        let file = |state, reason: Option<&str>| FileStatus {
            file: ListedFile {
                key: "raw/a b.csv".into(),
                size: 3,
                etag: "e".into(),
                storage_class: None,
            },
            state,
            reason: reason.map(String::from),
        };
        assert_eq!(
            file_line(&file(FileState::Completed, None)),
            "completed\traw/a b.csv"
        );
        assert_eq!(
            file_line(&file(FileState::Failed, Some("CopyObject: AccessDenied"))),
            "failed\traw/a b.csv\tCopyObject: AccessDenied"
        );
    }

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }
}
