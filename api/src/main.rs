//! `chorus-api` binary: parse configuration, then hand over to the library.

use anyhow::Context;
use chorus_api::config::{Cli, Command};
use chorus_shared::auth::{claims_for, mint_hs256};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
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
