//! Server configuration: a TOML file plus `TONARI_*` environment overrides.
//! Every key is documented once, in [`Config::example_toml`] (also printed by
//! `tonari config-example` and listed in the README).

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tonari_wire::Role;

/// Who may create an account.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Registration {
    /// Only with an invitation code (the default).
    Invitation,
    /// Anyone, with the role they ask for: development and tests only.
    Open,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on for HTTP and WebSocket.
    pub listen: SocketAddr,
    /// Directory for the SQLite database (and other files); created on first start.
    pub data_dir: PathBuf,
    /// Database: empty for SQLite in `data_dir`, or a `postgres://` URL.
    pub database_url: String,
    /// NATS server(s) for live push between server processes sharing one
    /// PostgreSQL database (`nats://host:4222`); empty for a single process.
    pub nats_url: String,
    /// Largest HTTP request body accepted, in bytes (JSON, MLS bytes in base64).
    pub max_body_bytes: usize,
    /// Largest WebSocket message accepted from a client, in bytes.
    pub ws_max_message_bytes: usize,
    /// Largest WebSocket frame accepted from a client, in bytes.
    pub ws_max_frame_bytes: usize,
    /// Frames queued for one WebSocket connection before it counts as a slow consumer.
    pub ws_outbound_queue: usize,
    /// Messages buffered per room for live fan-out before a lagging reader re-reads from disk.
    pub room_broadcast_capacity: usize,
    /// Most rooms kept in memory (group state, txn-id hashes); idle ones beyond
    /// it are dropped and reloaded from disk on next use.
    pub room_cache_max: usize,
    /// Accepted messages waiting for the group-commit writer before senders wait.
    pub write_queue: usize,
    /// Most messages written in one transaction (one fsync) by the group commit.
    pub write_batch_max: usize,
    /// A device is told to upload key packages when it has fewer than this.
    pub key_package_low_water: u32,
    /// Most key packages a device may hold on the server.
    pub key_package_max_per_device: u32,
    /// Session lifetime in seconds.
    pub session_ttl_secs: u64,
    /// A session unused for this many seconds is logged out (idle logout).
    pub session_idle_secs: u64,
    /// How long a verified session is trusted from memory before it is checked
    /// (and its use recorded) again; 0 checks every request.
    pub session_cache_secs: u64,
    /// Proxies (e.g. the TLS terminator) whose `X-Forwarded-For` is trusted to
    /// name the real client address (for the per-address login limit).
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Login attempts allowed from one client IP per `login_ip_window_secs`.
    pub login_max_attempts_per_ip: u32,
    pub login_ip_window_secs: u64,
    /// Failed logins after which an account is locked for `login_account_window_secs`.
    pub login_max_failures_per_account: u32,
    pub login_account_window_secs: u64,
    /// Who may create an account: `invitation` or `open` (development only).
    pub registration: Registration,
    /// Roles that must have TOTP on before their sessions may do anything else.
    pub totp_required_roles: Vec<Role>,
    /// How long an invitation code stays valid, in seconds.
    pub invitation_ttl_secs: u64,
    /// The server's public base URL, used in links in e-mails.
    pub public_url: String,
    /// SMTP relay for e-mail (`smtp://host:port`, plain SMTP to a local relay);
    /// empty disables e-mail (invitations then answer 503).
    pub smtp_url: String,
    /// The From address of e-mails.
    pub mail_from: String,
    /// Origins (e.g. `https://care.example.org`) besides the server's own
    /// whose pages may open the WebSocket. A WebSocket upgrade that carries
    /// an `Origin` header matching neither is refused (403).
    pub allowed_origins: Vec<String>,
    /// Serve Prometheus metrics at `/metrics` (counts only, no ids or content).
    pub metrics_enabled: bool,
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "tonari=debug".
    pub log_filter: String,
    /// Run the bots (lab-bot, summary-bot) inside the server process.
    pub bots_enabled: bool,
    /// Address of the MLLP (HL7 v2) listener; empty disables it.
    pub mllp_listen: String,
    /// Largest MLLP frame (one HL7 message) accepted, in bytes.
    pub mllp_max_frame_bytes: usize,
    /// Ingestion sources as `NAME:SHA256HEX` of their API key.
    pub ingest_api_keys: Vec<String>,
    /// FHIR `Identifier.system` of the patient network id.
    pub network_id_system: String,
    /// HL7 PID-3 assigning authority (CX.4) of the patient network id.
    pub network_id_authority: String,
    /// Seconds to collect result notices before e-mailing (one mail per recipient).
    pub notify_batch_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8480)),
            data_dir: PathBuf::from("tonari-data"),
            database_url: String::new(),
            nats_url: String::new(),
            max_body_bytes: 24 * 1024 * 1024,
            ws_max_message_bytes: 16 * 1024 * 1024,
            ws_max_frame_bytes: 16 * 1024 * 1024,
            ws_outbound_queue: 1024,
            room_broadcast_capacity: 1024,
            room_cache_max: 10_000,
            write_queue: 4096,
            write_batch_max: 512,
            key_package_low_water: 5,
            key_package_max_per_device: 200,
            session_ttl_secs: 30 * 24 * 3600,
            session_idle_secs: 8 * 3600,
            session_cache_secs: 60,
            trusted_proxies: Vec::new(),
            login_max_attempts_per_ip: 60,
            login_ip_window_secs: 60,
            login_max_failures_per_account: 10,
            login_account_window_secs: 15 * 60,
            registration: Registration::Invitation,
            totp_required_roles: Role::ALL
                .iter()
                .copied()
                .filter(|r| r.is_professional())
                .collect(),
            invitation_ttl_secs: 7 * 24 * 3600,
            public_url: "http://127.0.0.1:8480".to_string(),
            smtp_url: String::new(),
            mail_from: "Tonari <tonari@localhost>".to_string(),
            allowed_origins: Vec::new(),
            metrics_enabled: true,
            log_filter: "info".to_string(),
            bots_enabled: true,
            mllp_listen: String::new(),
            mllp_max_frame_bytes: 1024 * 1024,
            ingest_api_keys: Vec::new(),
            network_id_system: "urn:tonari:network-id".to_string(),
            network_id_authority: "TONARI".to_string(),
            notify_batch_secs: 300,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("environment variable {var} is invalid: {reason}")]
    Env { var: String, reason: String },
}

