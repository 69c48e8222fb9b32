//! The project's commands (`cargo xtask`) and what they share with the tests: the local
//! stack and deployment, the demo, the benchmark's mover and an asynchronous-invoke sink.
//! The deployment files themselves are read by the `deployment` crate.

pub mod async_invoke;
pub mod bench;
pub mod demo;
pub mod local;

pub use deployment::Problem;
