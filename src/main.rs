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

fn serve(config: Config) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tonari: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
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
