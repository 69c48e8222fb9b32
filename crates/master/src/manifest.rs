//! Reading a run's manifest from S3, a line at a time: never whole into memory, from
//! any [`Position`] a master call resumes at, and always the object the run started
//! with (`If-Match` on the ETag recorded with the run).

use std::io::Write;

use aws_sdk_s3::primitives::ByteStream;
use common::AwsError;
use common::rules::keys::shown;
use common::rules::manifest::{
    InventoryReport, LineFormat, MAX_INVENTORY_MANIFEST_BYTES, MAX_LINE_BYTES, Manifest,
    ManifestFormat, Position,
};
use common::rules::run::RunSpec;
use common::transfer::S3Clients;
use flate2::write::MultiGzDecoder;

/// Why a manifest could not be read.
#[derive(Debug)]
pub enum ManifestError {
    /// No retry will change it: the manifest is not there, may not be read, was
    /// replaced, or a line of it is refused. The message names where.
    Refused(String),
    /// Worth retrying: S3 was busy, or a connection dropped.
    Failed(AwsError),
}

/// One of the objects a manifest's lines are in.
#[derive(Debug, Clone)]
struct Part {
    bucket: String,
    key: String,
    /// Its size, where known, so a resumed reading at its end asks S3 for nothing.
    size: Option<u64>,
    /// The ETag it must still have.
    if_match: Option<String>,
    /// The account expected to own its bucket, where the run names one.
    owner: Option<String>,
}

impl Part {
    fn named(&self) -> String {
        format!("s3://{}/{}", self.bucket, shown(&self.key))
    }
}

/// The part being read.
struct Open {
    body: ByteStream,
    gzip: Option<MultiGzDecoder<Vec<u8>>>,
    /// Text read and not yet returned as lines: `buffer[start..]`.
    buffer: Vec<u8>,
    start: usize,
    /// Bytes of text still to pass over before `at` (a gzip part resumed mid-way).
    skip: u64,
    finished: bool,
    /// The number of the next line, when the part is read from its start.
    line: Option<u64>,
}

/// A manifest being read.
pub struct ManifestReader {
    s3: S3Clients,
    parts: Vec<Part>,
    format: LineFormat,
    /// Where the next line starts.
    at: Position,
    open: Option<Open>,
    /// The manifest object's ETag as this reading found it.
    pub etag: String,
}

/// One line as read: its text, where it ends, and where it is, for messages (the
/// object, and the line in it).
pub struct Line {
    pub text: Vec<u8>,
    pub end: Position,
    pub object: String,
    pub place: String,
}

impl Line {
    pub fn named(&self) -> String {
        format!("{} {}", self.object, self.place)
    }
}

