//! A Mermaid flowchart of the state machine, generated from the definition so the README
//! cannot drift from it.

use std::fmt::Write;

use serde_json::{Map, Value};

use crate::Problem;
use crate::definition::{Definition, Transition, array, error_names, states_of, transitions};

pub const BEGIN: &str =
    "<!-- BEGIN state machine diagram: generated from statemachine.asl.json by `make diagram` -->";
pub const END: &str = "<!-- END state machine diagram -->";

/// The flowchart, in a fenced `mermaid` block.
pub fn mermaid(definition: &Definition) -> String {
    let mut nodes = String::new();
    let mut edges = String::new();
    let root = definition.root();
    if let Some(start) = root.get("StartAt").and_then(Value::as_str) {
        writeln!(edges, "    start((start)) --> {}", id(start)).unwrap();
    }
    draw_scope(root, 1, &mut nodes, &mut edges, true);

    let mut out = String::from("```mermaid\nflowchart TD\n");
    out.push_str(&nodes);
    out.push_str(&edges);
    out.push_str("    classDef fail fill:#fde2e1,stroke:#c0392b\n");
    out.push_str("    classDef done fill:#e3f4e1,stroke:#2e7d32\n");
    out.push_str("```\n");
    out
}

/// `readme` with the text between the diagram markers replaced by `diagram`.
pub fn replace_in_readme(readme: &str, diagram: &str) -> Result<String, Problem> {
    let missing = || Problem(format!("README.md has no {BEGIN} ... {END} block"));
    let begin = readme.find(BEGIN).ok_or_else(missing)? + BEGIN.len();
    let end = begin + readme[begin..].find(END).ok_or_else(missing)?;
    Ok(format!("{}\n{diagram}{}", &readme[..begin], &readme[end..]))
}

fn draw_scope(scope: &Value, depth: usize, nodes: &mut String, edges: &mut String, top: bool) {
    let indent = "    ".repeat(depth);
    for (name, body) in states_of(scope) {
        let node = id(name);
        let kind = body.get("Type").and_then(Value::as_str).unwrap_or("");
        let branches = array(body, "Branches");
        if kind == "Parallel" {
            writeln!(
                nodes,
                "{indent}subgraph {node}[\"{} (Parallel)\"]",
                text(name)
            )
            .unwrap();
            for (i, branch) in branches.iter().enumerate() {
                writeln!(
                    nodes,
                    "{indent}    subgraph {node}_{}[\"branch {}\"]",
                    i + 1,
                    i + 1
                )
                .unwrap();
                writeln!(nodes, "{indent}        direction TB").unwrap();
                draw_scope(branch, depth + 2, nodes, edges, false);
                writeln!(nodes, "{indent}    end").unwrap();
            }
            writeln!(nodes, "{indent}end").unwrap();
        } else {
            writeln!(
                nodes,
                "{indent}{node}{}",
                shape(kind, &label(name, kind, body))
            )
            .unwrap();
            match kind {
                "Fail" => writeln!(nodes, "{indent}class {node} fail").unwrap(),
                "Succeed" => writeln!(nodes, "{indent}class {node} done").unwrap(),
                _ => {}
            }
        }

        for (target, how) in transitions(body) {
            let target = id(&target);
            match how {
                Transition::Next => writeln!(edges, "    {node} --> {target}"),
                Transition::Default => writeln!(edges, "    {node} -->|otherwise| {target}"),
                Transition::Choice(rule) => {
                    writeln!(edges, "    {node} -->|\"{}\"| {target}", text(&rule))
                }
                Transition::Catch(errors) => writeln!(
                    edges,
                    "    {node} -.->|\"{}\"| {target}",
                    text(&summarize(&errors))
                ),
            }
            .unwrap();
        }
        for retry in array(body, "Retry") {
            writeln!(
                edges,
                "    {node} -.->|\"retry {}\"| {node}",
                text(&summarize(&error_names(retry)))
            )
            .unwrap();
        }
        if top && body.get("End").and_then(Value::as_bool) == Some(true) {
            writeln!(edges, "    {node} --> finish((finish))").unwrap();
        }
    }
}

