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
    /// Call a running server's admin API (`--admin-listen`) and print its JSON answer.
    Admin {
        #[command(subcommand)]
        action: AdminAction,
        /// The admin API's address.
        #[arg(long = "url", default_value = "http://127.0.0.1:9640", global = true)]
        url: String,
        /// The server's admin token.
        #[arg(
            long = "token",
            value_name = "TOKEN",
            env = "TURNKEY_ADMIN_TOKEN",
            hide_env_values = true,
            global = true
        )]
        token: Option<String>,
    },
    /// Change the fleet state in Redis that every node with --redis / --redis-sentinel watches
    /// (each change is one MULTI with an INCR of turnkey:turn:version; nodes poll it every
    /// second): rotate the REST secrets, add or remove static users.
    Fleet {
        #[command(subcommand)]
        action: FleetAction,
        /// The fleet's Redis (redis://[:password@]host:port/db); with --redis-sentinel only its
        /// password and database are used.
        #[arg(
            long = "redis",
            value_name = "URL",
            env = "TURNKEY_REDIS_URL",
            hide_env_values = true,
            global = true
        )]
        redis: Option<String>,
        /// Redis Sentinel HOST:PORT (repeatable).
        #[arg(long = "redis-sentinel", value_name = "HOST:PORT", global = true)]
        redis_sentinel: Vec<String>,
        /// The master's name at the Sentinels.
        #[arg(
            long = "redis-master",
            value_name = "NAME",
            default_value = "mymaster",
            global = true
        )]
        redis_master: String,
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

/// `turn-server fleet ...`.
#[derive(Subcommand)]
enum FleetAction {
    /// Replace the REST secrets: comma-separated, the first is the newest (it signs), the others
    /// still validate. Rotating is `set-secrets NEW,OLD`, then later `set-secrets NEW`.
    #[command(name = "set-secrets")]
    SetSecrets {
        /// SECRET[,SECRET...] (or `-` to read them from stdin, one line, so they stay out of
        /// the process list).
        #[arg(value_name = "SECRETS")]
        secrets: String,
    },
    /// Add or replace a static user NAME:PASSWORD (or `-` to read it from stdin).
    #[command(name = "set-user")]
    SetUser {
        /// NAME:PASSWORD.
        #[arg(value_name = "NAME:PASSWORD")]
        user: String,
    },
    /// Remove a static user (its live allocations stay until they end or are ended through
    /// the admin API; its next request fails authentication).
    #[command(name = "remove-user")]
    RemoveUser {
        /// The user name.
        name: String,
    },
    /// The version, the number of REST secrets and the user names (no secret, no password).
    Show,
}

