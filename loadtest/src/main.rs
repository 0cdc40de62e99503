//! `chorus-loadtest`: parses the command line and runs it (see `cli`).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let ok = chorus_loadtest::cli::main().await?;
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
