//! The state machine definition (`statemachine.asl.json`): its states, the names it
//! substitutes, and the checks that need no Step Functions service.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::Problem;

#[derive(Debug, Clone)]
pub struct Definition {
    root: Value,
}

/// One state of the definition, at any depth.
#[derive(Debug, Clone, Copy)]
pub struct StateRef<'a> {
    pub name: &'a str,
    pub body: &'a Map<String, Value>,
}

impl Definition {
    pub fn parse(text: &str) -> Result<Self, Problem> {
        let root: Value = serde_json::from_str(text)
            .map_err(|e| Problem(format!("the definition is not JSON: {e}")))?;
        if !root.get("States").is_some_and(Value::is_object) {
            return Err(Problem("the definition has no States object".into()));
        }
        Ok(Definition { root })
    }

    pub fn root(&self) -> &Value {
        &self.root
    }

    /// Every `${Name}` the definition uses.
    pub fn placeholders(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        visit_strings(&self.root, &mut |s| {
            let mut rest = s;
            while let Some(start) = rest.find("${") {
                let after = &rest[start + 2..];
                match after.find('}') {
                    Some(end) => {
                        names.insert(after[..end].to_string());
                        rest = &after[end + 1..];
                    }
                    None => break,
                }
            }
        });
        names
    }

    /// The definition with every `${Name}` replaced, as `DefinitionSubstitutions` does.
    pub fn substitute(&self, values: &BTreeMap<String, String>) -> Result<Value, Problem> {
        let missing: Vec<_> = self
            .placeholders()
            .into_iter()
            .filter(|name| !values.contains_key(name))
            .collect();
        if !missing.is_empty() {
            return Err(Problem(format!(
                "no value for substitution {}",
                missing.join(", ")
            )));
        }
        let mut filled = self.root.clone();
        replace_strings(&mut filled, &|s| {
            values.iter().fold(s.to_string(), |acc, (name, value)| {
                acc.replace(&format!("${{{name}}}"), value)
            })
        });
        Ok(filled)
    }

    /// Every state, nested ones included, in definition order.
    pub fn all_states(&self) -> Vec<StateRef<'_>> {
        let mut out = Vec::new();
        collect(&self.root, &mut out);
        out
    }

    /// Every error name a `Retry` or `Catch` matches.
    pub fn handled_errors(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for state in self.all_states() {
            for field in ["Retry", "Catch"] {
                for rule in array(state.body, field) {
                    for name in rule
                        .get("ErrorEquals")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                    {
                        names.insert(name.to_string());
                    }
                }
            }
        }
        names
    }

    /// Structural problems Step Functions would refuse: a `StartAt`, `Next`, `Default`
    /// or `Catch` target that is not a state of its scope, a state nothing leads to, a
    /// non-terminal state without `Next`, and state names used twice.
    pub fn structural_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut seen = BTreeSet::new();
        for state in self.all_states() {
            if !seen.insert(state.name) {
                problems.push(format!("state name {:?} is used twice", state.name));
            }
        }
        check_scope(&self.root, "the top level", &mut problems);
        problems
    }
}

