//! Test harness: a real server in-process, SDK clients, waiting helpers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonari::{App, Config};
use tonari_sdk::{Client, Event};

pub const PASSWORD: &str = "correct horse battery staple";
/// Upper bound for anything a test awaits; tests never sleep.
pub const WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- database

/// The integration tests run on SQLite, or on PostgreSQL when
/// `TONARI_TEST_DATABASE=postgres` (127.0.0.1:5432, trust auth, user
/// postgres): every server data directory then gets its own database.
pub fn pg_tests() -> bool {
    std::env::var("TONARI_TEST_DATABASE").as_deref() == Ok("postgres")
}

const PG_SERVER: &str = "postgres://postgres@127.0.0.1:5432";

async fn any_conn(url: &str) -> sqlx::AnyConnection {
    use sqlx::Connection as _;
    sqlx::any::install_default_drivers();
    sqlx::AnyConnection::connect(url)
        .await
        .expect("connect to the test database")
}

/// Run SQL as the PostgreSQL superuser on the `postgres` database.
async fn pg_admin(sql: &str) {
    let mut conn = any_conn(&format!("{PG_SERVER}/postgres")).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut conn)
        .await
        .expect("admin SQL");
}

/// The database of a server data directory: its SQLite file, or (with
/// PostgreSQL) a database named after the directory, created if missing.
pub async fn database_for(data_dir: &Path) -> tonari::store::Database {
    if !pg_tests() {
        return tonari::store::Database::Sqlite(data_dir.join("tonari.sqlite3"));
    }
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(data_dir.to_string_lossy().as_bytes());
    let name = format!("tonari_t_{}", &hex::encode(digest)[..24]);
    let mut conn = any_conn(&format!("{PG_SERVER}/postgres")).await;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_optional(&mut conn)
        .await
        .expect("look up database");
    if exists.is_none() {
        pg_admin(&format!("CREATE DATABASE {name}")).await;
    }
    tonari::store::Database::Postgres(format!("{PG_SERVER}/{name}"))
}

/// Run SQL directly on a server's database (tests that age rows or tamper).
pub async fn exec_sql(db: &tonari::store::Database, sql: &str) {
    let url = match db {
        tonari::store::Database::Sqlite(p) => format!("sqlite://{}", p.display()),
        tonari::store::Database::Postgres(u) => u.clone(),
    };
    let mut conn = any_conn(&url).await;
    if !db.is_postgres() {
        sqlx::raw_sql("PRAGMA busy_timeout = 60000")
            .execute(&mut conn)
            .await
            .expect("busy timeout");
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut conn)
        .await
        .expect("test SQL");
}

/// One integer from a server's database.
pub async fn query_i64(db: &tonari::store::Database, sql: &str) -> i64 {
    let url = match db {
        tonari::store::Database::Sqlite(p) => format!("sqlite://{}", p.display()),
        tonari::store::Database::Postgres(u) => u.clone(),
    };
    let mut conn = any_conn(&url).await;
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&mut conn)
        .await
        .expect("test query")
}

/// A copy of a stopped server's database (to tamper with), for `to_dir`.
pub async fn copy_database(db: &tonari::store::Database, to_dir: &Path) -> tonari::store::Database {
    std::fs::create_dir_all(to_dir).expect("dir");
    match db {
        tonari::store::Database::Sqlite(p) => {
            let from = p.parent().expect("data dir");
            for f in ["tonari.sqlite3", "tonari.sqlite3-wal", "tonari.sqlite3-shm"] {
                let src = from.join(f);
                if src.exists() {
                    std::fs::copy(&src, to_dir.join(f)).expect("copy");
                }
            }
            tonari::store::Database::Sqlite(to_dir.join("tonari.sqlite3"))
        }
        tonari::store::Database::Postgres(url) => {
            let original = url.rsplit('/').next().expect("db name").to_string();
            let tonari::store::Database::Postgres(copy_url) = database_for(to_dir).await else {
                unreachable!("PostgreSQL tests")
            };
            let copy = copy_url.rsplit('/').next().expect("db name").to_string();
            pg_admin(&format!("DROP DATABASE IF EXISTS {copy}")).await;
            pg_admin(&format!("CREATE DATABASE {copy} TEMPLATE {original}")).await;
            tonari::store::Database::Postgres(copy_url)
        }
    }
}

