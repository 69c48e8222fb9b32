//! The inline IAM statements the template grants a function, with every `!Sub`, `!Ref`,
//! `!GetAtt` and `!If` resolved, and a small evaluator: enough to check that each call a
//! function makes is allowed, and that nothing is allowed without a reason.

use serde_norway::Value;

use crate::Problem;
use crate::template::{Reference, Template, referenced_name, referenced_resource};

/// One `Allow` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sid: String,
    pub actions: Vec<String>,
    /// ARNs, possibly with `*` wildcards.
    pub resources: Vec<String>,
    /// `Condition: StringLike: s3:prefix: …`, the only condition the template uses.
    pub s3_prefix_like: Option<String>,
}

/// One request's need, as IAM evaluates it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Need {
    pub action: String,
    pub resource: String,
    /// The `s3:prefix` of a listing.
    pub s3_prefix: Option<String>,
}

impl Statement {
    pub fn allows(&self, need: &Need) -> bool {
        self.actions.iter().any(|a| glob(a, &need.action))
            && self.resources.iter().any(|r| glob(r, &need.resource))
            && match (&self.s3_prefix_like, &need.s3_prefix) {
                (None, _) => true,
                (Some(like), Some(prefix)) => glob(like, prefix),
                (Some(_), None) => false,
            }
    }
}

/// IAM's wildcard match: `*` any run of characters, `?` one character.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// How references and conditions resolve in one deployment.
pub struct Deployment<'a> {
    pub partition: &'a str,
    pub region: &'a str,
    pub account: &'a str,
    pub resolve: &'a dyn Fn(&Reference) -> Option<String>,
    pub condition: &'a dyn Fn(&str) -> bool,
}

impl Template {
    /// The statements of a function's (or state machine's) inline policy documents, and
    /// of the `AWS::IAM::Policy` resources attached to the role SAM makes for it
    /// (`<resource>Role`). SAM policy templates (`LambdaInvokePolicy: …`) are not read.
    pub fn policy(&self, resource: &str, at: &Deployment) -> Result<Vec<Statement>, Problem> {
        let inline = self
            .resource(resource)
            .and_then(|r| r.get("Properties"))
            .and_then(|p| p.get("Policies"))
            .and_then(Value::as_sequence)
            .ok_or_else(|| Problem(format!("{resource} has no Policies")))?;
        let role = format!("{resource}Role");
        let attached = self
            .resources_of_type("AWS::IAM::Policy")
            .filter_map(|(_, body)| body.get("Properties"))
            .filter(|properties| {
                properties
                    .get("Roles")
                    .and_then(Value::as_sequence)
                    .into_iter()
                    .flatten()
                    .any(|r| referenced_name(r) == Some(role.as_str()))
            })
            .filter_map(|properties| properties.get("PolicyDocument"));
        let mut statements = Vec::new();
        for document in inline
            .iter()
            .chain(attached)
            .filter_map(|d| d.get("Statement"))
        {
            for statement in document.as_sequence().into_iter().flatten() {
                // `!If [Condition, statement, !Ref AWS::NoValue]`: the statement is there
                // only where its condition holds.
                let statement = match statement {
                    Value::Tagged(tagged) if tagged.tag == "If" => {
                        let parts = tagged
                            .value
                            .as_sequence()
                            .filter(|p| p.len() == 3)
                            .ok_or_else(|| Problem(format!("{resource}: a malformed !If")))?;
                        let condition = parts[0]
                            .as_str()
                            .ok_or_else(|| Problem(format!("{resource}: a malformed !If")))?;
                        let chosen = &parts[if (at.condition)(condition) { 1 } else { 2 }];
                        if referenced_resource(chosen).as_deref() == Some("AWS::NoValue") {
                            continue;
                        }
                        chosen
                    }
                    other => other,
                };
                let sid = statement
                    .get("Sid")
                    .and_then(Value::as_str)
                    .unwrap_or("(no Sid)")
                    .to_string();
                let problem = |what: &str| Problem(format!("{resource} {sid}: {what}"));
                if statement.get("Effect").and_then(Value::as_str) != Some("Allow") {
                    return Err(problem("only Allow statements are understood"));
                }
                let mut s3_prefix_like = None;
                if let Some(condition) = statement.get("Condition") {
                    let like = condition
                        .get("StringLike")
                        .and_then(|c| c.get("s3:prefix"))
                        .filter(|_| condition.as_mapping().is_some_and(|m| m.len() == 1))
                        .ok_or_else(|| {
                            problem("only a StringLike s3:prefix condition is understood")
                        })?;
                    s3_prefix_like = Some(self.string(like, at).map_err(|e| problem(&e.0))?);
                }
                statements.push(Statement {
                    actions: self
                        .strings(statement.get("Action"), at)
                        .map_err(|e| problem(&e.0))?,
                    resources: self
                        .strings(statement.get("Resource"), at)
                        .map_err(|e| problem(&e.0))?,
                    s3_prefix_like,
                    sid,
                });
            }
        }
        Ok(statements)
    }

