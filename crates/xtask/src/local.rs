//! Deploys what `template.yaml` deploys onto the local AWS APIs: the bucket, the status
//! table (its key schema and TTL read from the template), the activity, and the state
//! machine from its definition with every substitution filled from the local resources.
//! Function settings come from the template too, resolved against the same resources.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    TimeToLiveSpecification,
};

use crate::Problem;
use deployment::definition::Definition;
use deployment::template::{Reference, Substitution, Template};

pub const REGION: &str = "us-east-1";
/// The account moto reports.
pub const ACCOUNT: &str = "123456789012";

/// The names the local stack gives what the template would create.
#[derive(Debug, Clone)]
pub struct LocalNames {
    pub stack: String,
    pub bucket: String,
}

impl LocalNames {
    pub fn table(&self) -> String {
        format!("{}-status", self.stack)
    }
    pub fn activity(&self) -> String {
        format!("{}-transfer", self.stack)
    }
    /// Local functions are named by their binary, which is how local Lambda
    /// serves them.
    pub fn function_arn(binary: &str) -> String {
        format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:{binary}")
    }
}

/// What the local deployment created, and the settings each function gets.
#[derive(Debug, Clone)]
pub struct Deployed {
    pub endpoint: String,
    pub bucket: String,
    pub table: String,
    pub activity_arn: String,
    pub state_machine_arn: String,
    /// Every function's variables from the template, merged (they agree where they meet).
    pub function_environment: BTreeMap<String, String>,
    /// Each function (by binary) with its timeout and memory from the template.
    pub functions: BTreeMap<String, FunctionLimits>,
}

/// What local Lambda needs of a function beyond its binary and environment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FunctionLimits {
    pub timeout: u64,
    pub memory: u64,
}

pub async fn sdk_config(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "local",
        ))
        .endpoint_url(endpoint)
        .load()
        .await
}

fn aws<E: std::fmt::Debug>(what: &str) -> impl FnOnce(E) -> Problem + '_ {
    move |e| Problem(format!("{what}: {e:?}"))
}

/// Creates on the local AWS APIs at `endpoint` what the template deploys, with each
/// parameter at its default unless `parameters` gives it a value.
pub async fn deploy(
    template: &Template,
    definition: &Definition,
    endpoint: &str,
    names: &LocalNames,
    parameters: &BTreeMap<String, String>,
) -> Result<Deployed, Problem> {
    let sdk = sdk_config(endpoint).await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let sfn = aws_sdk_sfn::Client::new(&sdk);

    let existing = s3.list_buckets().send().await.map_err(aws("ListBuckets"))?;
    if !existing
        .buckets()
        .iter()
        .any(|b| b.name() == Some(&names.bucket))
    {
        s3.create_bucket()
            .bucket(&names.bucket)
            .send()
            .await
            .map_err(aws("CreateBucket"))?;
    }

    let table = names.table();
    create_table(&dynamodb, template, &table).await?;

    let activity_arn = sfn
        .create_activity()
        .name(names.activity())
        .send()
        .await
        .map_err(aws("CreateActivity"))?
        .activity_arn;

    let binaries: BTreeMap<String, String> = template
        .functions()
        .into_iter()
        .map(|f| (f.resource, f.binary))
        .collect();
    let parameter = |name: &str, default: &Option<String>| match name {
        "SourceBucketName" => Some(names.bucket.clone()),
        _ => parameters.get(name).cloned().or_else(|| default.clone()),
    };
    let (_, substitutions) = template.state_machine()?;
    let mut values = BTreeMap::new();
    for (name, sub) in &substitutions {
        let value = match sub {
            Substitution::Parameter { name, default } => parameter(name, default)
                .ok_or_else(|| Problem(format!("parameter {name} has no value")))?,
            Substitution::Resource {
                resource,
                resource_type,
            } => match resource_type.as_str() {
                "AWS::StepFunctions::Activity" => activity_arn.clone(),
                "AWS::Serverless::Function" => LocalNames::function_arn(&binaries[resource]),
                other => {
                    return Err(Problem(format!(
                        "the local stack cannot stand in for {name}, a {other}"
                    )));
                }
            },
        };
        values.insert(name.clone(), value);
    }
    let filled = definition.substitute(&values)?;
    let state_machine_arn = sfn
        .create_state_machine()
        .name(&names.stack)
        .role_arn(format!("arn:aws:iam::{ACCOUNT}:role/{}", names.stack))
        .definition(filled.to_string())
        .send()
        .await
        .map_err(aws("CreateStateMachine"))?
        .state_machine_arn;

    let resolve = |reference: &Reference| match reference {
        Reference::Parameter { name, default } => parameter(name, default),
        Reference::Resource {
            resource_type, id, ..
        } => match resource_type.as_str() {
            "AWS::DynamoDB::Table" => Some(table.clone()),
            "AWS::StepFunctions::Activity" => Some(activity_arn.clone()),
            "AWS::Serverless::Function" => binaries.get(id).cloned(),
            _ => None,
        },
    };
    let mut function_environment = BTreeMap::new();
    for resource in binaries.keys() {
        for (name, value) in template.environment(resource, &resolve) {
            // A value the template decides by condition (the destination bucket, say)
            // is left unset, so the function's own default applies.
            if let Some(value) = value {
                function_environment.insert(name, value);
            }
        }
    }

    let mut functions = BTreeMap::new();
    for (resource, binary) in &binaries {
        let setting = |name, default| {
            template
                .function_setting(resource, name)
                .and_then(serde_norway::Value::as_u64)
                .unwrap_or(default)
        };
        // Lambda's own defaults for a function that sets neither.
        let limits = FunctionLimits {
            timeout: setting("Timeout", 3),
            memory: setting("MemorySize", 128),
        };
        functions.insert(binary.clone(), limits);
    }

    Ok(Deployed {
        endpoint: endpoint.to_string(),
        bucket: names.bucket.clone(),
        table,
        activity_arn,
        state_machine_arn,
        function_environment,
        functions,
    })
}