/// Everything a database holds, as bytes: the SQLite files (main, WAL,
/// shm), or a `pg_dump` of the PostgreSQL database (bytea as hex).
pub fn database_bytes(db: &tonari::store::Database) -> Vec<u8> {
    match db {
        tonari::store::Database::Sqlite(p) => {
            let mut out = Vec::new();
            for suffix in ["", "-wal", "-shm"] {
                let f = std::path::PathBuf::from(format!("{}{suffix}", p.display()));
                if let Ok(bytes) = std::fs::read(f) {
                    out.extend(bytes);
                }
            }
            out
        }
        tonari::store::Database::Postgres(url) => {
            let out = std::process::Command::new("pg_dump")
                .args(["--data-only", url])
                .output()
                .expect("run pg_dump");
            assert!(out.status.success(), "pg_dump failed");
            out.stdout
        }
    }
}

/// The `--database`/`--database-url` arguments of `tonari audit verify`.
pub fn database_args(db: &tonari::store::Database) -> Vec<String> {
    match db {
        tonari::store::Database::Sqlite(p) => {
            vec!["--database".into(), p.display().to_string()]
        }
        tonari::store::Database::Postgres(u) => vec!["--database-url".into(), u.clone()],
    }
}

pub struct TestServer {
    pub url: String,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    /// The MLLP listener, when `mllp_listen` is set.
    pub mllp: Option<SocketAddr>,
    pub database: tonari::store::Database,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), tonari::AppError>>>,
}

impl TestServer {
    pub async fn start(dir: &Path) -> TestServer {
        Self::start_at(dir, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_at(dir: &Path, listen: SocketAddr) -> TestServer {
        Self::start_with(dir, |c| c.listen = listen).await
    }

    /// A server for tests that are not about the care-team rules: open
    /// registration (everyone a doctor unless they ask otherwise) and no
    /// TOTP requirement. Care-team tests use [`TestServer::start_care`].
    pub async fn start_with(dir: &Path, tweak: impl FnOnce(&mut Config)) -> TestServer {
        Self::start_care(dir, |c| {
            c.registration = tonari::config::Registration::Open;
            c.totp_required_roles.clear();
            tweak(c);
        })
        .await
    }

    /// A server with the production defaults (invitation-only registration,
    /// TOTP required for professionals), changed by `tweak`.
    pub async fn start_care(dir: &Path, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let data_dir = dir.join("server");
        let database = database_for(&data_dir).await;
        let mut config = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.clone(),
            database_url: match &database {
                tonari::store::Database::Postgres(u) => u.clone(),
                tonari::store::Database::Sqlite(_) => String::new(),
            },
            // Tests about bots turn them on.
            bots_enabled: false,
            ..Config::default()
        };
        tweak(&mut config);
        let bots = config.bots_enabled;
        let app = App::build(config).await.expect("server builds");
        let addr = app.local_addr();
        let mllp = app.mllp_addr();
        let mut bots_ready = app.bots_ready();
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        if bots {
            // Both bots logged in and listening before the test goes on.
            tokio::time::timeout(WAIT, bots_ready.wait_for(|n| *n >= 2))
                .await
                .expect("bots ready in time")
                .expect("bots ready");
        }
        TestServer {
            url: format!("http://{addr}"),
            addr,
            data_dir,
            mllp,
            database,
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    /// Stop, then read the audit log the server left on disk.
    pub async fn stop_and_read_audit(self) -> Vec<tonari::audit::AuditEntry> {
        let db = self.database.clone();
        self.stop().await;
        let store = tonari::store::Store::open_read_only(&db)
            .await
            .expect("open the database");
        let entries = store.audit_entries().await.expect("audit log");
        store.close().await;
        entries
    }

    /// Graceful stop; waits until the server has shut down completely.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(WAIT, h)
                .await
                .expect("server stops in time")
                .expect("server task")
                .expect("server ran cleanly");
        }
    }
}

/// A temp dir for one test (server data + device dirs).
pub fn tmp() -> TempDir {
    tempfile::Builder::new()
        .prefix("tonari-test-")
        .tempdir()
        .expect("temp dir")
}

pub async fn register(server: &TestServer, username: &str) {
    Client::register(&server.url, username, PASSWORD)
        .await
        .expect("register");
}

pub async fn login(server: &TestServer, root: &Path, username: &str, device: &str) -> Client {
    Client::login(
        &server.url,
        &root.join(format!("{username}-{device}")),
        username,
        PASSWORD,
        device,
    )
    .await
    .expect("login")
}

/// Sync until `pred` holds on the events seen so far (bounded by WAIT).
pub async fn sync_until(client: &Client, mut pred: impl FnMut(&[Event]) -> bool) -> Vec<Event> {
    let mut seen = Vec::new();
    let reached = tokio::time::timeout(WAIT, async {
        loop {
            let events = client.sync().await.expect("sync");
            let progressed = !events.is_empty();
            seen.extend(events);
            if pred(&seen) {
                return;
            }
            if !progressed {
                tokio::task::yield_now().await;
            }
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "condition not reached in time; events seen: {seen:?}"
    );
    seen
}

/// Texts of message events in a room, in order.
pub fn texts(events: &[Event], room: &str) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message {
                room_id, content, ..
            } if room_id == room => Some(content.display_text().to_string()),
            _ => None,
        })
        .collect()
}