impl Config {
    /// Load from an optional file, then apply `TONARI_*` overrides from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.to_path_buf(),
                    source,
                })?
            }
            None => Config::default(),
        };
        for (var, value) in env {
            let Some(key) = var.strip_prefix("TONARI_") else {
                continue;
            };
            config
                .set(&key.to_ascii_lowercase(), &value)
                .map_err(|reason| ConfigError::Env {
                    var: var.clone(),
                    reason,
                })?;
        }
        Ok(config)
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        fn num<T: std::str::FromStr>(v: &str) -> Result<T, String> {
            v.parse()
                .map_err(|_| format!("expected a number, got {v:?}"))
        }
        match key {
            "listen" => {
                self.listen = value
                    .parse()
                    .map_err(|_| "expected host:port".to_string())?
            }
            "data_dir" => self.data_dir = PathBuf::from(value),
            "database_url" => self.database_url = value.to_string(),
            "nats_url" => self.nats_url = value.to_string(),
            "max_body_bytes" => self.max_body_bytes = num(value)?,
            "ws_max_message_bytes" => self.ws_max_message_bytes = num(value)?,
            "ws_max_frame_bytes" => self.ws_max_frame_bytes = num(value)?,
            "ws_outbound_queue" => self.ws_outbound_queue = num(value)?,
            "room_broadcast_capacity" => self.room_broadcast_capacity = num(value)?,
            "room_cache_max" => self.room_cache_max = num(value)?,
            "write_queue" => self.write_queue = num(value)?,
            "write_batch_max" => self.write_batch_max = num(value)?,
            "key_package_low_water" => self.key_package_low_water = num(value)?,
            "key_package_max_per_device" => self.key_package_max_per_device = num(value)?,
            "session_ttl_secs" => self.session_ttl_secs = num(value)?,
            "session_idle_secs" => self.session_idle_secs = num(value)?,
            "session_cache_secs" => self.session_cache_secs = num(value)?,
            "trusted_proxies" => {
                self.trusted_proxies = value
                    .split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(|v| v.parse().map_err(|_| format!("not an IP address: {v:?}")))
                    .collect::<Result<_, _>>()?;
            }
            "login_max_attempts_per_ip" => self.login_max_attempts_per_ip = num(value)?,
            "login_ip_window_secs" => self.login_ip_window_secs = num(value)?,
            "login_max_failures_per_account" => self.login_max_failures_per_account = num(value)?,
            "login_account_window_secs" => self.login_account_window_secs = num(value)?,
            "registration" => {
                self.registration = match value {
                    "invitation" => Registration::Invitation,
                    "open" => Registration::Open,
                    _ => return Err("expected `invitation` or `open`".to_string()),
                }
            }
            "totp_required_roles" => {
                self.totp_required_roles = value
                    .split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "invitation_ttl_secs" => self.invitation_ttl_secs = num(value)?,
            "public_url" => self.public_url = value.to_string(),
            "smtp_url" => self.smtp_url = value.to_string(),
            "mail_from" => self.mail_from = value.to_string(),
            "allowed_origins" => {
                self.allowed_origins = value
                    .split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(str::to_string)
                    .collect();
            }
            "metrics_enabled" => {
                self.metrics_enabled = match value {
                    "true" | "1" | "yes" => true,
                    "false" | "0" | "no" => false,
                    _ => return Err("expected true or false".to_string()),
                }
            }
            "log_filter" => self.log_filter = value.to_string(),
            "bots_enabled" => {
                self.bots_enabled = value
                    .parse()
                    .map_err(|_| "expected true or false".to_string())?
            }
            "mllp_listen" => self.mllp_listen = value.to_string(),
            "mllp_max_frame_bytes" => self.mllp_max_frame_bytes = num(value)?,
            "ingest_api_keys" => {
                self.ingest_api_keys = value
                    .split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(String::from)
                    .collect()
            }
            "network_id_system" => self.network_id_system = value.to_string(),
            "network_id_authority" => self.network_id_authority = value.to_string(),
            "notify_batch_secs" => self.notify_batch_secs = num(value)?,
            // Variables for other tools (TONARI_SERVER, TONARI_PASSWORD, ...) are not ours.
            _ => {}
        }
        Ok(())
    }

    /// A commented example file with every key and its default.
    pub fn example_toml() -> String {
        let d = Config::default();
        format!(
            r#"# Tonari server configuration. Every key may be overridden by an
# environment variable TONARI_<KEY> (upper case), e.g. TONARI_LISTEN=0.0.0.0:8480.

# Address to listen on for HTTP and WebSocket.
listen = "{listen}"
# Directory for the SQLite database (tonari.sqlite3, WAL mode); created on first start.
data_dir = "{data_dir}"
# The database: empty for SQLite in data_dir, or a PostgreSQL URL such as
# "postgres://tonari@127.0.0.1:5432/tonari" (several servers may share one).
database_url = ""
# NATS for live push between several servers sharing one PostgreSQL database,
# e.g. "nats://127.0.0.1:4222". Empty: one server process. If NATS is down,
# nothing is lost: clients catch up from the database (push resumes by itself).
nats_url = ""
# Largest HTTP request body accepted, in bytes (JSON with base64 MLS bytes).
max_body_bytes = {max_body}
# Largest WebSocket message and frame accepted from a client, in bytes.
ws_max_message_bytes = {ws_msg}
ws_max_frame_bytes = {ws_frame}
# Frames queued for one WebSocket connection before it is closed as a slow
# consumer (close code 4008; the client resumes from its last seq).
ws_outbound_queue = {queue}
# Messages buffered per room for live fan-out; a reader that falls further
# behind re-reads from disk.
room_broadcast_capacity = {bcast}
# Most rooms kept in memory (group state, txn-id hashes); idle ones beyond it
# are dropped and reloaded from disk on next use.
room_cache_max = {rcache}
# Accepted messages waiting for the group-commit writer before senders wait.
write_queue = {wq}
# Most messages written in one transaction (one fsync) by the group commit.
write_batch_max = {wb}
# A device is told to upload key packages when it has fewer than this.
key_package_low_water = {low}
# Most key packages a device may hold on the server.
key_package_max_per_device = {kpmax}
# Session lifetime in seconds.
session_ttl_secs = {ttl}
# A session unused for this many seconds is logged out (idle logout).
session_idle_secs = {idle}
# How long a verified session is trusted from memory before it is checked (and
# its use recorded) again; 0 checks every request.
session_cache_secs = {scache}
# Proxies whose X-Forwarded-For names the real client (env: comma-separated),
# e.g. ["127.0.0.1"] behind a local TLS terminator.
trusted_proxies = []
# Login attempts allowed from one client IP per window (then HTTP 429).
login_max_attempts_per_ip = {ipmax}
login_ip_window_secs = {ipwin}
# Failed logins after which an account is locked for the window (HTTP 429,
# even with the right password, until the window ends).
login_max_failures_per_account = {accmax}
login_account_window_secs = {accwin}
# Who may create an account: "invitation" (an e-mailed one-time code fixes the
# role, organisation and patient link) or "open" (anyone, any role: development
# and tests only, never on a real network).
registration = "invitation"
# Roles that must turn on TOTP before their sessions may do anything else
# (env: comma-separated). Patients and family may turn it on by choice.
totp_required_roles = [{totp_roles}]
# How long an invitation code stays valid, in seconds (single use).
invitation_ttl_secs = {inv_ttl}
# The server's public base URL, used in links in e-mails.
public_url = "{public_url}"
# SMTP relay for e-mail, e.g. "smtp://127.0.0.1:25" (plain SMTP to a local
# relay such as Postfix, which does TLS onwards). Empty disables e-mail:
# invitations then answer 503. E-mails never carry clinical content.
smtp_url = ""
# The From address of e-mails.
mail_from = "{mail_from}"
# Origins besides the server's own whose web pages may open the WebSocket
# (env: comma-separated), e.g. ["https://care.example.org"]. An upgrade with an
# Origin header that matches neither is refused; native clients send none.
allowed_origins = []
# Serve Prometheus metrics at /metrics (counts and latencies only: no ids,
# no content). Keep /metrics away from the public internet at the proxy.
metrics_enabled = true
# Log filter (tracing EnvFilter syntax). Logs carry ids, never message content.
log_filter = "{log}"

# --- Bots and clinical ingestion ---
# Run the bots (lab-bot, summary-bot: MLS members of role bot) inside the
# server process. Their state and the clinical data they receive live in
# bots.sqlite3 and bots/ under data_dir, apart from the delivery tables.
bots_enabled = {bots_enabled}
# Address of the MLLP listener for HL7 v2.5 ORU^R01 (plain TCP: keep it on a
# private network or behind a TLS tunnel), e.g. "127.0.0.1:2575". Empty disables it.
mllp_listen = ""
# Largest MLLP frame (one HL7 message) accepted, in bytes.
mllp_max_frame_bytes = {mllp_max}
# Ingestion sources, one API key each, as "NAME:SHA256HEX" of the key (env:
# comma-separated). `tonari ingest-key NAME` makes a key and its entry. FHIR
# sends the key as "Authorization: Bearer KEY", HL7 in MSH-8.
ingest_api_keys = []
# FHIR Identifier.system that carries the patient network id.
network_id_system = "{nid_system}"
# HL7 PID-3 assigning authority (CX.4) whose id is the patient network id.
network_id_authority = "{nid_authority}"
# Seconds to collect "new results" notices before e-mailing them (one e-mail
# per recipient for the whole batch; no values, no names).
notify_batch_secs = {notify_batch}
"#,
            bots_enabled = d.bots_enabled,
            mllp_max = d.mllp_max_frame_bytes,
            nid_system = d.network_id_system,
            nid_authority = d.network_id_authority,
            notify_batch = d.notify_batch_secs,
            totp_roles = d
                .totp_required_roles
                .iter()
                .map(|r| format!("\"{r}\""))
                .collect::<Vec<_>>()
                .join(", "),
            inv_ttl = d.invitation_ttl_secs,
            public_url = d.public_url,
            mail_from = d.mail_from,
            listen = d.listen,
            data_dir = d.data_dir.display(),
            max_body = d.max_body_bytes,
            ws_msg = d.ws_max_message_bytes,
            ws_frame = d.ws_max_frame_bytes,
            queue = d.ws_outbound_queue,
            bcast = d.room_broadcast_capacity,
            rcache = d.room_cache_max,
            wq = d.write_queue,
            wb = d.write_batch_max,
            low = d.key_package_low_water,
            kpmax = d.key_package_max_per_device,
            ttl = d.session_ttl_secs,
            idle = d.session_idle_secs,
            scache = d.session_cache_secs,
            ipmax = d.login_max_attempts_per_ip,
            ipwin = d.login_ip_window_secs,
            accmax = d.login_max_failures_per_account,
            accwin = d.login_account_window_secs,
            log = d.log_filter,
        )
    }

    /// The SQLite file used when `database_url` is empty.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("tonari.sqlite3")
    }

    /// The bots' own database (clinical data, bot credentials).
    pub fn bots_database_path(&self) -> PathBuf {
        self.data_dir.join("bots.sqlite3")
    }

    /// The database this configuration names.
    pub fn database(&self) -> Result<crate::store::Database, String> {
        let url = self.database_url.trim();
        if url.is_empty() {
            return Ok(crate::store::Database::Sqlite(self.database_path()));
        }
        if let Some(path) = url.strip_prefix("sqlite://") {
            return Ok(crate::store::Database::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(crate::store::Database::Postgres(url.to_string()));
        }
        Err(format!(
            "database_url must be empty, sqlite://PATH or postgres://... (got {})",
            crate::store::redact_url(url)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses_to_defaults() {
        let parsed: Config = toml::from_str(&Config::example_toml()).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn env_overrides_file_and_bad_values_are_named() {
        let c = Config::load(
            None,
            [
                ("TONARI_LISTEN".to_string(), "127.0.0.1:0".to_string()),
                ("TONARI_WS_OUTBOUND_QUEUE".to_string(), "7".to_string()),
                ("TONARI_SERVER".to_string(), "ignored".to_string()),
            ],
        )
        .unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.ws_outbound_queue, 7);
        let err = Config::load(
            None,
            [("TONARI_SESSION_TTL_SECS".to_string(), "x".to_string())],
        )
        .unwrap_err();
        assert!(err.to_string().contains("TONARI_SESSION_TTL_SECS"));
    }
}
