// The handler's future nests the listing's and the manifest's pages, each joined with
// the next page's read: computing its layout in a release build goes deeper than the
// default limit of 128 queries.
#![recursion_limit = "256"]

use lambda_runtime::{Error, LambdaEvent, run, service_fn, tracing};

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
    let master = master::Master::from_env().await;
    run(service_fn(|event: LambdaEvent<serde_json::Value>| {
        master::handle(&master, event)
    }))
    .await
}
