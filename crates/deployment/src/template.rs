//! What the SAM template declares, read from `template.yaml`: enough to check the state
//! machine against it and to deploy its resources elsewhere without repeating names.

use std::collections::BTreeMap;

use serde_norway::Value;

use crate::Problem;

/// What one of the state machine's `DefinitionSubstitutions` stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Substitution {
    /// A resource's ARN (`!GetAtt X.Arn`, or `!Ref` of an activity).
    Resource {
        /// The logical id of the resource.
        resource: String,
        /// Its CloudFormation type, e.g. `AWS::Serverless::Function`.
        resource_type: String,
    },
    /// A parameter's value (`!Ref Parameter`).
    Parameter {
        name: String,
        default: Option<String>,
    },
}

impl Substitution {
    /// A well-formed value in an example account (an ARN of the right kind, or the
    /// parameter's default), for validators that check the filled-in definition.
    pub fn example_value(&self) -> Result<String, Problem> {
        match self {
            Substitution::Resource {
                resource,
                resource_type,
            } => example_arn(resource, resource_type),
            Substitution::Parameter { name, default } => default
                .clone()
                .ok_or_else(|| Problem(format!("parameter {name} has no default to fill in"))),
        }
    }
}

/// A well-formed ARN of the right kind in an example account.
fn example_arn(resource: &str, resource_type: &str) -> Result<String, Problem> {
    {
        const PREFIX: &str = "arn:aws:{service}:us-east-1:123456789012";
        let (service, kind) = match resource_type {
            "AWS::Serverless::Function" | "AWS::Lambda::Function" => ("lambda", "function"),
            "AWS::StepFunctions::Activity" => ("states", "activity"),
            other => {
                return Err(Problem(format!(
                    "no example ARN for {resource} of type {other}"
                )));
            }
        };
        Ok(format!(
            "{}:{kind}:{resource}",
            PREFIX.replace("{service}", service)
        ))
    }
}

/// A function the template builds, and the workspace binary it is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    pub resource: String,
    pub binary: String,
}

#[derive(Debug, Clone)]
pub struct Template {
    pub(crate) parameters: serde_norway::Mapping,
    globals: serde_norway::Mapping,
    resources: serde_norway::Mapping,
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, Problem> {
        let doc: Value = serde_norway::from_str(text)
            .map_err(|e| Problem(format!("template.yaml is not YAML: {e}")))?;
        let resources = doc
            .get("Resources")
            .and_then(Value::as_mapping)
            .cloned()
            .ok_or_else(|| Problem("template.yaml has no Resources".into()))?;
        let section = |name: &str| {
            doc.get(name)
                .and_then(Value::as_mapping)
                .cloned()
                .unwrap_or_default()
        };
        Ok(Template {
            parameters: section("Parameters"),
            globals: section("Globals"),
            resources,
        })
    }

    pub(crate) fn resources_of_type<'a>(
        &'a self,
        wanted: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a Value)> + 'a {
        self.resources.iter().filter_map(move |(id, body)| {
            let id = id.as_str()?;
            (body.get("Type")?.as_str()? == wanted).then_some((id, body))
        })
    }

    pub(crate) fn resource(&self, id: &str) -> Option<&Value> {
        self.resources.get(id)
    }

    fn resource_type(&self, id: &str) -> Option<&str> {
        self.resources.get(id)?.get("Type")?.as_str()
    }

    /// The single `AWS::Serverless::StateMachine`: its `DefinitionUri` and what each
    /// substitution name stands for.
    pub fn state_machine(&self) -> Result<(String, BTreeMap<String, Substitution>), Problem> {
        let mut machines = self.resources_of_type("AWS::Serverless::StateMachine");
        let (id, body) = machines.next().ok_or_else(|| {
            Problem("template.yaml declares no AWS::Serverless::StateMachine".into())
        })?;
        if machines.next().is_some() {
            return Err(Problem(
                "template.yaml declares more than one state machine".into(),
            ));
        }
        let properties = body
            .get("Properties")
            .ok_or_else(|| Problem(format!("{id} has no Properties")))?;
        let uri = properties
            .get("DefinitionUri")
            .and_then(Value::as_str)
            .ok_or_else(|| Problem(format!("{id} has no local DefinitionUri")))?
            .to_string();
        let mut substitutions = BTreeMap::new();
        if let Some(map) = properties
            .get("DefinitionSubstitutions")
            .and_then(Value::as_mapping)
        {
            for (name, value) in map {
                let name = name
                    .as_str()
                    .ok_or_else(|| Problem(format!("{id}: a substitution name is not a string")))?;
                let target = referenced_resource(value).ok_or_else(|| {
                    Problem(format!(
                        "substitution {name} is not a !Ref or !GetAtt of a resource or parameter"
                    ))
                })?;
                let substitution = match self.reference_to(value) {
                    Some(Reference::Parameter { name, default }) => {
                        Substitution::Parameter { name, default }
                    }
                    Some(Reference::Resource {
                        id, resource_type, ..
                    }) => Substitution::Resource {
                        resource: id,
                        resource_type,
                    },
                    None => {
                        return Err(Problem(format!(
                            "substitution {name} refers to unknown resource {target}"
                        )));
                    }
                };
                substitutions.insert(name.to_string(), substitution);
            }
        }
        Ok((uri, substitutions))
    }

    /// Every function built from a workspace binary (`Metadata.BuildProperties.Binary`).
    pub fn functions(&self) -> Vec<Function> {
        self.resources_of_type("AWS::Serverless::Function")
            .filter_map(|(id, body)| {
                let binary = body
                    .get("Metadata")?
                    .get("BuildProperties")?
                    .get("Binary")?
                    .as_str()?;
                Some(Function {
                    resource: id.to_string(),
                    binary: binary.to_string(),
                })
            })
            .collect()
    }
}