/// The transitions out of a state: (target, label) for `Next`, each `Choice` rule,
/// `Default` and each `Catch`.
pub fn transitions(body: &Map<String, Value>) -> Vec<(String, Transition)> {
    let mut out = Vec::new();
    if let Some(next) = body.get("Next").and_then(Value::as_str) {
        out.push((next.to_string(), Transition::Next));
    }
    for rule in array(body, "Choices") {
        if let Some(next) = rule.get("Next").and_then(Value::as_str) {
            out.push((next.to_string(), Transition::Choice(describe_rule(rule))));
        }
    }
    if let Some(default) = body.get("Default").and_then(Value::as_str) {
        out.push((default.to_string(), Transition::Default));
    }
    for rule in array(body, "Catch") {
        if let Some(next) = rule.get("Next").and_then(Value::as_str) {
            out.push((next.to_string(), Transition::Catch(error_names(rule))));
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Next,
    Default,
    Choice(String),
    Catch(Vec<String>),
}

pub fn error_names(rule: &Value) -> Vec<String> {
    rule.get("ErrorEquals")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(String::from)
        .collect()
}

pub fn array<'a>(body: &'a Map<String, Value>, field: &str) -> &'a [Value] {
    body.get(field)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// A short text for a Choice rule such as `$.listing.listing_complete == false`.
fn describe_rule(rule: &Value) -> String {
    let Some(map) = rule.as_object() else {
        return String::new();
    };
    let variable = map.get("Variable").and_then(Value::as_str).unwrap_or("");
    let variable = variable.rsplit('.').next().unwrap_or(variable);
    for (op, symbol) in [
        ("BooleanEquals", "=="),
        ("StringEquals", "=="),
        ("NumericEquals", "=="),
        ("NumericGreaterThan", ">"),
        ("NumericLessThan", "<"),
        ("IsPresent", "present:"),
    ] {
        if let Some(value) = map.get(op) {
            return format!("{variable} {symbol} {value}");
        }
    }
    "rule".into()
}

fn collect<'a>(scope: &'a Value, out: &mut Vec<StateRef<'a>>) {
    for (name, body) in states_of(scope) {
        out.push(StateRef { name, body });
        for branch in array(body, "Branches") {
            collect(branch, out);
        }
    }
}

/// The states of one scope (the definition or a Parallel branch), in definition order.
pub fn states_of(scope: &Value) -> impl Iterator<Item = (&str, &Map<String, Value>)> {
    scope
        .get("States")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(name, body)| Some((name.as_str(), body.as_object()?)))
}

fn check_scope(scope: &Value, label: &str, problems: &mut Vec<String>) {
    let Some(states) = scope.get("States").and_then(Value::as_object) else {
        problems.push(format!("{label} has no States"));
        return;
    };
    let mut reached = BTreeSet::new();
    match scope.get("StartAt").and_then(Value::as_str) {
        Some(start) if states.contains_key(start) => {
            reached.insert(start.to_string());
        }
        Some(start) => problems.push(format!("{label}: StartAt {start:?} is not a state here")),
        None => problems.push(format!("{label} has no StartAt")),
    }
    for (name, body) in states {
        let Some(body) = body.as_object() else {
            problems.push(format!("state {name:?} is not an object"));
            continue;
        };
        let kind = body.get("Type").and_then(Value::as_str).unwrap_or("");
        for (target, how) in transitions(body) {
            if states.contains_key(&target) {
                reached.insert(target);
            } else {
                problems.push(format!(
                    "state {name:?}: {how:?} target {target:?} is not a state of {label}"
                ));
            }
        }
        // A catcher's default ResultPath is `$`: the error replaces the state's input,
        // which only a Fail state (reading `$.Error` and `$.Cause`) can take.
        for rule in array(body, "Catch") {
            let target = rule.get("Next").and_then(Value::as_str).unwrap_or("");
            let target_kind = states
                .get(target)
                .and_then(|t| t.get("Type"))
                .and_then(Value::as_str);
            if target_kind.is_some_and(|k| k != "Fail") && rule.get("ResultPath").is_none() {
                problems.push(format!(
                    "state {name:?}: the catcher to {target:?} has no ResultPath, so the error \
                     replaces the input {target:?} gets"
                ));
            }
        }
        let terminal = matches!(kind, "Succeed" | "Fail" | "Choice")
            || body.get("End").and_then(Value::as_bool) == Some(true);
        if !terminal && !body.contains_key("Next") {
            problems.push(format!("state {name:?} has neither Next nor End"));
        }
        for (i, branch) in array(body, "Branches").iter().enumerate() {
            check_scope(branch, &format!("branch {} of {name:?}", i + 1), problems);
        }
    }
    for name in states.keys() {
        if !reached.contains(name) {
            problems.push(format!("state {name:?} cannot be reached in {label}"));
        }
    }
}

fn visit_strings(value: &Value, f: &mut impl FnMut(&str)) {
    match value {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter().for_each(|v| visit_strings(v, f)),
        Value::Object(map) => map.iter().for_each(|(k, v)| {
            f(k);
            visit_strings(v, f)
        }),
        _ => {}
    }
}