    fn strings(&self, value: Option<&Value>, at: &Deployment) -> Result<Vec<String>, Problem> {
        match value {
            Some(Value::Sequence(items)) => items.iter().map(|v| self.string(v, at)).collect(),
            // A `CommaDelimitedList` parameter is a list of its comma-separated values.
            Some(v) if self.is_list_parameter(v) => Ok(self
                .string(v, at)?
                .split(',')
                .map(|item| item.trim().to_string())
                .collect()),
            Some(v) => Ok(vec![self.string(v, at)?]),
            None => Err(Problem("missing Action or Resource".into())),
        }
    }

    fn is_list_parameter(&self, value: &Value) -> bool {
        referenced_resource(value)
            .and_then(|name| self.parameters.get(name.as_str()).cloned())
            .and_then(|parameter| {
                parameter
                    .get("Type")
                    .and_then(Value::as_str)
                    .map(String::from)
            })
            .is_some_and(|kind| kind == "CommaDelimitedList")
    }

    /// A string value with its intrinsic functions resolved.
    fn string(&self, value: &Value, at: &Deployment) -> Result<String, Problem> {
        let unresolved = || Problem(format!("cannot resolve {value:?}"));
        match value {
            Value::String(s) => Ok(s.clone()),
            Value::Tagged(tagged) if tagged.tag == "Sub" => match &tagged.value {
                Value::String(text) => self.substitute(text, &Default::default(), at),
                Value::Sequence(parts) if parts.len() == 2 => {
                    let text = parts[0].as_str().ok_or_else(unresolved)?;
                    let mut variables = std::collections::BTreeMap::new();
                    for (name, v) in parts[1].as_mapping().ok_or_else(unresolved)? {
                        let name = name.as_str().ok_or_else(unresolved)?;
                        variables.insert(name.to_string(), self.string(v, at)?);
                    }
                    self.substitute(text, &variables, at)
                }
                _ => Err(unresolved()),
            },
            Value::Tagged(tagged) if tagged.tag == "If" => {
                let parts = tagged.value.as_sequence().filter(|p| p.len() == 3);
                let parts = parts.ok_or_else(unresolved)?;
                let condition = parts[0].as_str().ok_or_else(unresolved)?;
                self.string(&parts[if (at.condition)(condition) { 1 } else { 2 }], at)
            }
            other => self
                .reference_to(other)
                .and_then(|r| (at.resolve)(&r))
                .ok_or_else(unresolved),
        }
    }