impl Template {
    /// A function setting (`Timeout`, `Runtime`, ...), from its Properties or else Globals.
    pub fn function_setting(&self, resource: &str, name: &str) -> Option<&Value> {
        if self.resource_type(resource)? != "AWS::Serverless::Function" {
            return None;
        }
        self.resources
            .get(resource)?
            .get("Properties")
            .and_then(|p| p.get(name))
            .or_else(|| self.globals.get("Function")?.get(name))
    }

    /// A function's environment variables, Globals' included, with each reference to a
    /// parameter or resource answered by `resolve`; a value that is neither a literal
    /// nor a reference (a condition, say), or that `resolve` leaves open, is `None`.
    pub fn environment(
        &self,
        resource: &str,
        resolve: &dyn Fn(&Reference) -> Option<String>,
    ) -> BTreeMap<String, Option<String>> {
        let variables = |body: Option<&Value>| {
            body.and_then(|b| b.get("Environment"))
                .and_then(|e| e.get("Variables"))
                .and_then(Value::as_mapping)
                .cloned()
                .unwrap_or_default()
        };
        let globals = variables(self.globals.get("Function"));
        let own = variables(
            self.resources
                .get(resource)
                .and_then(|r| r.get("Properties")),
        );
        globals
            .iter()
            .chain(own.iter())
            .filter_map(|(name, value)| {
                let value = match value {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    Value::Bool(b) => Some(b.to_string()),
                    // `!If [Condition, a, b]` of two literals: `b`, the value where the
                    // condition does not hold (as deployed with the parameters' defaults).
                    Value::Tagged(tagged)
                        if tagged.tag == "If"
                            && tagged.value.as_sequence().is_some_and(|parts| {
                                parts.len() == 3
                                    && parts[1..].iter().all(|p| matches!(p, Value::String(_)))
                            }) =>
                    {
                        match &tagged.value.as_sequence().expect("checked above")[2] {
                            Value::String(s) => Some(s.clone()),
                            _ => None,
                        }
                    }
                    other => self.reference_to(other).and_then(|r| resolve(&r)),
                };
                Some((name.as_str()?.to_string(), value))
            })
            .collect()
    }

    /// The environment an example deployment would give: parameters at their default,
    /// the stack's resources by ARN (for `!GetAtt` and activities) or logical id.
    pub fn example_environment(&self, resource: &str) -> BTreeMap<String, Option<String>> {
        self.environment(resource, &|reference| match reference {
            Reference::Parameter { default, .. } => default.clone(),
            Reference::Resource {
                id,
                resource_type,
                arn,
            } => {
                if *arn || resource_type == "AWS::StepFunctions::Activity" {
                    example_arn(id, resource_type).ok()
                } else {
                    Some(id.clone())
                }
            }
        })
    }