impl ManifestReader {
    /// Opens the manifest of `spec`'s run for reading its files' lines: a `csv` or
    /// `jsonl` manifest is looked up (`HeadObject`), an inventory's `manifest.json` read
    /// and parsed. With `etag`, the manifest must still be that object. A manifest in the
    /// run's source or destination bucket is read expecting that bucket's owner.
    pub async fn open(
        clients: &S3Clients,
        spec: &RunSpec,
        etag: Option<&str>,
    ) -> Result<Self, ManifestError> {
        let (manifest, source) = (
            spec.manifest.as_ref().expect("the run has a manifest"),
            &spec.source,
        );
        let named = manifest.to_string();
        let owner = S3Clients::owner_of(spec, &manifest.bucket).map(String::from);
        let s3 = clients
            .for_bucket(&manifest.bucket, owner.as_deref(), None)
            .await
            .map_err(ManifestError::Failed)?;
        let (parts, format, found_etag) = match LineFormat::of(manifest.format) {
            Some(format) => {
                let head = s3
                    .head_object()
                    .bucket(&manifest.bucket)
                    .key(&manifest.key)
                    .set_if_match(etag.map(String::from))
                    .send()
                    .await
                    .map_err(|e| refused_or_failed(&named, AwsError::from_head("HeadObject", e)))?;
                let found_etag = head.e_tag.unwrap_or_default();
                let part = Part {
                    bucket: manifest.bucket.clone(),
                    key: manifest.key.clone(),
                    size: head.content_length.map(|n| n.max(0) as u64),
                    if_match: Some(found_etag.clone()),
                    owner: owner.clone(),
                };
                (vec![part], format, found_etag)
            }
            None => {
                debug_assert_eq!(manifest.format, ManifestFormat::S3Inventory);
                let got = s3
                    .get_object()
                    .bucket(&manifest.bucket)
                    .key(&manifest.key)
                    .set_if_match(etag.map(String::from))
                    .send()
                    .await
                    .map_err(|e| refused_or_failed(&named, AwsError::from_sdk("GetObject", e)))?;
                if got.content_length.unwrap_or(0) as u64 > MAX_INVENTORY_MANIFEST_BYTES {
                    return Err(ManifestError::Refused(format!(
                        "manifest {named} is larger than the {MAX_INVENTORY_MANIFEST_BYTES} bytes \
                         an inventory's manifest.json may have"
                    )));
                }
                let found_etag = got.e_tag.clone().unwrap_or_default();
                let raw = got.body.collect().await.map_err(|e| {
                    ManifestError::Failed(AwsError {
                        operation: "GetObject",
                        code: None,
                        message: format!("reading {named}: {e}"),
                        transient: true,
                    })
                })?;
                let report =
                    InventoryReport::parse(&raw.into_bytes(), source).map_err(|problem| {
                        ManifestError::Refused(format!("manifest {named} {problem}"))
                    })?;
                let parts = report
                    .files
                    .iter()
                    .map(|key| Part {
                        bucket: report.files_bucket.clone(),
                        key: key.clone(),
                        size: None,
                        if_match: None,
                        owner: S3Clients::owner_of(spec, &report.files_bucket).map(String::from),
                    })
                    .collect();
                (parts, LineFormat::Inventory(report.columns), found_etag)
            }
        };
        Ok(ManifestReader {
            s3: clients.clone(),
            parts,
            format,
            at: Position { file: 0, offset: 0 },
            open: None,
            etag: found_etag,
        })
    }

    pub fn format(&self) -> &LineFormat {
        &self.format
    }

    /// Reads on after `position` (the end of a line read before) instead of from the start.
    pub fn resume_after(&mut self, position: Position) {
        self.at = position;
        self.open = None;
    }

    /// The next line, or `None` after the last line of the last file.
    pub async fn next_line(&mut self) -> Result<Option<Line>, ManifestError> {
        loop {
            let Some(part) = self.parts.get(self.at.file as usize).cloned() else {
                return Ok(None);
            };
            if self.open.is_none() {
                match self.open_part(&part).await? {
                    Some(open) => self.open = Some(open),
                    None => {
                        self.next_part();
                        continue;
                    }
                }
            }
            let open = self.open.as_mut().expect("opened above");
            if let Some(text) = take_line(open, &part)? {
                let place = match open.line {
                    Some(n) => {
                        open.line = Some(n + 1);
                        format!("line {}", n + 1)
                    }
                    None => format!("at byte {}", self.at.offset),
                };
                self.at.offset += text.len() as u64;
                let mut text = text;
                if text.last() == Some(&b'\n') {
                    text.pop();
                }
                return Ok(Some(Line {
                    text,
                    end: self.at,
                    object: part.named(),
                    place,
                }));
            }
            if open.finished {
                self.next_part();
                continue;
            }
            read_more(open, &part).await?;
        }
    }

    fn next_part(&mut self) {
        self.open = None;
        self.at = Position {
            file: self.at.file + 1,
            offset: 0,
        };
    }

