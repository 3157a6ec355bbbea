use clap::{Parser, Subcommand};

use wopbox::config::{Config, ServeArgs};

#[derive(Parser)]
#[command(
    name = "wopbox",
    version,
    about = "OpenWOP v1 host that runs untrusted node packs in a wasmtime sandbox"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP host.
    Serve(ServeArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("wopbox=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = Config::from_args(args)?;
            wopbox::Host::build(config).await?.serve().await
        }
    }
}