/// Creates the status table `name` as the template declares it, unless it exists.
pub async fn table_if_missing(
    dynamodb: &aws_sdk_dynamodb::Client,
    template: &Template,
    name: &str,
) -> Result<(), Problem> {
    if dynamodb
        .describe_table()
        .table_name(name)
        .send()
        .await
        .is_ok()
    {
        return Ok(());
    }
    create_table(dynamodb, template, name).await
}

async fn create_table(
    dynamodb: &aws_sdk_dynamodb::Client,
    template: &Template,
    name: &str,
) -> Result<(), Problem> {
    let spec = template.table()?;
    let mut request = dynamodb
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest);
    for (attribute, kind) in &spec.attributes {
        request = request.attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(attribute)
                .attribute_type(ScalarAttributeType::from(kind.as_str()))
                .build()
                .map_err(aws("AttributeDefinition"))?,
        );
    }
    for (attribute, kind) in &spec.keys {
        request = request.key_schema(
            KeySchemaElement::builder()
                .attribute_name(attribute)
                .key_type(KeyType::from(kind.as_str()))
                .build()
                .map_err(aws("KeySchemaElement"))?,
        );
    }
    request.send().await.map_err(aws("CreateTable"))?;
    if let Some(attribute) = spec.ttl_attribute {
        dynamodb
            .update_time_to_live()
            .table_name(name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name(attribute)
                    .enabled(true)
                    .build()
                    .map_err(aws("TimeToLiveSpecification"))?,
            )
            .send()
            .await
            .map_err(aws("UpdateTimeToLive"))?;
    }
    Ok(())
}

impl Deployed {
    /// A shell file (`source .local/env`) with the endpoint, region, credentials, every
    /// resource name and ARN, and the functions' settings.
    pub fn env_file(&self) -> String {
        let mut variables: BTreeMap<&str, &str> = self
            .function_environment
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        variables.extend([
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_REGION", REGION),
            ("AWS_DEFAULT_REGION", REGION),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("S3_FORCE_PATH_STYLE", "true"),
            ("STATE_MACHINE_ARN", self.state_machine_arn.as_str()),
            ("ACTIVITY_ARN", self.activity_arn.as_str()),
            ("TABLE_NAME", self.table.as_str()),
            ("SOURCE_BUCKET", self.bucket.as_str()),
        ]);
        let mut text = String::from(
            "# The local stack: `source` this file to point the AWS CLI, the SDKs, the run\n\
             # command and the functions at it.\n",
        );
        for (name, value) in variables {
            text.push_str(&format!("export {name}={}\n", quote(value)));
        }
        text
    }
}

