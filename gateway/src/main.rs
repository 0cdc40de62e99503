//! `chorus-gateway` binary: parse configuration, then hand over to the library.

use anyhow::Context;
use chorus_gateway::config::GatewayArgs;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = GatewayArgs::parse();
    chorus_shared::telemetry::init_logging(args.log.log_format);
    let listeners = chorus_gateway::Listeners::bind(&args)
        .await
        .context("binding listeners")?;
    chorus_gateway::run(args, listeners, chorus_shared::signal::shutdown()).await?;
    Ok(())
}
