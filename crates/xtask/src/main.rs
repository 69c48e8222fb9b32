//! `cargo xtask <command>`: see `usage()`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use deployment::definition::Definition;
use deployment::diagram;
use deployment::template::Template;
use xtask::Problem;

fn usage() -> &'static str {
    "usage:
  xtask diagram           rewrite the state machine diagram in README.md
  xtask diagram --check   fail if README.md's diagram differs from statemachine.asl.json
  xtask render-definition DIR
                          write DIR/statemachine.json (substitutions filled with example
                          ARNs) and DIR/statemachine-cfn.yaml (a plain CloudFormation
                          state machine holding it), for asl-validator and cfn-lint
  xtask local-deploy ENDPOINT STACK BUCKET ENV_FILE FUNCTIONS_FILE [PARAMETER=VALUE]...
                          create on the local AWS APIs at ENDPOINT what template.yaml
                          deploys (its parameters at their defaults unless given),
                          write their names, ARNs and the functions' settings to
                          ENV_FILE, and each function's timeout and memory (JSON) to
                          FUNCTIONS_FILE
  xtask demo [N]          the whole workflow on the local stack with N CSV files (300),
                          checked end to end
  xtask bench-move RUN_ID [LAMBDAS]
                          move every selected file with master's and slave's code, as
                          one run would, LAMBDAS (8) slave invocations at a time; the
                          settings come from the environment, as for the functions
  xtask create-table      create the status table TABLE_NAME as template.yaml declares it
  xtask invoke-sink       answer every Lambda Invoke on a free loopback port as AWS
                          answers an asynchronous one (202); print the endpoint's URL,
                          then each invocation as one JSON line, its function and payload
  xtask check-build DIR   check that `sam build` left an x86-64 Linux `bootstrap` in
                          DIR/<function> for every function of template.yaml"
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let done = match args.as_slice() {
        ["diagram"] => write_diagram(false),
        ["diagram", "--check"] => write_diagram(true),
        ["render-definition", dir] => render_definition(Path::new(dir)),
        ["check-build", dir] => check_build(Path::new(dir)),
        ["demo"] => return demo(300),
        ["demo", n] => match n.parse() {
            Ok(n) => return demo(n),
            Err(_) => Err(Problem(format!("N must be a number of files, not {n:?}"))),
        },
        ["bench-move", run] => bench_move(run, "8"),
        ["bench-move", run, lambdas] => bench_move(run, lambdas),
        ["create-table"] => create_table(),
        ["invoke-sink"] => invoke_sink(),
        [
            "local-deploy",
            endpoint,
            stack,
            bucket,
            env_file,
            functions_file,
            parameters @ ..,
        ] => parameters
            .iter()
            .map(|p| {
                p.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| Problem(format!("{p:?} is not PARAMETER=VALUE")))
            })
            .collect::<Result<BTreeMap<_, _>, _>>()
            .and_then(|parameters| {
                local_deploy(
                    endpoint,
                    stack,
                    bucket,
                    Path::new(env_file),
                    Path::new(functions_file),
                    &parameters,
                )
            }),
        _ => {
            eprintln!("{}", usage());
            return ExitCode::from(2);
        }
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            eprintln!("xtask: {problem}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root, where the deployment files live.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(name: &str) -> Result<String, Problem> {
    std::fs::read_to_string(root().join(name)).map_err(|e| Problem(format!("reading {name}: {e}")))
}

fn write(path: &Path, text: &str) -> Result<(), Problem> {
    std::fs::write(path, text).map_err(|e| Problem(format!("writing {}: {e}", path.display())))
}

fn write_diagram(check: bool) -> Result<(), Problem> {
    let definition = Definition::parse(&read("statemachine.asl.json")?)?;
    let readme = read("README.md")?;
    let updated = diagram::replace_in_readme(&readme, &diagram::mermaid(&definition))?;
    if updated == readme {
        return Ok(());
    }
    if check {
        return Err(Problem(
            "README.md's state machine diagram is out of date: run `make diagram`".into(),
        ));
    }
    write(&root().join("README.md"), &updated)
}

fn render_definition(dir: &Path) -> Result<(), Problem> {
    let template = Template::parse(&read("template.yaml")?)?;
    let (uri, substitutions) = template.state_machine()?;
    let definition = Definition::parse(&read(&uri)?)?;
    let values = substitutions
        .iter()
        .map(|(name, sub)| Ok((name.clone(), sub.example_value()?)))
        .collect::<Result<BTreeMap<_, _>, Problem>>()?;
    let filled = definition.substitute(&values)?;
    let json = serde_json::to_string_pretty(&filled).expect("a JSON value serializes");
    std::fs::create_dir_all(dir)
        .map_err(|e| Problem(format!("creating {}: {e}", dir.display())))?;
    write(&dir.join("statemachine.json"), &json)?;
    // cfn-lint checks a state machine definition only on AWS::StepFunctions::StateMachine
    // resources with an inline Definition, not through SAM's DefinitionUri.
    let cfn = format!(
        "AWSTemplateFormatVersion: \"2010-09-09\"\n\
         Description: {uri} with example ARNs, for cfn-lint's definition checks\n\
         Resources:\n  \
           StateMachine:\n    \
             Type: AWS::StepFunctions::StateMachine\n    \
             Properties:\n      \
               RoleArn: arn:aws:iam::123456789012:role/state-machine\n      \
               Definition: {}\n",
        serde_json::to_string(&filled).expect("a JSON value serializes")
    );
    write(&dir.join("statemachine-cfn.yaml"), &cfn)
}