/// Texts from the local history of a room.
pub async fn history_texts(client: &Client, room: &str) -> Vec<String> {
    client
        .history(room)
        .await
        .expect("history")
        .into_iter()
        .map(|m| m.content.display_text().to_string())
        .collect()
}

/// Raw HTTP: (status, body) of a request with an optional bearer token.
pub async fn raw(
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let http = reqwest::Client::new();
    let mut req = http.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.expect("body");
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json)
}

pub fn code_of(body: &serde_json::Value) -> &str {
    body.get("code").and_then(|c| c.as_str()).unwrap_or("")
}

/// Register `owner` and `members` (one device each), let `owner` create a
/// room and invite the others, and wait until every member has joined.
pub async fn room_with(
    server: &TestServer,
    root: &Path,
    owner: &str,
    members: &[&str],
) -> (Client, Vec<Client>, String) {
    register(server, owner).await;
    let o = login(server, root, owner, "phone").await;
    let room = o.create_room().await.expect("create room");
    let mut clients = Vec::new();
    for m in members {
        register(server, m).await;
        let c = login(server, root, m, "phone").await;
        o.invite(&room, m).await.expect("invite");
        sync_until(&c, |ev| {
            ev.iter()
                .any(|e| matches!(e, Event::Joined { room_id } if *room_id == room))
        })
        .await;
        clients.push(c);
    }
    (o, clients, room)
}

/// A `tonari serve` child process, with everything it prints collected.
pub struct ServerProcess {
    pub child: tokio::process::Child,
    pub url: String,
    output: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    drains: Vec<JoinHandle<()>>,
}

impl ServerProcess {
    /// Start the real binary and wait until it listens.
    pub async fn spawn(data_dir: &Path, listen: &str, log_filter: &str) -> ServerProcess {
        Self::spawn_with(data_dir, listen, log_filter, &[]).await
    }

    /// [`ServerProcess::spawn`] with more `TONARI_*` variables.
    pub async fn spawn_with(
        data_dir: &Path,
        listen: &str,
        log_filter: &str,
        env: &[(&str, &str)],
    ) -> ServerProcess {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
        let database_url = match database_for(data_dir).await {
            tonari::store::Database::Postgres(u) => u,
            tonari::store::Database::Sqlite(_) => String::new(),
        };
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tonari"))
            .arg("serve")
            .env("TONARI_DATABASE_URL", database_url)
            .envs(env.iter().copied())
            .env("TONARI_LISTEN", listen)
            .env("TONARI_DATA_DIR", data_dir)
            .env("TONARI_LOG_FILTER", log_filter)
            .env("TONARI_REGISTRATION", "open")
            .env("TONARI_TOTP_REQUIRED_ROLES", "")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start tonari serve");
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let url = tokio::time::timeout(WAIT, async {
            let mut line = String::new();
            loop {
                line.clear();
                if stdout.read_line(&mut line).await.expect("read stdout") == 0 {
                    panic!("server exited before listening");
                }
                output
                    .lock()
                    .expect("output")
                    .extend_from_slice(line.as_bytes());
                if let Some(rest) = line.trim().strip_prefix("tonari listening on ") {
                    return rest.to_string();
                }
            }
        })
        .await
        .expect("server listens in time");
        let mut stderr = child.stderr.take().expect("stderr");
        let (o1, o2) = (output.clone(), output.clone());
        // Keep draining both pipes so the child never blocks on them.
        let drains = vec![
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let _ = stdout.read_to_end(&mut buf).await;
                o1.lock().expect("output").extend_from_slice(&buf);
            }),
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let _ = stderr.read_to_end(&mut buf).await;
                o2.lock().expect("output").extend_from_slice(&buf);
            }),
        ];
        ServerProcess {
            child,
            url,
            output,
            drains,
        }
    }

    /// Wait for the process to exit; its exit status and complete output.
    pub async fn wait_output(mut self) -> (std::process::ExitStatus, Vec<u8>) {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("server exits in time")
            .expect("wait");
        for d in self.drains {
            d.await.expect("drain task");
        }
        let out = self.output.lock().expect("output").clone();
        (status, out)
    }
}

