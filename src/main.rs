//! The `fusebox` binary: parses the command line and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use fusebox::telemetry::logging::{self, LogFormat};
use fusebox::{App, Config};

/// mimalloc: hyper allocates a few small objects per request; measured
/// +10-20% requests/s over glibc malloc in the load comparison.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "fusebox", version = fusebox::build::VERSION, about = "A sidecar reverse proxy with a circuit breaker per upstream")]
struct Cli {
    /// Log format (filter with RUST_LOG, e.g. RUST_LOG=debug).
    #[arg(long, value_enum, default_value = "text", global = true, env = "FUSEBOX_LOG_FORMAT")]
    log_format: CliLogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        #[arg(short, long, default_value = "config/fusebox.yaml", env = "FUSEBOX_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file, and the files it names as `run` would;
    /// exits non-zero with every error found.
    Check {
        #[arg(short, long, default_value = "config/fusebox.yaml", env = "FUSEBOX_CONFIG")]
        config: PathBuf,
        /// Leave out what `run` checks at start (TLS certificate and key,
        /// store path): for a config written for another machine.
        #[arg(long)]
        skip_file_checks: bool,
    },
    /// Run the proxy on a built-in config with built-in demo upstreams
    /// (healthy, flaky, slow) and traffic, to watch circuits trip and recover.
    Demo {
        /// Data listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Admin listener (health, metrics, dashboard).
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: std::net::SocketAddr,
        /// Stop after this long (e.g. 90s); runs until Ctrl-C by default.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
    },
    /// Live view of every circuit from the state WebSocket: a table redrawn
    /// in place on a terminal, one line per change when piped.
    Watch {
        /// The state WebSocket of a running fusebox's admin listener.
        #[arg(long, default_value = fusebox::watch::DEFAULT_URL)]
        url: String,
        /// JWT for `auth.jwt` configs (sent as the WebSocket subprotocol).
        #[arg(long, env = "FUSEBOX_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Print the version, the git commit it was built from and the target.
    Version,
    /// GET a URL of the admin listener once; exit 0 on a 2xx answer within
    /// the timeout, 1 otherwise (Docker's HEALTHCHECK in an image without curl).
    Healthcheck {
        #[arg(default_value = fusebox::healthcheck::DEFAULT_URL)]
        url: String,
        /// Give up after this long (e.g. 2s, 500ms).
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Mint an admin JWT (HS256) signed with the config's `auth.jwt` secret,
    /// and print it. Needs the secret (its env variable or file) at hand.
    Token {
        #[arg(short, long, default_value = "config/fusebox.yaml", env = "FUSEBOX_CONFIG")]
        config: PathBuf,
        /// `sub` claim: who the audit log names for this token's actions.
        #[arg(long)]
        sub: String,
        /// Role claim [default: the config's auth.jwt.adminRole].
        #[arg(long)]
        role: Option<String>,
        /// Lifetime (e.g. 15m, 1h, 7d); at most 366 days.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
    /// Print a shell completion script, e.g.
    /// `fusebox completions bash > /etc/bash_completion.d/fusebox`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the config file's JSON Schema (docs/fusebox.schema.json), for
    /// editors' YAML language servers and validators.
    Schema,
}

/// `--log-format` (clap stays in the binary, out of the library).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CliLogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(match cli.log_format {
        CliLogFormat::Text => LogFormat::Text,
        CliLogFormat::Json => LogFormat::Json,
    });
    let result = match cli.command {
        Command::Check { config, skip_file_checks } => return check(&config, !skip_file_checks),
        Command::Run { config: path } => match Config::load(&path) {
            Ok(config) => runtime(1).and_then(|rt| rt.block_on(run(config, Some(path)))),
            Err(errors) => {
                eprintln!("{errors}");
                return ExitCode::from(2);
            }
        },
        Command::Watch { url, token } => runtime(1)
            .and_then(|rt| rt.block_on(fusebox::watch::run(fusebox::watch::WatchOptions { url, token })).map_err(anyhow::Error::from)),
        Command::Demo { listen, admin, duration } => {
            runtime(0).and_then(|rt| rt.block_on(fusebox::demo::run(listen, admin, duration)).map_err(anyhow::Error::from))
        }
        Command::Version => {
            println!("{}", fusebox::build::describe());
            Ok(())
        }
        Command::Healthcheck { url, timeout } => return healthcheck(&url, timeout),
        Command::Token { config, sub, role, ttl } => return token(&config, sub, role, ttl),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "fusebox", &mut std::io::stdout());
            Ok(())
        }
        Command::Schema => {
            print!("{}", fusebox::config::schema::config_schema_text());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fusebox: {e:#}");
            if let Some(hint) = hint(&e) {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

/// What to do about a start-up error an operator commonly meets.
fn hint(e: &anyhow::Error) -> Option<&'static str> {
    let io = e.chain().find_map(|c| match c.downcast_ref::<fusebox::app::AppError>() {
        Some(fusebox::app::AppError::Bind(io)) => Some(io),
        _ => c.downcast_ref::<std::io::Error>(),
    })?;
    match io.kind() {
        std::io::ErrorKind::AddrInUse => {
            Some("another process holds that port (`ss -ltnp` shows which); stop it, or change `listen:` / `admin.listen:` in the config")
        }
        std::io::ErrorKind::PermissionDenied => Some("ports below 1024 need root or CAP_NET_BIND_SERVICE; use a port above 1024"),
        _ => None,
    }
}

/// `fusebox check`: the config's own checks, then the file checks `run`
/// makes at start (`app::preflight`).
fn check(path: &std::path::Path, files: bool) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
    };
    if files {
        let text = fusebox::config::read_small_file(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        let problems = fusebox::app::preflight(&config, &text);
        if !problems.is_empty() {
            eprintln!("{}", fusebox::config::ConfigErrors { file: Some(path.to_path_buf()), errors: problems });
            return ExitCode::from(2);
        }
    }
    let skipped = if files { "" } else { "; TLS and store files not checked" };
    let shown = path.display().to_string();
    println!(
        "{}: ok ({} upstreams, {} routes{skipped})",
        fusebox::text::escape_controls(&shown),
        config.upstreams.len(),
        config.routes.len()
    );
    ExitCode::SUCCESS
}

/// `fusebox healthcheck`: 0 for a 2xx, 1 with one line on stderr otherwise.
fn healthcheck(url: &str, timeout: std::time::Duration) -> ExitCode {
    match fusebox::healthcheck::probe(url, timeout) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fusebox healthcheck {}: {e}", fusebox::text::escape_controls(url));
            ExitCode::FAILURE
        }
    }
}

