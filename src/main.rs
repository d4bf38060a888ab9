//! The `tonari` binary.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tonari::{App, Config};

/// Tonari: an end-to-end encrypted (MLS) messaging server for the people who
/// look after one patient. The server stores and forwards ciphertext only.
#[derive(Parser)]
#[command(name = "tonari", version, about, long_about = None)]
struct Cli {
    /// Config file (TOML). Every key can be overridden with TONARI_<KEY>.
    #[arg(long, short, global = true, env = "TONARI_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (SQLite in WAL mode under data_dir, created on first start;
    /// migrations are applied automatically). Stops gracefully on Ctrl-C/SIGTERM.
    Serve,
    /// Print a commented example config file with every key and its default.
    ConfigExample,
    /// Load the config (file + environment) and print the effective values.
    CheckConfig,
    /// Create a one-time invitation code for an admin of an organisation
    /// (created if missing) and print it. Use `--kind operator` for the
    /// server operator's own admins (they create the other organisations).
    /// Works next to a running server.
    AdminInvite {
        /// The organisation's name.
        #[arg(long)]
        org: String,
        /// clinic, hospital, home_care_agency, pharmacy, dental_clinic,
        /// care_management_office, municipality or operator.
        #[arg(long)]
        kind: tonari_wire::OrgKind,
    },
    /// Start a demo: a server on SQLite with a demo organisation, a patient's
    /// care room (doctor, nurse, care manager, pharmacist, family), the bots
    /// and sample lab results flowing in; prints how to log in with the CLI.
    /// Local use only (known passwords, no TOTP). Run again to resume it.
    Demo {
        /// Data directory of the demo.
        #[arg(long, default_value = "tonari-demo")]
        data_dir: PathBuf,
        /// Address for HTTP and WebSocket.
        #[arg(long, default_value = "127.0.0.1:8480")]
        listen: std::net::SocketAddr,
        /// Address of the MLLP (HL7 v2) listener.
        #[arg(long, default_value = "127.0.0.1:2575")]
        mllp: String,
    },
    /// Run the bots (lab-bot, summary-bot) as a separate process next to a
    /// server started with bots_enabled = false, sharing its data_dir (the
    /// bots' store bots.sqlite3 and their device directories).
    Bots {
        /// The server's URL.
        #[arg(long, default_value = "http://127.0.0.1:8480")]
        server: String,
        /// How often to look for new results, in seconds.
        #[arg(long, default_value_t = 2)]
        poll_secs: u64,
    },
    /// Make an API key for an ingestion source (FHIR / HL7 sender) and print
    /// the `ingest_api_keys` entry to put in the config (only the hash).
    IngestKey {
        /// The source system's name (letters, digits, '-', '_', '.').
        source: String,
    },
    /// The audit log of security events.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of the audit log (read-only). Exits 0 and prints
    /// the entry count and head hash when intact; exits 1 naming the first
    /// edited, deleted or reordered entry otherwise.
    Verify {
        /// A SQLite database file (default: the configured database, i.e.
        /// `database_url` or tonari.sqlite3 in data_dir).
        #[arg(long, conflicts_with = "database_url")]
        database: Option<PathBuf>,
        /// A database URL (`postgres://…` or `sqlite://PATH`).
        #[arg(long)]
        database_url: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = std::env::vars();
    let config = match Config::load(cli.config.as_deref(), env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tonari: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::ConfigExample => {
            print!("{}", Config::example_toml());
            ExitCode::SUCCESS
        }
        Command::CheckConfig => match toml::to_string_pretty(&Config {
            // Never print a database password.
            database_url: tonari::store::redact_url(&config.database_url),
            nats_url: tonari::store::redact_url(&config.nats_url),
            ..config
        }) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tonari: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve => serve(config),
        Command::AdminInvite { org, kind } => admin_invite(&config, &org, kind),
        Command::Demo {
            data_dir,
            listen,
            mllp,
        } => demo(config, data_dir, listen, mllp),
        Command::Bots { server, poll_secs } => {
            let Some(runtime) = server_runtime(&config.log_filter, "info") else {
                return ExitCode::FAILURE;
            };
            let poll = std::time::Duration::from_secs(poll_secs.max(1));
            match runtime.block_on(tonari::bots::run_separately(
                &config,
                server,
                poll,
                shutdown_signal(),
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tonari bots: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::IngestKey { source } => {
            if tonari::ingest::parse_keys(&[format!("{source}:{}", "0".repeat(64))]).is_err() {
                eprintln!("tonari: a source name is 1-64 letters, digits, '-', '_' or '.'");
                return ExitCode::from(2);
            }
            let (key, entry) = tonari::ingest::new_key(&source);
            println!(
                "API key for {source} (give it to the source system; it is not stored):\n  {key}\nAdd to ingest_api_keys in the config:\n  \"{entry}\""
            );
            ExitCode::SUCCESS
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    database,
                    database_url,
                },
        } => {
            let mut config = config;
            if let Some(url) = database_url {
                config.database_url = url;
            }
            let db = match database {
                Some(path) => Ok(tonari::store::Database::Sqlite(path)),
                None => config.database(),
            };
            match db {
                Ok(db) => audit_verify(db),
                Err(e) => {
                    eprintln!("tonari: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn small_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("tonari: cannot start the runtime: {e}");
            None
        }
    }
}

fn admin_invite(config: &Config, org: &str, kind: tonari_wire::OrgKind) -> ExitCode {
    let Some(runtime) = small_runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(tonari::care::console_admin_invitation(config, org, kind)) {
        Ok((org, code, expires_ms)) => {
            println!(
                "invitation for an admin of organisation {} ({}, {}):\n  code {code}\n  single use, expires {} UTC\n  register with: tonari-cli register USERNAME --invitation {code}",
                org.org_id,
                org.name,
                org.kind,
                tonari::mailer::format_utc(expires_ms)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tonari: {e}");
            ExitCode::FAILURE
        }
    }
}

fn audit_verify(db: tonari::store::Database) -> ExitCode {
    let Some(runtime) = small_runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(tonari::audit::verify_database(&db)) {
        Ok(Ok((count, head))) => {
            println!("audit log OK: {count} entries, head {}", hex::encode(head));
            ExitCode::SUCCESS
        }
        Ok(Err(broken)) => {
            println!("audit log BROKEN at entry {}: {broken}", broken.seq());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("tonari: cannot read {}: {e}", db.describe());
            ExitCode::from(2)
        }
    }
}

fn demo(
    mut config: Config,
    data_dir: PathBuf,
    listen: std::net::SocketAddr,
    mllp: String,
) -> ExitCode {
    config.data_dir = data_dir;
    config.listen = listen;
    config.mllp_listen = mllp;
    if config.log_filter == "info" {
        config.log_filter = "warn".into();
    }
    let Some(runtime) = server_runtime(&config.log_filter, "warn") else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(tonari::demo::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tonari demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logging (the config's filter, else `fallback`) and a multi-threaded
/// runtime for the long-running commands.
fn server_runtime(log_filter: &str, fallback: &str) -> Option<tokio::runtime::Runtime> {
    let filter = tracing_subscriber::EnvFilter::try_new(log_filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(fallback));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    match tokio::runtime::Runtime::new() {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("tonari: cannot start the runtime: {e}");
            None
        }
    }
}

fn serve(config: Config) -> ExitCode {
    let Some(runtime) = server_runtime(&config.log_filter, "info") else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async move {
        let app = match App::build(config).await {
            Ok(app) => app,
            Err(e) => {
                eprintln!("tonari: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!("tonari listening on http://{}", app.local_addr());
        match app.run_until_stopped(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tonari: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
