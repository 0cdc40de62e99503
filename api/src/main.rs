//! `chorus-api` binary: parse configuration, then hand over to the library.

use anyhow::Context;
use chorus_api::config::{Cli, Command};
use chorus_shared::auth::{claims_for, mint_hs256};
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let workers = match &cli.command {
        Command::Serve(args) => args.worker_threads,
        _ => 1,
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        runtime.worker_threads(workers);
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("starting the runtime")?;
    // Spawned, so that the listeners' accept loops run on the workers too:
    // a connection's task then starts on the thread that accepted it.
    let done = runtime.block_on(runtime.spawn(command(cli.command)));
    match done {
        Ok(result) => result,
        // A panic ends the process as a panic in `main` would.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(e.into()),
    }
}

async fn command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            chorus_shared::telemetry::init_logging(args.log.log_format);
            let listeners = chorus_api::Listeners::bind(&args)
                .await
                .context("binding listeners")?;
            chorus_api::run(*args, listeners, chorus_shared::signal::shutdown()).await?;
        }
        Command::Migrate(db) => {
            chorus_shared::telemetry::init_logging(chorus_shared::config::LogFormat::Text);
            let store = chorus_api::store::PgStore::connect_lazy(
                &db.database_url,
                1,
                std::sync::Arc::new(tokio::sync::Notify::new()),
                None,
                std::time::Duration::ZERO,
            )?;
            store.migrate().await.context("running migrations")?;
            store.close().await;
            eprintln!("migrations applied");
        }
        Command::Token(t) => {
            let claims = claims_for(&t.sub, t.name.as_deref(), t.role.into(), t.ttl.as_secs());
            let token = mint_hs256(&t.jwt_secret, &claims).context("signing the token")?;
            #[allow(clippy::print_stdout)]
            {
                println!("{token}");
            }
        }
        Command::Openapi => {
            #[allow(clippy::print_stdout)]
            {
                print!("{}", chorus_api::routes::openapi::document());
            }
        }
    }
    Ok(())
}