/// A raw WebSocket to the server, authenticated with `token`.
pub async fn ws_connect(
    addr: std::net::SocketAddr,
    token: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}/v1/ws")
        .into_client_request()
        .expect("ws request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    tokio_tungstenite::connect_async(req)
        .await
        .expect("ws connects")
        .0
}

// ---------------------------------------------------------------- e-mail

/// One e-mail the sink received.
#[derive(Debug, Clone)]
pub struct Mail {
    pub to: Vec<String>,
    pub subject: String,
    /// The message as it came over SMTP (headers and encoded body).
    pub raw: String,
    /// The decoded plain-text body.
    pub text: String,
}

impl Mail {
    /// The one-time code in the mail (the first 32-hex-digit word).
    pub fn code(&self) -> String {
        self.text
            .split(|c: char| !c.is_ascii_alphanumeric())
            .find(|w| w.len() == 32 && w.bytes().all(|b| b.is_ascii_hexdigit()))
            .expect("a code in the mail")
            .to_string()
    }
}

/// A real SMTP server (Python aiosmtpd, tests/support/smtp_sink.py) on a
/// free port; each received message arrives on a channel.
pub struct SmtpSink {
    pub url: String,
    mails: tokio::sync::mpsc::UnboundedReceiver<Mail>,
    _child: tokio::process::Child,
    _reader: JoinHandle<()>,
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_sink.py");
        let mut child = tokio::process::Command::new("python3")
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the SMTP sink (python3 with aiosmtpd: pip install -r tests/support/requirements.txt)");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("sink starts")
            .expect("read")
            .expect("the sink printed its port (is aiosmtpd installed?)");
        let port = first
            .strip_prefix("LISTENING ")
            .expect("LISTENING line")
            .trim()
            .to_string();
        let (tx, mails) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let v: serde_json::Value = serde_json::from_str(&line).expect("sink json");
                let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                let mail = Mail {
                    to: v["to"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default(),
                    subject: s("subject"),
                    raw: s("data"),
                    text: s("text"),
                };
                if tx.send(mail).is_err() {
                    break;
                }
            }
        });
        SmtpSink {
            url: format!("smtp://127.0.0.1:{port}"),
            mails,
            _child: child,
            _reader: reader,
        }
    }

    /// The next mail (awaited, with the test timeout).
    pub async fn next_mail(&mut self) -> Mail {
        tokio::time::timeout(WAIT, self.mails.recv())
            .await
            .expect("an e-mail arrives")
            .expect("sink running")
    }

    /// True when no mail is waiting right now.
    pub fn is_empty(&mut self) -> bool {
        self.mails.try_recv().is_err()
    }
}

// ---------------------------------------------------------------- TOTP

/// The code an authenticator app shows for `secret` at `offset_secs` from now.
pub fn totp_code(secret_base32: &str, offset_secs: u64) -> String {
    let totp = totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_digits(6)
        .with_step_duration(30)
        .with_secret(totp_rs::Secret::try_from_base32(secret_base32).expect("base32"))
        .build()
        .expect("totp");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    totp.generate(now + offset_secs).to_string()
}

/// A code that is certainly wrong for the same moment.
pub fn wrong_code(code: &str) -> String {
    let n: u32 = code.parse().expect("digits");
    format!("{:06}", (n + 500_000) % 1_000_000)
}