    /// Starts reading `part` at `self.at.offset`; `None` when there is nothing left in it.
    async fn open_part(&self, part: &Part) -> Result<Option<Open>, ManifestError> {
        let offset = self.at.offset;
        let gzip = Manifest::gzip(&part.key);
        if !gzip && part.size.is_some_and(|size| offset >= size) {
            return Ok(None);
        }
        // Plain text is read from the offset; gzip only from its start.
        let range = (!gzip && offset > 0).then(|| format!("bytes={offset}-"));
        let got = self
            .s3
            .for_bucket(&part.bucket, part.owner.as_deref(), None)
            .await
            .map_err(ManifestError::Failed)?
            .get_object()
            .bucket(&part.bucket)
            .key(&part.key)
            .set_if_match(part.if_match.clone())
            .set_range(range)
            .send()
            .await;
        let got = match got {
            Ok(got) => got,
            Err(e) => {
                let err = AwsError::from_sdk("GetObject", e);
                if err.code_is("InvalidRange") {
                    return Ok(None);
                }
                return Err(refused_or_failed(&part.named(), err));
            }
        };
        Ok(Some(Open {
            body: got.body,
            gzip: gzip.then(|| MultiGzDecoder::new(Vec::new())),
            buffer: Vec::new(),
            start: 0,
            skip: if gzip { offset } else { 0 },
            finished: false,
            line: (offset == 0).then_some(0),
        }))
    }
}

/// The next whole line in `open`'s text (with its newline), or the last line of a
/// finished part, which may have none.
fn take_line(open: &mut Open, part: &Part) -> Result<Option<Vec<u8>>, ManifestError> {
    let rest = &open.buffer[open.start..];
    let end = match rest.iter().position(|b| *b == b'\n') {
        Some(i) => i + 1,
        None if open.finished && !rest.is_empty() => rest.len(),
        None if rest.len() > MAX_LINE_BYTES => {
            return Err(ManifestError::Refused(format!(
                "{} has a line longer than {MAX_LINE_BYTES} bytes; it is not a manifest",
                part.named()
            )));
        }
        None => return Ok(None),
    };
    let line = rest[..end].to_vec();
    open.start += end;
    if open.start > 1 << 20 || open.start == open.buffer.len() {
        open.buffer.drain(..open.start);
        open.start = 0;
    }
    Ok(Some(line))
}

/// Reads the next chunk of `open`'s body into its text, through gzip where the part is
/// compressed, passing over what a resumed reading has read before.
async fn read_more(open: &mut Open, part: &Part) -> Result<(), ManifestError> {
    let broken = |problem: String| {
        ManifestError::Failed(AwsError {
            operation: "GetObject",
            code: None,
            message: format!("reading {}: {problem}", part.named()),
            transient: true,
        })
    };
    let not_gzip = |e: std::io::Error| {
        ManifestError::Refused(format!("{} is not readable gzip: {e}", part.named()))
    };
    let text = match open.body.next().await {
        Some(chunk) => {
            let chunk = chunk.map_err(|e| broken(e.to_string()))?;
            match &mut open.gzip {
                Some(decoder) => {
                    decoder.write_all(&chunk).map_err(not_gzip)?;
                    std::mem::take(decoder.get_mut())
                }
                None => chunk.to_vec(),
            }
        }
        None => {
            open.finished = true;
            match open.gzip.take() {
                Some(decoder) => decoder.finish().map_err(not_gzip)?,
                None => Vec::new(),
            }
        }
    };
    let passed = open.skip.min(text.len() as u64) as usize;
    open.skip -= passed as u64;
    open.buffer.extend_from_slice(&text[passed..]);
    Ok(())
}

/// A request about the manifest that failed: refused for good when S3 says the object
/// is not there, may not be read, or is no longer the object the run started with.
fn refused_or_failed(named: &str, err: AwsError) -> ManifestError {
    let code = err.code.as_deref().unwrap_or("");
    let refused = match code {
        "NoSuchKey" | "NotFound" => Some("does not exist"),
        "AccessDenied" | "Forbidden" => Some(
            "may not be read by this stack (see ManifestBucketName and ManifestPrefix), or does not exist",
        ),
        "NoSuchBucket" => Some("is in a bucket that does not exist"),
        "PreconditionFailed" => Some(
            "is no longer the object the run reads (its ETag is not manifest_etag, the one the \
             input check read or the input gave): it was replaced; start a new execution to read \
             the new manifest",
        ),
        _ => None,
    };
    match refused {
        Some(why) => ManifestError::Refused(format!("manifest {named} {why}")),
        None if !err.transient => {
            ManifestError::Refused(format!("manifest {named}: {}", err.message))
        }
        None => ManifestError::Failed(err),
    }
}