fn check_build(dir: &Path) -> Result<(), Problem> {
    const ELF_MAGIC: &[u8] = b"\x7fELF";
    const MACHINE_X86_64: u16 = 0x3e;
    let template = Template::parse(&read("template.yaml")?)?;
    let functions = template.functions();
    if functions.is_empty() {
        return Err(Problem("template.yaml builds no functions".into()));
    }
    for function in functions {
        let path = dir.join(&function.resource).join("bootstrap");
        let bytes =
            std::fs::read(&path).map_err(|e| Problem(format!("{}: {e}", path.display())))?;
        let machine = bytes.get(18..20).map(|m| u16::from_le_bytes([m[0], m[1]]));
        if !bytes.starts_with(ELF_MAGIC) || machine != Some(MACHINE_X86_64) {
            return Err(Problem(format!(
                "{} is not an x86-64 Linux executable",
                path.display()
            )));
        }
        println!(
            "{}: {} ({} bytes, from binary {})",
            function.resource,
            path.display(),
            bytes.len(),
            function.binary
        );
    }
    Ok(())
}

fn local_deploy(
    endpoint: &str,
    stack: &str,
    bucket: &str,
    env_file: &Path,
    functions_file: &Path,
    parameters: &BTreeMap<String, String>,
) -> Result<(), Problem> {
    let template = Template::parse(&read("template.yaml")?)?;
    let (uri, _) = template.state_machine()?;
    let definition = Definition::parse(&read(&uri)?)?;
    let names = xtask::local::LocalNames {
        stack: stack.to_string(),
        bucket: bucket.to_string(),
    };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    let deployed = runtime.block_on(xtask::local::deploy(
        &template,
        &definition,
        endpoint,
        &names,
        parameters,
    ))?;
    write(env_file, &deployed.env_file())?;
    let functions = serde_json::to_string_pretty(&deployed.functions).expect("limits serialize");
    write(functions_file, &functions)?;
    println!("state machine {}", deployed.state_machine_arn);
    Ok(())
}

fn bench_move(run: &str, lambdas: &str) -> Result<(), Problem> {
    let lambdas = lambdas
        .parse()
        .map_err(|_| Problem(format!("LAMBDAS must be a number, not {lambdas:?}")))?;
    let template = Template::parse(&read("template.yaml")?)?;
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    let moved = runtime.block_on(xtask::bench::bench_move(run, lambdas, &template))?;
    println!(
        "{}",
        serde_json::json!({
            "files": moved.files, "seconds": moved.seconds, "invocations": moved.invocations,
            "completed": moved.completed, "failed": moved.failed,
            "by_checksum": moved.by_checksum,
        })
    );
    if moved.completed != moved.files {
        return Err(Problem(format!(
            "{} of {} files moved",
            moved.completed, moved.files
        )));
    }
    Ok(())
}

fn create_table() -> Result<(), Problem> {
    let template = Template::parse(&read("template.yaml")?)?;
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    runtime.block_on(async {
        let config = common::Config::from_env().map_err(|e| Problem(e.to_string()))?;
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
        xtask::local::table_if_missing(&dynamodb, &template, &config.table_name).await
    })
}

fn invoke_sink() -> Result<(), Problem> {
    use std::io::Write;
    // Flushed line by line: the reader acts on each line as it comes.
    let print = |line: String| {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|e| Problem(format!("writing to stdout: {e}")))
    };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    runtime.block_on(async {
        let (sink, mut invocations) = tokio::sync::mpsc::unbounded_channel();
        let url = xtask::async_invoke::start(sink)
            .await
            .map_err(|e| Problem(format!("starting the invoke endpoint: {e}")))?;
        print(url)?;
        // The endpoint keeps its sender for as long as it listens: until killed.
        while let Some((function, payload)) = invocations.recv().await {
            print(serde_json::json!({"function": function, "payload": payload}).to_string())?;
        }
        Ok(())
    })
}

fn demo(n: usize) -> ExitCode {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    match runtime.block_on(xtask::demo::demo(&root(), n)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(problem) => {
            eprintln!("xtask: {problem}");
            ExitCode::FAILURE
        }
    }
}
