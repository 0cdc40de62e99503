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
    chorus_gateway::run(args, listeners, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