/// Single-quoted for the shell.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Whether cargo sets the variable `name` for one package's program (a test, a build
/// script, `cargo run`). A cargo started from such a program must not inherit them:
/// build scripts that watch them (ring's does) would run again and rebuild their
/// dependents.
pub fn set_by_cargo_for_a_package(name: &str) -> bool {
    const PREFIXES: [&str; 5] = [
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_CFG_",
        "CARGO_FEATURE_",
        "CARGO_BIN_",
    ];
    const NAMES: [&str; 4] = [
        "OUT_DIR",
        "CARGO_CRATE_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p)) || NAMES.contains(&name)
}

/// A local stack (`python -m local.stack run`) started by this process, stopped when
/// dropped (or when this process dies: the stack watches its parent).
pub struct RunningStack {
    process: Child,
    pub dir: PathBuf,
    /// What the stack's env file sets: endpoint, names, ARNs, the functions' settings.
    pub env: BTreeMap<String, String>,
}

impl RunningStack {
    /// Starts the stack on free ports, its files under `dir`, and waits until it is up.
    /// `options` are more of `python -m local.stack run`'s options (`--features`,
    /// `--faults`, …).
    pub fn start(
        root: &Path,
        dir: &Path,
        stack: &str,
        bucket: &str,
        options: &[String],
    ) -> Result<Self, Problem> {
        let free_port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .map_err(|e| Problem(format!("no free port: {e}")))
        };
        let python = root.join(".tools/venv/bin/python");
        let mut command = Command::new(&python);
        for (name, _) in std::env::vars() {
            if set_by_cargo_for_a_package(&name) {
                command.env_remove(name);
            }
        }
        let process = command
            .current_dir(root)
            .args(["-m", "local.stack"])
            .args(["run", &dir.to_string_lossy(), "--exit-with-parent"])
            .args(["--port", &free_port()?.to_string()])
            .args(["--lambda-port", &free_port()?.to_string()])
            .args(["--stack", stack, "--bucket", bucket])
            .args(options)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                Problem(format!(
                    "starting {}: {e} (run `make tools`)",
                    python.display()
                ))
            })?;
        let mut running = RunningStack {
            process,
            dir: dir.to_path_buf(),
            env: BTreeMap::new(),
        };
        let started = Instant::now();
        while !dir.join("ready").exists() {
            if let Ok(Some(status)) = running.process.try_wait() {
                return Err(Problem(format!(
                    "the local stack exited with {status}:{}",
                    running.logs()
                )));
            }
            if started.elapsed() > Duration::from_secs(900) {
                return Err(Problem(format!(
                    "the local stack is not up after 15 minutes:{}",
                    running.logs()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        running.env = std::fs::read_to_string(dir.join("env"))
            .map_err(|e| Problem(format!("reading the stack's env file: {e}")))?
            .lines()
            .filter_map(|line| line.strip_prefix("export "))
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect();
        Ok(running)
    }

    pub fn var(&self, name: &str) -> Result<&str, Problem> {
        self.env
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| Problem(format!("{name} is not in the stack's env file")))
    }

    /// The end of each of the stack's logs, for a report of what went wrong.
    pub fn logs(&self) -> String {
        ["stack.log", "moto.log", "functions.log"]
            .iter()
            .map(|name| {
                let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
                let start = text.len().saturating_sub(2000);
                let start = (start..text.len())
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(start);
                format!("\n--- {name}\n{}", &text[start..])
            })
            .collect()
    }
}

impl Drop for RunningStack {
    fn drop(&mut self) {
        // SIGTERM lets the stack stop what it started.
        let _ = Command::new("kill")
            .arg(self.process.id().to_string())
            .status();
        let _ = self.process.wait();
    }
}
