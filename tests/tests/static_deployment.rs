//! The deployment files agree with each other and with the code: the state machine uses
//! only substitutions the template defines and errors the functions raise, the template
//! gives each function the settings it needs, and the README's diagram is current.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::config::{Config, Lookup, MasterSettings, SlaveSettings, StatusSettings};
use deployment::definition::{Definition, array, error_names, states_of};
use deployment::template::{Substitution, Template};
use serde_norway::Value as Yaml;

fn read(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn template() -> Template {
    Template::parse(&read("template.yaml")).expect("template.yaml parses")
}

fn definition() -> Definition {
    let (uri, _) = template()
        .state_machine()
        .expect("the template has a state machine");
    Definition::parse(&read(&uri)).expect("the definition parses")
}

/// The `errorType` names each task's resource can produce, keyed by substitution name.
fn errors_by_resource() -> BTreeMap<String, BTreeSet<&'static str>> {
    let template = template();
    let (_, substitutions) = template.state_machine().unwrap();
    let binaries: BTreeMap<String, String> = template
        .functions()
        .into_iter()
        .map(|f| (f.resource, f.binary))
        .collect();
    substitutions
        .iter()
        .filter_map(|(name, sub)| {
            let Substitution::Resource {
                resource,
                resource_type,
            } = sub
            else {
                return None;
            };
            let errors: &[&str] = match resource_type.as_str() {
                // status is the only worker of the activity: these are what it sends.
                "AWS::StepFunctions::Activity" => {
                    &[status::TRANSFER_FAILED, status::INVALID_ACTIVITY_INPUT]
                }
                _ => match binaries.get(resource).map(String::as_str) {
                    Some("master") => master::ERROR_TYPES,
                    Some("slave") => slave::ERROR_TYPES,
                    Some("status") => status::ERROR_TYPES,
                    other => panic!("substitution {name} is built from unknown binary {other:?}"),
                },
            };
            Some((name.clone(), errors.iter().copied().collect()))
        })
        .collect()
}

#[test]
fn every_substitution_used_is_defined_and_every_one_defined_is_used() {
    let (_, substitutions) = template().state_machine().unwrap();
    let defined: BTreeSet<String> = substitutions.keys().cloned().collect();
    assert_eq!(definition().placeholders(), defined);
}

#[test]
fn every_transition_target_exists_and_every_state_is_reachable() {
    assert_eq!(definition().structural_problems(), Vec::<String>::new());
}

#[test]
fn retry_and_catch_name_only_errors_the_task_can_raise() {
    let by_resource = errors_by_resource();
    let mut unknown = Vec::new();
    let mut tasks = 0;
    for state in definition().all_states() {
        let Some(resource) = state.body.get("Resource").and_then(|r| r.as_str()) else {
            continue;
        };
        tasks += 1;
        let name = resource.trim_start_matches("${").trim_end_matches('}');
        let raised = &by_resource[name];
        for rule in array(state.body, "Retry")
            .iter()
            .chain(array(state.body, "Catch"))
        {
            for error in error_names(rule) {
                // Errors of Step Functions, of the Lambda service, and of the Lambda
                // runtime (a function that crashed or ran out of time).
                let builtin = error.starts_with("States.")
                    || error.starts_with("Lambda.")
                    || ["Runtime.ExitError", "Sandbox.Timedout"].contains(&error.as_str());
                if !builtin && !raised.contains(error.as_str()) {
                    unknown.push(format!("{}: {error}", state.name));
                }
            }
        }
    }
    assert_eq!(
        tasks, 4,
        "the input check (master), the activity task, master and status"
    );
    assert_eq!(unknown, Vec::<String>::new(), "errors no function raises");
}

#[test]
fn every_lambda_task_retries_lambda_service_errors() {
    for state in definition().all_states() {
        let resource = state
            .body
            .get("Resource")
            .and_then(|r| r.as_str())
            .unwrap_or("");
        if !resource.contains("Function") {
            continue;
        }
        let retried: BTreeSet<String> = array(state.body, "Retry")
            .iter()
            .flat_map(error_names)
            .collect();
        for error in [
            "Lambda.ServiceException",
            "Lambda.AWSLambdaException",
            "Lambda.SdkClientException",
            "Lambda.TooManyRequestsException",
            "Runtime.ExitError",
            "Sandbox.Timedout",
        ] {
            assert!(
                retried.contains(error),
                "{} does not retry {error}",
                state.name
            );
        }
    }
}

#[test]
fn status_polls_until_the_run_timeout_rather_than_a_fixed_count() {
    let definition = definition();
    let status = definition
        .all_states()
        .into_iter()
        .find(|s| s.body.get("Resource").and_then(|r| r.as_str()) == Some("${StatusFunctionArn}"))
        .expect("a status task");
    let retry = array(status.body, "Retry")
        .iter()
        .find(|r| error_names(r) == ["TransferIncomplete"])
        .expect("status retries TransferIncomplete on its own");
    let number = |field: &str| retry[field].as_f64().unwrap();
    // Even if a call waited for nothing, the attempts outlast the longest execution
    // Step Functions allows (a year), so only the run timeout ends the polling.
    let polled_seconds = number("MaxAttempts") * number("IntervalSeconds");
    assert!(
        polled_seconds >= 365.0 * 24.0 * 3600.0,
        "retries cover only {polled_seconds} s"
    );
    assert_eq!(
        number("BackoffRate"),
        1.0,
        "each call already waits for the run"
    );
}

