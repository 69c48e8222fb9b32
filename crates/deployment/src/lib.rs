//! The deployment files read as data, for the project's commands and for the tests that
//! hold the files to the code: the SAM template (`template.yaml`), the state machine
//! definition (`statemachine.asl.json`) and its diagram, and the IAM policies the
//! template grants each function.

pub mod definition;
pub mod diagram;
pub mod policy;
pub mod template;

/// Something wrong with a deployment file, said so a reader can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Problem(pub String);