    /// `${Name}` and `${AWS::Partition}` in a `!Sub` string.
    fn substitute(
        &self,
        text: &str,
        variables: &std::collections::BTreeMap<String, String>,
        at: &Deployment,
    ) -> Result<String, Problem> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..]
                .find('}')
                .ok_or_else(|| Problem(format!("unclosed ${{ in {text:?}")))?;
            let name = &rest[start + 2..start + end];
            let value = if let Some(v) = variables.get(name) {
                v.clone()
            } else if name == "AWS::Partition" {
                at.partition.to_string()
            } else if name == "AWS::Region" {
                at.region.to_string()
            } else if name == "AWS::AccountId" {
                at.account.to_string()
            } else {
                let reference = Value::Tagged(Box::new(serde_norway::value::TaggedValue {
                    tag: serde_norway::value::Tag::new(if name.contains('.') {
                        "GetAtt"
                    } else {
                        "Ref"
                    }),
                    value: Value::String(name.to_string()),
                }));
                self.string(&reference, at)?
            };
            out.push_str(&value);
            rest = &rest[start + end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_iam_does() {
        assert!(glob("arn:aws:s3:::b/raw/*", "arn:aws:s3:::b/raw/x/y.csv"));
        assert!(!glob(
            "arn:aws:s3:::b/raw/*",
            "arn:aws:s3:::b/refined/y.csv"
        ));
        assert!(glob("s3:*Object", "s3:GetObject"));
        assert!(glob("raw/*", "raw/"));
        assert!(!glob("raw/*", "ra"));
        assert!(glob("a?c", "abc"));
    }

    #[test]
    fn statements_resolve_subs_ifs_and_references() {
        let template = Template::parse(
            r#"
Parameters:
  Prefix: {Type: String, Default: raw/}
  Bucket: {Type: String}
  Other: {Type: String, Default: ""}
Conditions:
  SameBucket: !Equals [!Ref Other, ""]
Resources:
  Table: {Type: AWS::DynamoDB::Table}
  Work:
    Type: AWS::Serverless::Function
    Properties:
      Policies:
        - Statement:
            - Sid: List
              Effect: Allow
              Action: s3:ListBucket
              Resource: !Sub "arn:${AWS::Partition}:s3:::${Bucket}"
              Condition: {StringLike: {s3:prefix: !Sub "${Prefix}*"}}
            - Sid: Write
              Effect: Allow
              Action: [s3:PutObject, dynamodb:PutItem]
              Resource:
                - !Sub
                  - "arn:${AWS::Partition}:s3:::${B}/out/*"
                  - B: !If [SameBucket, !Ref Bucket, !Ref Other]
                - !GetAtt Table.Arn
  WorkExtra:
    Type: AWS::IAM::Policy
    Properties:
      Roles: [!Ref WorkRole]
      PolicyDocument:
        Statement:
          - Sid: History
            Effect: Allow
            Action: states:GetExecutionHistory
            Resource: !Sub "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:execution:${Table.Arn}:*"
  OtherExtra:
    Type: AWS::IAM::Policy
    Properties:
      Roles: [!Ref OtherRole]
      PolicyDocument:
        Statement:
          - {Sid: NotWork, Effect: Allow, Action: "s3:GetObject", Resource: "*"}
"#,
        )
        .unwrap();
        let resolve = |r: &Reference| match r {
            Reference::Parameter { name, default } => match name.as_str() {
                "Bucket" => Some("data".to_string()),
                _ => default.clone(),
            },
            Reference::Resource { id, .. } => Some(format!("arn:aws:dynamodb:::table/{id}")),
        };
        let at = Deployment {
            partition: "aws",
            region: "eu-west-1",
            account: "111122223333",
            resolve: &resolve,
            condition: &|c| c == "SameBucket",
        };
        let statements = template.policy("Work", &at).unwrap();
        assert_eq!(statements[0].resources, ["arn:aws:s3:::data"]);
        assert_eq!(statements[0].s3_prefix_like.as_deref(), Some("raw/*"));
        assert_eq!(
            statements[1].resources,
            ["arn:aws:s3:::data/out/*", "arn:aws:dynamodb:::table/Table"]
        );
        let need = |action: &str, resource: &str, prefix: Option<&str>| Need {
            action: action.into(),
            resource: resource.into(),
            s3_prefix: prefix.map(String::from),
        };
        assert!(statements[0].allows(&need("s3:ListBucket", "arn:aws:s3:::data", Some("raw/a/"))));
        assert!(!statements[0].allows(&need("s3:ListBucket", "arn:aws:s3:::data", Some("x/"))));
        assert!(!statements[0].allows(&need("s3:ListBucket", "arn:aws:s3:::data", None)));
        assert!(statements[1].allows(&need("s3:PutObject", "arn:aws:s3:::data/out/a", None)));
        assert!(!statements[1].allows(&need("s3:GetObject", "arn:aws:s3:::data/out/a", None)));
        // a policy attached to the function's role counts; one attached to another does not
        assert_eq!(
            statements
                .iter()
                .map(|s| s.sid.as_str())
                .collect::<Vec<_>>(),
            ["List", "Write", "History"]
        );
        assert_eq!(
            statements[2].resources,
            ["arn:aws:states:eu-west-1:111122223333:execution:arn:aws:dynamodb:::table/Table:*"]
        );
    }

    #[test]
    fn a_statement_under_if_is_there_only_where_its_condition_holds_and_a_list_is_its_items() {
        let template = Template::parse(
            r#"
Parameters:
  Keys: {Type: CommaDelimitedList, Default: ""}
Conditions:
  UsesKeys: !Not [!Equals [!Join ["", !Ref Keys], ""]]
Resources:
  Work:
    Type: AWS::Serverless::Function
    Properties:
      Policies:
        - Statement:
            - {Sid: Always, Effect: Allow, Action: s3:GetObject, Resource: "arn:aws:s3:::b/*"}
            - !If
              - UsesKeys
              - Sid: Keys
                Effect: Allow
                Action: [kms:Decrypt, kms:GenerateDataKey]
                Resource: !Ref Keys
              - !Ref AWS::NoValue
"#,
        )
        .unwrap();
        let resolve = |r: &Reference| match r {
            Reference::Parameter { .. } => Some("arn:aws:kms:::key/a,arn:aws:kms:::key/b".into()),
            Reference::Resource { .. } => None,
        };
        let deployment = |keys: bool| -> Vec<Statement> {
            let condition = move |c: &str| keys && c == "UsesKeys";
            let at = Deployment {
                partition: "aws",
                region: "eu-west-1",
                account: "111122223333",
                resolve: &resolve,
                condition: &condition,
            };
            template.policy("Work", &at).unwrap()
        };
        let without = deployment(false);
        assert_eq!(
            without.iter().map(|s| s.sid.as_str()).collect::<Vec<_>>(),
            ["Always"]
        );
        let with = deployment(true);
        assert_eq!(with[1].sid, "Keys");
        assert_eq!(with[1].actions, ["kms:Decrypt", "kms:GenerateDataKey"]);
        assert_eq!(
            with[1].resources,
            ["arn:aws:kms:::key/a", "arn:aws:kms:::key/b"]
        );
    }
}