    pub(crate) fn reference_to(&self, value: &Value) -> Option<Reference> {
        let target = referenced_resource(value)?;
        if let Some(parameter) = self.parameters.get(target.as_str()) {
            let default = match parameter.get("Default") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            return Some(Reference::Parameter {
                name: target,
                default,
            });
        }
        let resource_type = self.resource_type(&target)?.to_string();
        let arn = match value {
            Value::Tagged(tagged) => tagged.tag == "GetAtt",
            _ => value.get("Fn::GetAtt").is_some(),
        };
        Some(Reference::Resource {
            id: target,
            resource_type,
            arn,
        })
    }

    /// The key schema and TTL attribute of the one `AWS::DynamoDB::Table`.
    pub fn table(&self) -> Result<TableSpec, Problem> {
        let (id, body) = self
            .resources_of_type("AWS::DynamoDB::Table")
            .next()
            .ok_or_else(|| Problem("template.yaml declares no DynamoDB table".into()))?;
        let properties = body
            .get("Properties")
            .ok_or_else(|| Problem(format!("{id} has no Properties")))?;
        let list = |field: &str, a: &str, b: &str| -> Vec<(String, String)> {
            properties
                .get(field)
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
                .filter_map(|item| {
                    Some((
                        item.get(a)?.as_str()?.to_string(),
                        item.get(b)?.as_str()?.to_string(),
                    ))
                })
                .collect()
        };
        let ttl_attribute = properties
            .get("TimeToLiveSpecification")
            .filter(|t| t.get("Enabled").and_then(Value::as_bool) == Some(true))
            .and_then(|t| t.get("AttributeName"))
            .and_then(Value::as_str)
            .map(String::from);
        Ok(TableSpec {
            resource: id.to_string(),
            attributes: list("AttributeDefinitions", "AttributeName", "AttributeType"),
            keys: list("KeySchema", "AttributeName", "KeyType"),
            ttl_attribute,
        })
    }
}

/// A reference in the template to a parameter or to one of its resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Parameter {
        name: String,
        default: Option<String>,
    },
    Resource {
        id: String,
        resource_type: String,
        /// `!GetAtt X.Arn` rather than `!Ref X`.
        arn: bool,
    },
}

/// A DynamoDB table as the template declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    pub resource: String,
    /// (name, type) such as ("pk", "S").
    pub attributes: Vec<(String, String)>,
    /// (name, HASH or RANGE).
    pub keys: Vec<(String, String)>,
    pub ttl_attribute: Option<String>,
}

/// The name in `!Ref X` or `{Ref: X}`, whatever it names (a SAM-made role, say).
pub(crate) fn referenced_name(value: &Value) -> Option<&str> {
    match value {
        Value::Tagged(tagged) if tagged.tag == "Ref" => tagged.value.as_str(),
        Value::Mapping(map) => map.get("Ref").and_then(Value::as_str),
        _ => None,
    }
}

