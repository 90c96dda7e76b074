//! `turn-server`: the TURN relay (answers STUN Binding too). See `turn-server --help`.

use crate::config::Layered;
use crate::config::{Defaults, ServerArgs};
use clap::{Parser, Subcommand};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};
use stun_proto::credential::mint_rest_credential;

#[derive(Parser)]
#[command(
    name = "turn-server",
    version,
    about = "turnkey TURN server (RFC 8656)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    args: ServerArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Print a TURN REST API credential as JSON: {"username","password","ttl"}.
    Credentials {
        /// The shared secret (same as the server's --auth-secret; from TURNKEY_AUTH_SECRETS, the
        /// first of a comma-separated list signs).
        #[arg(
            long,
            env = "TURNKEY_AUTH_SECRETS",
            value_delimiter = ',',
            required = true,
            hide_env_values = true
        )]
        secret: Vec<String>,
        /// The user name part.
        #[arg(long)]
        user: String,
        /// Seconds the credential is valid.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
    },
    /// Translate a coturn turnserver.conf into this server's TOML config, printed to stdout.
    ///
    /// Every coturn option of the file is listed in comments at the top of the output, one
    /// line each: `# mapped: line N: OPTION: KEYS`, `# default: line N: OPTION: WHY` (turnkey
    /// already behaves so) or `# unmapped: line N: OPTION: WHY` (not carried over, with what to
    /// do instead); stderr gets a one-line count. Secrets (user, static-auth-secret) are copied
    /// into the TOML. Exit status 0 when the file was read, even with unmapped options; 2 when
    /// it cannot be read or a line is invalid (the message names the line).
    #[command(name = "import-coturn")]
    ImportCoturn {
        /// coturn's configuration file (e.g. /etc/turnserver.conf).
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// Exit status of `import-coturn` when the file cannot be read or is invalid.
const IMPORT_FAILED: i32 = 2;

/// `turn-server import-coturn FILE`: the TOML on stdout, a count on stderr; exits with
/// [`IMPORT_FAILED`] and a message naming the file (and line) when it cannot.
fn import_coturn(file: &Path) -> anyhow::Result<()> {
    let text = match std::fs::read(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "turn-server import-coturn: cannot read {}: {e}",
                file.display()
            );
            std::process::exit(IMPORT_FAILED);
        }
    };
    let import = match crate::coturn::import(&text) {
        Ok(i) => i,
        Err(e) => {
            let line = e.line();
            eprintln!(
                "turn-server import-coturn: {}:{line}: invalid coturn configuration: {e}",
                file.display()
            );
            std::process::exit(IMPORT_FAILED);
        }
    };
    let mut out = std::io::stdout().lock();
    out.write_all(import.toml.as_bytes())?;
    out.flush()?;
    eprintln!(
        "turn-server import-coturn: {}: {} option lines mapped, {} already turnkey's default, {} unmapped (listed with why at the top of the output)",
        file.display(),
        import.mapped.len(),
        import.already_default.len(),
        import.unmapped.len()
    );
    Ok(())
}

pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::ImportCoturn { file }) = &cli.command {
        return import_coturn(file);
    }
    if let Some(Command::Credentials { secret, user, ttl }) = cli.command {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let Some(secret) = secret.first().filter(|s| !s.is_empty()) else {
            anyhow::bail!("--secret (or TURNKEY_AUTH_SECRETS) is empty");
        };
        let c = mint_rest_credential(secret, &user, ttl, now);
        println!("{}", serde_json::to_string(&c)?);
        return Ok(());
    }
    let cfg = cli.args.resolve(&Defaults::default())?;
    turnkey_runtime::logging::init(cfg.log_json, "info");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(cfg))
}

async fn run(cfg: crate::config::TurnConfig) -> anyhow::Result<()> {
    crate::run::run_until_signal(&cfg, |_| {}).await?;
    Ok(())
}
