//! S3 clients by the bucket a request names: each request goes to its bucket's region,
//! and carries the bucket owners the run expects.
//!
//! A bucket's region is asked for with `HeadBucket` from the function's own region, and
//! a region S3 names (or a success that names none) is kept for the life of the
//! process: S3 answers it with the bucket's region (`x-amz-bucket-region`) whatever the
//! caller may do with the bucket, a 301 or a 403 included, so it needs no permission of
//! its own. A request sent to another region
//! would be refused (`301 PermanentRedirect`), and the SDK does not follow redirects.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_s3::config::{ConfigBag, Intercept, Region, RuntimeComponents};
use aws_sdk_s3::error::BoxError;

use crate::error::AwsError;
use crate::rules::run::RunSpec;

/// The header S3 answers a bucket's region in.
const BUCKET_REGION: &str = "x-amz-bucket-region";
/// How long a function waits for a bucket's region before it gives up for now.
const REGION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The clients of one run: one for requests about its source bucket, one for requests
/// about its destination bucket (copies included: a copy is sent to the destination's
/// region, and S3 copies from a source in another region).
#[derive(Debug, Clone)]
pub struct RunClients {
    pub source: Client,
    pub destination: Client,
}

/// Clients by region and expected owners, made as buckets need them.
#[derive(Debug, Clone)]
pub struct S3Clients {
    home: Client,
    known: Arc<Mutex<Known>>,
}

#[derive(Debug, Default)]
struct Known {
    /// Each bucket's region as S3 answered, `None` where a definite answer named none.
    regions: HashMap<String, Option<String>>,
    clients: HashMap<ClientKey, Client>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    region: String,
    owner: Option<String>,
    source_owner: Option<String>,
}

impl S3Clients {
    /// Clients derived from `home`, the client of the function's own region.
    pub fn new(home: Client) -> Self {
        S3Clients {
            home,
            known: Arc::default(),
        }
    }

    /// The run's clients for its source and destination buckets.
    pub async fn for_run(&self, spec: &RunSpec) -> Result<RunClients, AwsError> {
        Ok(RunClients {
            source: self
                .for_bucket(&spec.source.bucket, spec.source_owner.as_deref(), None)
                .await?,
            destination: self
                .for_bucket(
                    &spec.destination.bucket,
                    spec.destination_owner.as_deref(),
                    spec.source_owner.as_deref(),
                )
                .await?,
        })
    }

    /// The expected owner of `bucket` in `spec`'s run: the source's or the destination's
    /// when it is one of them.
    pub fn owner_of<'a>(spec: &'a RunSpec, bucket: &str) -> Option<&'a str> {
        if bucket == spec.source.bucket {
            spec.source_owner.as_deref()
        } else if bucket == spec.destination.bucket {
            spec.destination_owner.as_deref()
        } else {
            None
        }
    }

    /// A client for requests about `bucket`: in its region, and with `owner` (and, on
    /// copies, `source_owner` for the copy's source) as the account the request expects
    /// to own the bucket, so that S3 refuses it (403) if another account does. An error
    /// is transient: S3 did not say where the bucket is, and a request sent elsewhere
    /// would be refused for good.
    pub async fn for_bucket(
        &self,
        bucket: &str,
        owner: Option<&str>,
        source_owner: Option<&str>,
    ) -> Result<Client, AwsError> {
        let region = match self.region_of(bucket).await? {
            Some(region) => region,
            None => self.home_region().unwrap_or_default(),
        };
        Ok(self.client_in(region, owner, source_owner))
    }

    fn home_region(&self) -> Option<String> {
        self.home.config().region().map(|r| r.as_ref().to_string())
    }

    /// What S3 answered about `bucket`'s region, if it was asked before.
    fn answered(&self, bucket: &str) -> Option<Option<String>> {
        self.known
            .lock()
            .expect("no panic holds the lock")
            .regions
            .get(bucket)
            .cloned()
    }

    /// The client for `region` with these expected owners, made once.
    fn client_in(&self, region: String, owner: Option<&str>, source_owner: Option<&str>) -> Client {
        if Some(&region) == self.home_region().as_ref() && owner.is_none() && source_owner.is_none()
        {
            return self.home.clone();
        }
        let key = ClientKey {
            region,
            owner: owner.map(String::from),
            source_owner: source_owner.map(String::from),
        };
        let mut known = self.known.lock().expect("no panic holds the lock");
        known
            .clients
            .entry(key.clone())
            .or_insert_with(|| {
                let mut config = self.home.config().to_builder();
                if !key.region.is_empty() {
                    config = config.region(Region::new(key.region.clone()));
                }
                if key.owner.is_some() || key.source_owner.is_some() {
                    config = config.interceptor(ExpectedOwners {
                        owner: key.owner.clone(),
                        source_owner: key.source_owner.clone(),
                    });
                }
                Client::from_conf(config.build())
            })
            .clone()
    }

    /// `bucket`'s region, as S3 answers `HeadBucket`; `None` when the answer names none
    /// (a server that does not say, such as many S3-compatible ones, or a bucket that is
    /// not there), in which case the function's own region is used; an error when there
    /// was no answer to go by (a timeout, throttling, a server error).
    async fn region_of(&self, bucket: &str) -> Result<Option<String>, AwsError> {
        if let Some(answered) = self.answered(bucket) {
            return Ok(answered);
        }
        let asked = tokio::time::timeout(
            REGION_TIMEOUT,
            self.home.head_bucket().bucket(bucket).send(),
        )
        .await
        .map_err(|_| AwsError {
            operation: "HeadBucket",
            code: None,
            message: format!("S3 did not say within {REGION_TIMEOUT:?} where bucket {bucket} is"),
            transient: true,
        })?;
        // Kept: a region S3 named, or a success that names none (a server that does not
        // say). Not kept: an error that names none (a bucket not there yet may be created
        // in another region), nor one with no answer at all, which is an error here.
        let (region, keep) = match asked {
            Ok(answer) => (answer.bucket_region().map(String::from), true),
            Err(err) => {
                let named = err
                    .raw_response()
                    .and_then(|response| response.headers().get(BUCKET_REGION))
                    .map(String::from);
                if named.is_none() {
                    let err = AwsError::from_head("HeadBucket", err);
                    if err.transient {
                        return Err(err);
                    }
                }
                let keep = named.is_some();
                (named, keep)
            }
        };
        if keep {
            self.known
                .lock()
                .expect("no panic holds the lock")
                .regions
                .insert(bucket.to_string(), region.clone());
        }
        Ok(region)
    }
}

/// Adds the expected bucket owners to every request a client sends (before it is
/// signed, so the headers are signed too).
#[derive(Debug)]
struct ExpectedOwners {
    owner: Option<String>,
    source_owner: Option<String>,
}

impl Intercept for ExpectedOwners {
    fn name(&self) -> &'static str {
        "ExpectedOwners"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        _config: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let headers = context.request_mut().headers_mut();
        if let Some(owner) = &self.owner {
            headers.insert("x-amz-expected-bucket-owner", owner.clone());
        }
        if let Some(owner) = &self.source_owner
            && headers.contains_key("x-amz-copy-source")
        {
            headers.insert("x-amz-source-expected-bucket-owner", owner.clone());
        }
        Ok(())
    }
}