#[test]
fn the_output_is_the_activity_branchs_result() {
    let definition = definition();
    let parallel = definition
        .all_states()
        .into_iter()
        .find(|s| s.body["Type"] == "Parallel")
        .expect("a Parallel state");
    assert_eq!(parallel.body["OutputPath"], "$[0]");
    let first_branch = &array(parallel.body, "Branches")[0];
    let start = first_branch["StartAt"].as_str().unwrap();
    let (_, task) = states_of(first_branch)
        .find(|(name, _)| *name == start)
        .unwrap();
    assert_eq!(task["Resource"], "${TransferActivityArn}");
}

/// Variables as the template sets them for one function.
struct TemplateEnv(BTreeMap<String, String>);

impl Lookup for TemplateEnv {
    fn get(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

fn environment(resource: &str) -> TemplateEnv {
    TemplateEnv(
        template()
            .example_environment(resource)
            .into_iter()
            // A value decided at deploy time (a condition) stands in as an example name.
            .map(|(name, value)| (name, value.unwrap_or_else(|| "example-bucket".into())))
            .collect(),
    )
}

#[test]
fn the_template_gives_each_function_valid_settings() {
    let template = template();
    let functions = template.functions();
    let binaries: BTreeSet<&str> = functions.iter().map(|f| f.binary.as_str()).collect();
    assert_eq!(binaries, BTreeSet::from(["master", "slave", "status"]));
    for function in &functions {
        let env = environment(&function.resource);
        Config::from_lookup(&env).unwrap_or_else(|e| panic!("{}: {e}", function.resource));
        let settings = match function.binary.as_str() {
            "master" => MasterSettings::from_lookup(&env).map(|_| ()),
            "slave" => SlaveSettings::from_lookup(&env).map(|_| ()),
            _ => StatusSettings::from_lookup(&env).map(|_| ()),
        };
        settings.unwrap_or_else(|e| panic!("{}: {e}", function.resource));
        let runtime = template.function_setting(&function.resource, "Runtime");
        assert_eq!(runtime.and_then(Yaml::as_str), Some("provided.al2023"));
    }
}

#[test]
fn the_status_function_outlives_its_wait_and_one_activity_poll() {
    let template = template();
    let status = template
        .functions()
        .into_iter()
        .find(|f| f.binary == "status")
        .unwrap();
    let timeout = template
        .function_setting(&status.resource, "Timeout")
        .and_then(Yaml::as_u64)
        .expect("status has a timeout");
    let settings = StatusSettings::from_lookup(&environment(&status.resource)).unwrap();
    let (wait, poll) = (
        settings.run_wait.as_secs(),
        settings.activity_poll.as_secs(),
    );
    assert!(
        timeout >= wait + poll + 10,
        "status times out after {timeout} s; it waits up to {wait} s for a run, and a poll lasts {poll} s"
    );
}

#[test]
fn the_readme_diagram_matches_the_definition() {
    let readme = read("README.md");
    let expected = deployment::diagram::replace_in_readme(
        &readme,
        &deployment::diagram::mermaid(&definition()),
    )
    .expect("the README has the diagram markers");
    assert!(
        expected == readme,
        "README.md's state machine diagram is out of date: run `make diagram`"
    );
}

#[test]
fn the_sample_events_are_events_the_functions_accept() {
    use common::rules::events::{MasterEvent, SlaveEvent, StatusEvent, parse_event};
    let event = |name: &str| serde_json::from_str(&read(&format!("events/{name}.json"))).unwrap();
    parse_event::<MasterEvent>(event("master")).unwrap();
    parse_event::<SlaveEvent>(event("slave")).unwrap();
    parse_event::<StatusEvent>(event("status")).unwrap();
}

#[test]
fn the_state_machines_timing_defaults_are_the_ones_master_checks() {
    use common::rules::events::{
        DEFAULT_RUN_TIMEOUT_SECONDS, DEFAULT_WAIT_BEFORE_MASTER_SECONDS,
        DEFAULT_WAIT_BEFORE_STATUS_SECONDS,
    };
    let definition = definition();
    let defaults = definition
        .all_states()
        .into_iter()
        .find(|s| s.name == "Defaults")
        .expect("a Defaults state")
        .body["Parameters"]["defaults"]
        .clone();
    assert_eq!(
        defaults,
        serde_json::json!({
            "wait_before_master_seconds": DEFAULT_WAIT_BEFORE_MASTER_SECONDS,
            "wait_before_status_seconds": DEFAULT_WAIT_BEFORE_STATUS_SECONDS,
            "run_timeout_seconds": DEFAULT_RUN_TIMEOUT_SECONDS,
        })
    );
    // the default timeout is above any heartbeat the template allows
    let heartbeat = template()
        .example_environment("StatusFunction")
        .remove("TASK_HEARTBEAT_SECONDS");
    assert!(heartbeat.is_some());
    let parameters = read("template.yaml");
    let doc: Yaml = serde_norway::from_str(&parameters).unwrap();
    let most = doc["Parameters"]["TaskHeartbeatSeconds"]["MaxValue"]
        .as_u64()
        .unwrap();
    assert!(most < u64::from(DEFAULT_RUN_TIMEOUT_SECONDS));
}
