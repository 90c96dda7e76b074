//! `sfu`: one SFU node. See services/sfu/PROTOCOL.md and deploy/sfu.toml.

use crate::config::Layered;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "sfu",
    version,
    about = "turnkey SFU node (WebRTC selective forwarding)"
)]
struct Cli {
    #[command(flatten)]
    args: crate::config::SfuArgs,
}

pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = cli.args.resolve(&crate::config::Defaults::default())?;
    turnkey_runtime::logging::init(cfg.log_json, "info");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(async move {
            // The first SIGTERM or ctrl-c drains the node (a second one exits at once).
            let drain =
                crate::run::Drain::new(std::time::Duration::from_secs(cfg.drain_timeout_secs));
            drain.start_on_signal();
            turnkey_runtime::shutdown::ignore_hangups("sfu");
            let never = tokio_util::sync::CancellationToken::new();
            crate::run::serve(cfg, None, drain, never, |r| {
                tracing::info!(link = %r.link, metrics = %r.metrics, media = ?r.media, "ready");
            })
            .await
        })?;
    Ok(())
}