fn replace_strings(value: &mut Value, f: &impl Fn(&str) -> String) {
    match value {
        Value::String(s) => *s = f(s),
        Value::Array(items) => items.iter_mut().for_each(|v| replace_strings(v, f)),
        Value::Object(map) => map.values_mut().for_each(|v| replace_strings(v, f)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MACHINE: &str = r#"{
      "StartAt": "Fork",
      "States": {
        "Fork": {"Type": "Parallel", "End": true, "Branches": [
          {"StartAt": "Work", "States": {
            "Work": {"Type": "Task", "Resource": "${WorkArn}", "Next": "Done?",
                     "Retry": [{"ErrorEquals": ["Busy"]}],
                     "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Broken"}]},
            "Done?": {"Type": "Choice", "Choices": [{"Variable": "$.x.done", "BooleanEquals": false, "Next": "Work"}], "Default": "Ok"},
            "Ok": {"Type": "Succeed"},
            "Broken": {"Type": "Fail", "Error": "E"}
          }}
        ]}
      }
    }"#;

    #[test]
    fn a_sound_definition_has_no_problems() {
        let definition = Definition::parse(MACHINE).unwrap();
        assert_eq!(definition.structural_problems(), Vec::<String>::new());
        assert_eq!(
            definition.placeholders(),
            BTreeSet::from(["WorkArn".to_string()])
        );
        assert_eq!(
            definition.handled_errors(),
            BTreeSet::from(["Busy".to_string(), "States.ALL".to_string()])
        );
        let names: Vec<_> = definition.all_states().iter().map(|s| s.name).collect();
        assert_eq!(names, ["Fork", "Work", "Done?", "Ok", "Broken"]);
    }

    #[test]
    fn dangling_and_unreachable_states_are_named() {
        let broken = MACHINE
            .replace(r#""Default": "Ok""#, r#""Default": "Nowhere""#)
            .replace(r#""Next": "Broken""#, r#""Next": "Gone""#);
        let problems = Definition::parse(&broken).unwrap().structural_problems();
        assert_eq!(
            problems,
            [
                r#"state "Work": Catch(["States.ALL"]) target "Gone" is not a state of branch 1 of "Fork""#,
                r#"state "Done?": Default target "Nowhere" is not a state of branch 1 of "Fork""#,
                r#"state "Ok" cannot be reached in branch 1 of "Fork""#,
                r#"state "Broken" cannot be reached in branch 1 of "Fork""#,
            ]
        );
    }

    #[test]
    fn a_catcher_into_a_state_other_than_fail_must_keep_the_input() {
        let retrying = MACHINE.replace(
            r#""Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Broken"}]"#,
            r#""Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Done?"}]"#,
        );
        let problems = Definition::parse(&retrying).unwrap().structural_problems();
        assert!(
            problems.contains(
                &r#"state "Work": the catcher to "Done?" has no ResultPath, so the error replaces the input "Done?" gets"#
                    .to_string()
            ),
            "{problems:?}"
        );
        let kept = retrying.replace(
            r#""Next": "Done?"}]"#,
            r#""Next": "Done?", "ResultPath": "$.error"}]"#,
        );
        let problems = Definition::parse(&kept).unwrap().structural_problems();
        assert!(
            !problems.iter().any(|p| p.contains("ResultPath")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_state_without_next_or_end_is_named() {
        let broken = MACHINE.replace(r#""Next": "Done?","#, "");
        let problems = Definition::parse(&broken).unwrap().structural_problems();
        assert!(
            problems.contains(&r#"state "Work" has neither Next nor End"#.to_string()),
            "{problems:?}"
        );
    }

    #[test]
    fn substitution_fills_every_placeholder_or_names_the_missing_one() {
        let definition = Definition::parse(MACHINE).unwrap();
        let err = definition.substitute(&BTreeMap::new()).unwrap_err();
        assert_eq!(err.0, "no value for substitution WorkArn");
        let filled = definition
            .substitute(&BTreeMap::from([(
                "WorkArn".to_string(),
                "arn:aws:lambda:us-east-1:1:function:w".to_string(),
            )]))
            .unwrap();
        assert_eq!(
            filled["States"]["Fork"]["Branches"][0]["States"]["Work"]["Resource"],
            "arn:aws:lambda:us-east-1:1:function:w"
        );
    }
}