/// `fusebox token`: the token on stdout (and nothing else, for `$(...)`).
fn token(path: &std::path::Path, subject: String, role: Option<String>, ttl: std::time::Duration) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
    };
    let request = fusebox::admin::token::TokenRequest { subject, role, ttl };
    match fusebox::admin::token::mint(&config.auth, &request, std::time::SystemTime::now()) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fusebox token: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A current-thread runtime for `workers: 1` (`run`, `watch`: `run` adds
/// its own worker threads); otherwise a multi-thread runtime with
/// `workers` threads, or one per core for 0 (`demo`).
fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = if workers == 1 { tokio::runtime::Builder::new_current_thread() } else { tokio::runtime::Builder::new_multi_thread() };
    b.enable_all();
    if workers > 1 {
        b.worker_threads(workers);
    }
    b.build().context("cannot start the tokio runtime")
}

/// `fusebox run`: one data-path worker per `workers` (0: one per core),
/// each a thread with a current-thread runtime and its own listener; the
/// first shares the main thread with the admin listener.
async fn run(config: Config, path: Option<PathBuf>) -> anyhow::Result<()> {
    let workers = match config.workers {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        n => n,
    };
    let app = App::start_workers(config, path, workers).await?;
    fusebox::app::until_signal(&app).await;
    app.shutdown().await;
    Ok(())
}