/// Reads one line from stdin when `value` is `-`.
fn value_or_stdin(value: String) -> anyhow::Result<String> {
    if value != "-" {
        return Ok(value);
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Runs `turn-server fleet ...`: one atomic change, a one-line JSON answer.
fn fleet(
    action: FleetAction,
    redis: Option<String>,
    sentinels: Vec<String>,
    master: String,
) -> anyhow::Result<()> {
    use crate::io::fleet;
    if redis.is_none() && sentinels.is_empty() {
        anyhow::bail!("--redis (or TURNKEY_REDIS_URL) or --redis-sentinel is needed");
    }
    let cfg = crate::config::FleetConfig {
        redis: redis.filter(|u| !u.is_empty()),
        sentinels,
        master,
    };
    let client = fleet::FleetRedis::new(&cfg)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(async {
        Ok::<_, fleet::FleetError>(match action {
            FleetAction::SetSecrets { secrets } => {
                let secrets: Vec<String> = value_or_stdin(secrets)
                    .map_err(|e| fleet::FleetError::Config(e.to_string()))?
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                let n = secrets.len();
                let version = fleet::set_secrets(&client, &secrets).await?;
                serde_json::json!({"auth_secrets": n, "version": version})
            }
            FleetAction::SetUser { user } => {
                let user =
                    value_or_stdin(user).map_err(|e| fleet::FleetError::Config(e.to_string()))?;
                let Some((name, pw)) = user.split_once(':') else {
                    return Err(fleet::FleetError::Config(
                        "the user must be NAME:PASSWORD (the password is not shown)".into(),
                    ));
                };
                let version = fleet::set_user(&client, name, pw).await?;
                serde_json::json!({"user": name, "version": version})
            }
            FleetAction::RemoveUser { name } => {
                let (removed, version) = fleet::remove_user(&client, &name).await?;
                serde_json::json!({"user": name, "removed": removed, "version": version})
            }
            FleetAction::Show => fleet::show(&client).await?,
        })
    })?;
    println!("{out}");
    Ok(())
}

/// `turn-server admin ...`.
#[derive(Subcommand)]
enum AdminAction {
    /// List live allocations (`GET /v1/allocations`).
    Allocations {
        /// Only this user's.
        #[arg(long = "user")]
        user: Option<String>,
        /// Only this client: an IP address or IP:port.
        #[arg(long = "client")]
        client: Option<String>,
        /// At most this many (1-10000). Default 1000.
        #[arg(long = "limit")]
        limit: Option<usize>,
    },
    /// Show one allocation (`GET /v1/allocations/{id}`).
    Show {
        /// The allocation id.
        id: u64,
    },
    /// End one allocation (`--id`) or every allocation of a user (`--user`); the client's next
    /// request gets 437.
    End {
        /// The allocation id.
        #[arg(long = "id", required_unless_present = "user", conflicts_with = "user")]
        id: Option<u64>,
        /// The user.
        #[arg(long = "user")]
        user: Option<String>,
    },
    /// Draining: `start` (new allocations refused or sent to an alternate server), `stop`,
    /// `status`. `start --exit` drains to exit, as SIGTERM does: the server exits once its
    /// allocations end or drain_timeout_secs passes, and `stop` can no longer undo it.
    Drain {
        /// start, stop or status.
        #[arg(value_enum)]
        action: DrainAction,
        /// With `start`: drain to exit (`POST /v1/drain?exit=true`).
        #[arg(long = "exit")]
        exit: bool,
    },
    /// The effective configuration, secrets redacted.
    Config,
    /// Each worker's load.
    Workers,
    /// Bandwidth caps (bits per second of relayed payload, each direction; 0: none). Without
    /// options, shows the live server-wide caps (`GET /v1/bandwidth`); with some, changes them
    /// for every allocation, existing ones included (`PUT /v1/bandwidth`); with `--id` and
    /// `--bps`, gives one allocation its own cap, 0 returning it to the server-wide one
    /// (`PUT /v1/allocations/{id}/bandwidth`).
    Bandwidth {
        /// Per allocation.
        #[arg(long = "allocation-bps", value_name = "BPS", conflicts_with = "id")]
        allocation_bps: Option<u64>,
        /// Per user.
        #[arg(long = "user-bps", value_name = "BPS", conflicts_with = "id")]
        user_bps: Option<u64>,
        /// Whole server.
        #[arg(long = "total-bps", value_name = "BPS", conflicts_with = "id")]
        total_bps: Option<u64>,
        /// Bucket depth, milliseconds of each cap's rate (1-10000).
        #[arg(long = "burst-ms", value_name = "MS", conflicts_with = "id")]
        burst_ms: Option<u64>,
        /// One allocation (with `--bps`).
        #[arg(long = "id", requires = "bps")]
        id: Option<u64>,
        /// That allocation's own cap; 0: back to the server-wide cap.
        #[arg(long = "bps", value_name = "BPS", requires = "id")]
        bps: Option<u64>,
    },
    /// The nodes of the fleet (fleet state in Redis), with their allocation counts
    /// (`GET /v1/fleet`).
    Fleet,
    /// The allocations of the whole fleet, each with its node (`GET /v1/fleet/allocations`).
    #[command(name = "fleet-allocations")]
    FleetAllocations {
        /// Only this user's.
        #[arg(long = "user")]
        user: Option<String>,
        /// Only this node's.
        #[arg(long = "node")]
        node: Option<String>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DrainAction {
    Start,
    Stop,
    Status,
}

/// Runs `turn-server admin ...`: one HTTP call, the JSON answer on stdout; an API error is
/// printed with its status and the exit status is 1.
fn admin(action: AdminAction, url: &str, token: Option<&str>) -> anyhow::Result<()> {
    let token = token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| anyhow::anyhow!("--token (or TURNKEY_ADMIN_TOKEN) is needed"))?;
    let auth = format!("Bearer {token}");
    let base = url.trim_end_matches('/');
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .build()
        .into();
    let mut query: Vec<(&str, String)> = Vec::new();
    let mut body: Option<serde_json::Value> = None;
    let (method, path) = match &action {
        AdminAction::Allocations {
            user,
            client,
            limit,
        } => {
            if let Some(u) = user {
                query.push(("user", u.clone()));
            }
            if let Some(c) = client {
                query.push(("client", c.clone()));
            }
            if let Some(l) = limit {
                query.push(("limit", l.to_string()));
            }
            ("GET", "/v1/allocations".to_string())
        }
        AdminAction::Show { id } => ("GET", format!("/v1/allocations/{id}")),
        AdminAction::End { id: Some(id), .. } => ("DELETE", format!("/v1/allocations/{id}")),
        AdminAction::End { user, .. } => {
            query.push(("user", user.clone().unwrap_or_default()));
            ("DELETE", "/v1/allocations".to_string())
        }
        AdminAction::Drain { action, exit } => match action {
            DrainAction::Start => {
                if *exit {
                    query.push(("exit", "true".to_string()));
                }
                ("POST", "/v1/drain".to_string())
            }
            DrainAction::Stop | DrainAction::Status if *exit => {
                anyhow::bail!("--exit goes with `drain start`")
            }
            DrainAction::Stop => ("DELETE", "/v1/drain".to_string()),
            DrainAction::Status => ("GET", "/v1/drain".to_string()),
        },
        AdminAction::Config => ("GET", "/v1/config".to_string()),
        AdminAction::Workers => ("GET", "/v1/workers".to_string()),
        AdminAction::Bandwidth {
            id: Some(id), bps, ..
        } => {
            body = Some(serde_json::json!({ "bps": bps.unwrap_or(0) }));
            ("PUT", format!("/v1/allocations/{id}/bandwidth"))
        }
        AdminAction::Bandwidth {
            allocation_bps,
            user_bps,
            total_bps,
            burst_ms,
            ..
        } => {
            let mut set = serde_json::Map::new();
            for (k, v) in [
                ("allocation_bps", allocation_bps),
                ("user_bps", user_bps),
                ("total_bps", total_bps),
                ("burst_ms", burst_ms),
            ] {
                if let Some(v) = v {
                    set.insert(k.to_string(), (*v).into());
                }
            }
            if set.is_empty() {
                ("GET", "/v1/bandwidth".to_string())
            } else {
                body = Some(serde_json::Value::Object(set));
                ("PUT", "/v1/bandwidth".to_string())
            }
        }
        AdminAction::Fleet => ("GET", "/v1/fleet".to_string()),
        AdminAction::FleetAllocations { user, node } => {
            if let Some(u) = user {
                query.push(("user", u.clone()));
            }
            if let Some(n) = node {
                query.push(("node", n.clone()));
            }
            ("GET", "/v1/fleet/allocations".to_string())
        }
    };
    let target = format!("{base}{path}");
    let q = query.iter().map(|(k, v)| (*k, v.as_str()));
    let res = match method {
        "POST" => agent
            .post(&target)
            .header("Authorization", &auth)
            .query_pairs(q)
            .send_empty(),
        "DELETE" => agent
            .delete(&target)
            .header("Authorization", &auth)
            .query_pairs(q)
            .call(),
        "PUT" => agent
            .put(&target)
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .query_pairs(q)
            .send(body.unwrap_or_default().to_string()),
        _ => agent
            .get(&target)
            .header("Authorization", &auth)
            .query_pairs(q)
            .call(),
    };
    let mut res = res.map_err(|e| anyhow::anyhow!("{method} {target}: {e}"))?;
    let status = res.status().as_u16();
    let text = res.body_mut().read_to_string().unwrap_or_default();
    if status >= 400 {
        let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let msg = body["error"]["message"].as_str().unwrap_or(text.trim());
        anyhow::bail!("{method} {target}: HTTP {status}: {msg}");
    }
    println!("{}", text.trim());
    Ok(())
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
    if let Some(Command::Admin { action, url, token }) = cli.command {
        return admin(action, &url, token.as_deref());
    }
    if let Some(Command::Fleet {
        action,
        redis,
        redis_sentinel,
        redis_master,
    }) = cli.command
    {
        return fleet(action, redis, redis_sentinel, redis_master);
    }
    let args = cli.args;
    let cfg = args.clone().resolve(&Defaults::default())?;
    let log =
        turnkey_runtime::logging::init_reloadable(cfg.log_json, cfg.log_level.as_deref(), "info");
    // SIGHUP and a change of the --config file read the configuration again (flags and
    // environment on top, as at start).
    let reload = crate::run::Reload {
        watch: args.config.clone(),
        resolve: Box::new(move || {
            args.clone()
                .resolve(&Defaults::default())
                .map_err(|e| e.to_string())
        }),
        log,
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(cfg, reload))
}

async fn run(cfg: crate::config::TurnConfig, reload: crate::run::Reload) -> anyhow::Result<()> {
    // The first SIGTERM/SIGINT starts the drain (a second exits at once), as does
    // `POST /admin/drain`; the process exits 0 once it has finished.
    let drain =
        turnkey_runtime::drain::Drain::new(std::time::Duration::from_secs(cfg.drain_timeout_secs));
    drain.start_on_signal();
    crate::run::serve_with_drain(&cfg, Some(reload), drain, |_| {}).await?;
    Ok(())
}
