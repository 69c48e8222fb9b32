use lambda_runtime::{Error, LambdaEvent, run, service_fn, tracing};

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
    let slave = slave::Slave::from_env().await;
    run(service_fn(|event: LambdaEvent<serde_json::Value>| {
        slave::handle(&slave, event)
    }))
    .await
}