/// The logical id in `!Ref X`, `!GetAtt X.Arn`, `{Ref: X}` or `{Fn::GetAtt: [X, Arn]}`.
pub(crate) fn referenced_resource(value: &Value) -> Option<String> {
    let logical = |target: &str| target.split('.').next().map(String::from);
    match value {
        Value::Tagged(tagged) if tagged.tag == "Ref" || tagged.tag == "GetAtt" => {
            tagged.value.as_str().and_then(logical)
        }
        Value::Mapping(map) => {
            if let Some(target) = map.get("Ref").and_then(Value::as_str) {
                return Some(target.to_string());
            }
            match map.get("Fn::GetAtt")? {
                Value::Sequence(parts) => parts.first()?.as_str().map(String::from),
                Value::String(target) => logical(target),
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = r#"
Transform: AWS::Serverless-2016-10-31
Parameters:
  Heartbeat: {Type: Number, Default: 300}
Resources:
  Work:
    Type: AWS::Serverless::Function
    Metadata:
      BuildMethod: rust-cargolambda
      BuildProperties: {Binary: worker}
  Jobs:
    Type: AWS::StepFunctions::Activity
  Machine:
    Type: AWS::Serverless::StateMachine
    Properties:
      DefinitionUri: machine.asl.json
      DefinitionSubstitutions:
        WorkArn: !GetAtt Work.Arn
        JobsArn: !Ref Jobs
        LongForm: {"Fn::GetAtt": [Work, Arn]}
        Beat: !Ref Heartbeat
"#;

    #[test]
    fn substitutions_resolve_to_resources_in_short_and_long_form() {
        let template = Template::parse(TEMPLATE).unwrap();
        let (uri, subs) = template.state_machine().unwrap();
        assert_eq!(uri, "machine.asl.json");
        let resource = |resource: &str, resource_type: &str| Substitution::Resource {
            resource: resource.into(),
            resource_type: resource_type.into(),
        };
        assert_eq!(
            subs["WorkArn"],
            resource("Work", "AWS::Serverless::Function")
        );
        assert_eq!(
            subs["JobsArn"],
            resource("Jobs", "AWS::StepFunctions::Activity")
        );
        assert_eq!(
            subs["LongForm"],
            resource("Work", "AWS::Serverless::Function")
        );
        assert_eq!(
            subs["Beat"],
            Substitution::Parameter {
                name: "Heartbeat".into(),
                default: Some("300".into())
            }
        );
        assert_eq!(subs["Beat"].example_value().unwrap(), "300");
        assert_eq!(
            template.functions(),
            [Function {
                resource: "Work".into(),
                binary: "worker".into()
            }]
        );
    }

    #[test]
    fn example_environments_use_defaults_and_example_arns() {
        let text = format!(
            "{TEMPLATE}{}",
            r#"
Globals:
  Function:
    Timeout: 30
    Environment:
      Variables: {SHARED: "1", PREFIX: !Ref Prefix}
"#
        )
        .replace(
            "      BuildProperties: {Binary: worker}\n",
            "      BuildProperties: {Binary: worker}\n    Properties:\n      Timeout: 90\n      Environment:\n        Variables: {JOBS: !Ref Jobs, SELF: !GetAtt Work.Arn, BUCKET: !Ref Bucket, WHO: !Ref Work}\n",
        )
        .replace(
            "  Heartbeat: {Type: Number, Default: 300}\n",
            "  Heartbeat: {Type: Number, Default: 300}\n  Prefix: {Type: String, Default: raw/}\n  Bucket: {Type: String}\n",
        );
        let template = Template::parse(&text).unwrap();
        let env = template.example_environment("Work");
        let get = |name: &str| env[name].as_deref();
        assert_eq!(get("SHARED"), Some("1"));
        assert_eq!(get("PREFIX"), Some("raw/"));
        assert_eq!(
            get("JOBS"),
            Some("arn:aws:states:us-east-1:123456789012:activity:Jobs")
        );
        assert_eq!(
            get("SELF"),
            Some("arn:aws:lambda:us-east-1:123456789012:function:Work")
        );
        assert_eq!(get("BUCKET"), None);
        assert_eq!(get("WHO"), Some("Work"));
        assert_eq!(
            template
                .function_setting("Work", "Timeout")
                .and_then(Value::as_u64),
            Some(90)
        );
        let local = template.environment("Work", &|reference| match reference {
            Reference::Parameter { name, .. } if name == "Bucket" => Some("local-bucket".into()),
            _ => None,
        });
        assert_eq!(local["BUCKET"].as_deref(), Some("local-bucket"));
        assert_eq!(local["SHARED"].as_deref(), Some("1"));
        assert_eq!(local["JOBS"], None);
        assert_eq!(
            template
                .function_setting("Jobs", "Timeout")
                .and_then(Value::as_u64),
            None
        );
    }

    #[test]
    fn a_substitution_of_an_unknown_resource_is_named() {
        let broken = TEMPLATE.replace("!Ref Jobs", "!Ref Missing");
        let err = Template::parse(&broken)
            .unwrap()
            .state_machine()
            .unwrap_err();
        assert_eq!(
            err.0,
            "substitution JobsArn refers to unknown resource Missing"
        );
    }

    #[test]
    fn the_table_schema_is_read_from_the_template() {
        let template = Template::parse(
            r#"
Resources:
  Runs:
    Type: AWS::DynamoDB::Table
    Properties:
      AttributeDefinitions: [{AttributeName: pk, AttributeType: S}, {AttributeName: sk, AttributeType: S}]
      KeySchema: [{AttributeName: pk, KeyType: HASH}, {AttributeName: sk, KeyType: RANGE}]
      TimeToLiveSpecification: {AttributeName: expires_at, Enabled: true}
"#,
        )
        .unwrap();
        let table = template.table().unwrap();
        assert_eq!(table.resource, "Runs");
        assert_eq!(
            table.keys,
            [("pk".into(), "HASH".into()), ("sk".into(), "RANGE".into())]
        );
        assert_eq!(table.attributes[1], ("sk".into(), "S".into()));
        assert_eq!(table.ttl_attribute.as_deref(), Some("expires_at"));
    }
}