fn label(name: &str, kind: &str, body: &Map<String, Value>) -> String {
    let get = |field: &str| body.get(field).and_then(Value::as_str);
    let detail = match kind {
        "Task" => match get("Resource") {
            Some(resource) => {
                let resource = resource
                    .strip_prefix("${")
                    .and_then(|r| r.strip_suffix('}'))
                    .map(|r| r.strip_suffix("Arn").unwrap_or(r))
                    .unwrap_or(resource);
                format!("Task: {resource}")
            }
            None => "Task".into(),
        },
        "Wait" => match (body.get("Seconds"), get("SecondsPath")) {
            (Some(seconds), _) => format!("Wait {seconds} s"),
            (None, Some(path)) => format!("Wait {}", path.rsplit('.').next().unwrap_or(path)),
            _ => "Wait".into(),
        },
        "Fail" => match (get("Error"), get("ErrorPath")) {
            (Some(error), _) => format!("Fail: {error}"),
            (None, Some(_)) => "Fail: the caught error".into(),
            _ => "Fail".into(),
        },
        other => other.to_string(),
    };
    format!("{name}<br/>{detail}")
}

fn shape(kind: &str, label: &str) -> String {
    let label = text(label);
    match kind {
        "Choice" => format!("{{\"{label}\"}}"),
        "Wait" => format!("([\"{label}\"])"),
        "Pass" => format!("[/\"{label}\"/]"),
        "Succeed" | "Fail" => format!("((\"{label}\"))"),
        _ => format!("[\"{label}\"]"),
    }
}

/// Error lists on edges, with the Lambda service errors folded into one name.
fn summarize(errors: &[String]) -> String {
    let mut shown: Vec<&str> = Vec::new();
    for error in errors {
        let name = if error.starts_with("Lambda.") {
            "Lambda.*"
        } else {
            error.as_str()
        };
        if !shown.contains(&name) {
            shown.push(name);
        }
    }
    shown.join(", ")
}

/// A Mermaid node id for a state name: `s_` keeps ids such as `end` from being keywords.
fn id(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("s_{safe}")
}

/// Text inside a quoted Mermaid label.
fn text(raw: &str) -> String {
    raw.replace('"', "#quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_become_nodes_and_transitions_edges() {
        let definition = Definition::parse(
            r#"{"StartAt": "Go", "States": {
                "Go": {"Type": "Task", "Resource": "${WorkArn}", "Next": "Check",
                       "Retry": [{"ErrorEquals": ["Lambda.ServiceException", "Lambda.Unknown", "Busy"]}],
                       "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "end"}]},
                "Check": {"Type": "Choice", "Choices": [{"Variable": "$.r.done", "BooleanEquals": false, "Next": "Go"}], "Default": "Done"},
                "Done": {"Type": "Succeed"},
                "end": {"Type": "Fail", "Error": "Broken \"badly\""}
            }}"#,
        )
        .unwrap();
        let chart = mermaid(&definition);
        for line in [
            "    start((start)) --> s_Go",
            "    s_Go[\"Go<br/>Task: Work\"]",
            "    s_Check{\"Check<br/>Choice\"}",
            "    s_end((\"end<br/>Fail: Broken #quot;badly#quot;\"))",
            "    class s_end fail",
            "    s_Go --> s_Check",
            "    s_Go -.->|\"States.ALL\"| s_end",
            "    s_Go -.->|\"retry Lambda.*, Busy\"| s_Go",
            "    s_Check -->|\"done == false\"| s_Go",
            "    s_Check -->|otherwise| s_Done",
        ] {
            assert!(chart.lines().any(|l| l == line), "{line:?} not in\n{chart}");
        }
    }

    #[test]
    fn the_readme_block_is_replaced_and_a_missing_one_is_named() {
        let readme = format!("# T\n\n{BEGIN}\nold\n{END}\n\nafter\n");
        let updated = replace_in_readme(&readme, "```mermaid\nnew\n```\n").unwrap();
        assert_eq!(
            updated,
            format!("# T\n\n{BEGIN}\n```mermaid\nnew\n```\n{END}\n\nafter\n")
        );
        assert!(replace_in_readme("# T\n", "x").is_err());
    }
}
