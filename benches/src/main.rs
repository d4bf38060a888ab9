//! tonari-bench: load benchmark of a real Tonari server process.
//!
//! Every scenario starts a fresh `tonari serve` child process on 127.0.0.1
//! with its own data directory, sets up users, devices and rooms with
//! tonari-sdk, and then measures over raw WebSockets / HTTP with
//! tonari-wire frames. Application messages are real MLS PrivateMessages,
//! encrypted by tonari-sdk before the timed phase.
#![forbid(unsafe_code)]

mod bigroom;
mod idle;
mod server;
mod setup;
mod traffic;
mod ws;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, ValueEnum};
use server::{Server, Usage};
use std::path::{Path, PathBuf};
use std::time::Instant;
use traffic::{Spec, Transport, quantile};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    A,
    B,
    C,
    D,
    E,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SendVia {
    /// WebSocket `send` frames when the server takes them, else HTTP POST.
    Auto,
    Ws,
    Http,
}

/// Load benchmark of the Tonari server (real server process, real MLS).
#[derive(Debug, Parser)]
#[command(name = "tonari-bench", version)]
struct Args {
    /// Scenarios to run: a (max throughput), b (half of a's rate), c (one
    /// sequential sender), d (idle connections), e (large room add), all.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    scenario: Vec<Scenario>,
    /// Messages per sender in (a), (b) and (c).
    #[arg(long, default_value_t = 2000)]
    messages_per_sender: usize,
    /// Members of the room in (a), (b), (c); every member device receives.
    #[arg(long, default_value_t = 20)]
    members: usize,
    /// Senders in (a) and (b).
    #[arg(long, default_value_t = 10)]
    senders: usize,
    /// Sends in flight per sender in (a).
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// Plaintext bytes per message.
    #[arg(long, default_value_t = 256)]
    message_bytes: usize,
    /// Total offered rate of (b) in msgs/s (default: half of (a)'s acked
    /// rate; 200 when (a) was not run).
    #[arg(long)]
    rate_b: Option<f64>,
    /// Idle WebSocket connections in (d).
    #[arg(long, default_value_t = 10_000)]
    connections_d: usize,
    /// Member devices of the large room in (e) (all of one user), before one
    /// more member is added.
    #[arg(long, default_value_t = 1000)]
    members_e: usize,
    /// How (a)-(c) submit messages.
    #[arg(long, value_enum, default_value = "auto")]
    send_via: SendVia,
    /// The tonari server binary (default: `tonari` next to this executable).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Run the server on these CPUs only (`taskset -c LIST`, e.g. `1`); run the
    /// bench itself with `taskset -c 0 ...` to keep client and server apart.
    #[arg(long, value_name = "LIST")]
    server_cpus: Option<String>,
    /// Where the server's data directories go (default: the system temp dir).
    /// Use a real disk: the server fsyncs every acked message.
    #[arg(long)]
    data_parent: Option<PathBuf>,
    /// Where the client devices' SQLite state goes (default: /dev/shm when it
    /// exists, so client-side setup is fast; it is not measured).
    #[arg(long)]
    client_parent: Option<PathBuf>,
    /// Server processes for (a)-(c). More than one runs them on one
    /// PostgreSQL database with NATS push between them; receivers and
    /// senders are spread over the nodes (member i on node i mod N).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Run (a)-(c) on PostgreSQL even with one node (a fresh database each).
    #[arg(long)]
    postgres: bool,
    /// PostgreSQL server for --postgres / --nodes (a database is created and
    /// dropped per scenario with psql).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pg_server: String,
    /// NATS for --nodes > 1.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
}

/// One line of the result table.
struct Row {
    scenario: String,
    rooms_members: String,
    msg_bytes: String,
    senders: String,
    messages: String,
    p50: String,
    p90: String,
    p99: String,
    max: String,
    rate: String,
    cpu_us: String,
    rss_mib: String,
    disk_per_msg: String,
    notes: String,
}

const HEADERS: [&str; 14] = [
    "scenario",
    "rooms x members",
    "msg B",
    "senders",
    "messages",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "max ms",
    "acked msg/s",
    "srv CPU us/copy",
    "srv RSS MiB",
    "disk B/msg",
    "notes",
];

impl Row {
    fn cells(&self) -> [&str; 14] {
        [
            &self.scenario,
            &self.rooms_members,
            &self.msg_bytes,
            &self.senders,
            &self.messages,
            &self.p50,
            &self.p90,
            &self.p99,
            &self.max,
            &self.rate,
            &self.cpu_us,
            &self.rss_mib,
            &self.disk_per_msg,
            &self.notes,
        ]
    }

    fn failed(scenario: &str, err: &anyhow::Error) -> Row {
        let dash = || "-".to_string();
        Row {
            scenario: scenario.to_string(),
            rooms_members: dash(),
            msg_bytes: dash(),
            senders: dash(),
            messages: dash(),
            p50: dash(),
            p90: dash(),
            p99: dash(),
            max: dash(),
            rate: dash(),
            cpu_us: dash(),
            rss_mib: dash(),
            disk_per_msg: dash(),
            notes: format!("FAILED: {err:#}"),
        }
    }
}

fn print_table(rows: &[Row]) {
    let mut widths = HEADERS.map(str::len);
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r.cells()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 14]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else if i == 0 || i == 1 {
                s.push_str(&format!("{c:<w$}  "));
            } else {
                s.push_str(&format!("{c:>w$}  "));
            }
        }
        s.trim_end().to_string()
    };
    println!("{}", line(HEADERS));
    let total: usize = widths.iter().take(13).map(|w| w + 2).sum::<usize>() + 5;
    println!("{}", "-".repeat(total));
    for r in rows {
        println!("{}", line(r.cells()));
    }
}

fn ms(ns: Option<u64>) -> String {
    ns.map(|v| format!("{:.2}", v as f64 / 1e6))
        .unwrap_or_else(|| "-".into())
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn cpu_secs(before: &Usage, after: &Usage, clk: u64) -> f64 {
    after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / clk as f64
}

struct Ctx {
    args: Args,
    bin: PathBuf,
    data_parent: PathBuf,
    client_parent: PathBuf,
    clk: u64,
}

impl Ctx {
    async fn start_server(&self, data_dir: &Path) -> Result<Server> {
        self.start_server_with(data_dir, &[]).await
    }

    async fn start_server_with(&self, data_dir: &Path, env: &[(String, String)]) -> Result<Server> {
        let s = Server::start(&self.bin, self.args.server_cpus.as_deref(), data_dir, env).await?;
        eprintln!("  server pid {} at {}", s.pid(), s.url);
        Ok(s)
    }

    fn on_postgres(&self) -> bool {
        self.args.postgres || self.args.nodes > 1
    }

    /// psql against the PostgreSQL server's `postgres` database.
    fn psql(&self, sql: &str) -> Result<()> {
        let status = std::process::Command::new("psql")
            .arg(format!("{}/postgres", self.args.pg_server))
            .args(["-q", "-c", sql])
            .status()
            .context("running psql")?;
        if !status.success() {
            bail!("psql failed: {sql}");
        }
        Ok(())
    }

    fn data_dir(&self) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix("tonari-bench-data-")
            .tempdir_in(&self.data_parent)
            .with_context(|| format!("creating a data dir in {}", self.data_parent.display()))
    }

    fn client_root(&self) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix("tonari-bench-clients-")
            .tempdir_in(&self.client_parent)
            .with_context(|| format!("creating a client dir in {}", self.client_parent.display()))
    }
}

/// (a), (b), (c): a fresh server and room, then one timed traffic run.
async fn traffic_row(
    ctx: &Ctx,
    label: &str,
    senders: usize,
    window: usize,
    rate_total: Option<f64>,
) -> Result<(Row, f64)> {
    let a = &ctx.args;
    let data = ctx.data_dir()?;
    let clients = ctx.client_root()?;
    // Setup, then a restart: the timed phase starts from a checkpointed
    // database (its size is the baseline for disk bytes per message) and a
    // server process that has done nothing but start.
    let db_name = format!(
        "tonari_bench_{}_{}",
        std::process::id(),
        label.len() + senders
    );
    let mut env = Vec::new();
    if ctx.on_postgres() {
        ctx.psql(&format!("DROP DATABASE IF EXISTS {db_name}"))?;
        ctx.psql(&format!("CREATE DATABASE {db_name}"))?;
        env.push((
            "TONARI_DATABASE_URL".to_string(),
            format!("{}/{db_name}", a.pg_server),
        ));
        if a.nodes > 1 {
            env.push(("TONARI_NATS_URL".to_string(), a.nats_url.clone()));
        }
    }
    let server = ctx.start_server_with(data.path(), &env).await?;
    let prepared = setup::room_with_members(&server.url, clients.path(), "m", a.members).await;
    server.stop().await?;
    let (room, members) = prepared?;
    let baseline = server::dir_bytes(data.path())?;
    let mut servers = vec![ctx.start_server_with(data.path(), &env).await?];
    let mut extra_dirs = Vec::new();
    for _ in 1..a.nodes.max(1) {
        let d = ctx.data_dir()?;
        servers.push(ctx.start_server_with(d.path(), &env).await?);
        extra_dirs.push(d);
    }
    let server = &servers[0];
    let res = async {
        let transport = match a.send_via {
            SendVia::Http => Transport::Http,
            SendVia::Ws => Transport::Ws,
            SendVia::Auto => {
                if ws::server_takes_ws_send(server.addr(), &members[0].token, &room).await? {
                    Transport::Ws
                } else {
                    eprintln!("  the server does not take WebSocket sends; using HTTP POST");
                    Transport::Http
                }
            }
        };
        let spec = Spec {
            senders,
            per_sender: a.messages_per_sender,
            window,
            rate_total,
            plaintext_bytes: a.message_bytes,
            transport,
        };
        let out = traffic::run(&servers, &room, &members, &spec).await?;
        Ok::<_, anyhow::Error>((out, transport))
    }
    .await;
    for s in servers {
        s.stop().await?;
    }
    if ctx.on_postgres() {
        ctx.psql(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))?;
    }
    drop(extra_dirs);
    let (out, transport) = res?;
    let final_bytes = server::dir_bytes(data.path())?;
    drop(members);
    drop(clients);
    let rate = out.msgs_per_sec();
    let cpu = cpu_secs(&out.before, &out.after, ctx.clk);
    let lat = &out.latencies_ns;
    let mut notes = vec![
        format!("via {}", transport.name()),
        match rate_total {
            Some(r) => format!("open loop {r:.0} msg/s offered"),
            None => format!("window {window}/sender"),
        },
        format!(
            "ack p50 {} p99 {} ms",
            ms(quantile(&out.ack_latencies_ns, 0.5)),
            ms(quantile(&out.ack_latencies_ns, 0.99))
        ),
        format!("{} B ciphertext", out.ciphertext_bytes),
        format!("{} copies to {} receivers", out.deliveries, out.receivers),
        format!(
            "srv CPU {cpu:.2}s, bench client CPU {:.2}s",
            out.client_cpu_ticks as f64 / ctx.clk as f64
        ),
    ];
    if out.deliveries != out.expected_deliveries {
        notes.push(format!(
            "MISSING {} copies",
            out.expected_deliveries.saturating_sub(out.deliveries)
        ));
    }
    if out.reconnects > 0 {
        notes.push(format!("{} receiver reconnects", out.reconnects));
    }
    for (code, n) in &out.errors {
        notes.push(format!("{n} x {code}"));
    }
    if ctx.on_postgres() {
        notes.push(format!(
            "PostgreSQL, {} node{}{}",
            a.nodes.max(1),
            if a.nodes > 1 { "s" } else { "" },
            if a.nodes > 1 { " + NATS" } else { "" }
        ));
    }
    let row = Row {
        scenario: label.to_string(),
        rooms_members: format!("1 x {}", a.members),
        msg_bytes: a.message_bytes.to_string(),
        senders: senders.to_string(),
        messages: format!("{}/{}", out.acked, out.sent),
        p50: ms(quantile(lat, 0.5)),
        p90: ms(quantile(lat, 0.9)),
        p99: ms(quantile(lat, 0.99)),
        max: ms(lat.last().copied()),
        rate: format!("{rate:.0}"),
        cpu_us: if out.deliveries > 0 {
            format!("{:.1}", cpu * 1e6 / out.deliveries as f64)
        } else {
            "-".into()
        },
        rss_mib: mib(out.after.rss_kib),
        disk_per_msg: if ctx.on_postgres() {
            "-".into()
        } else if out.acked > 0 {
            format!(
                "{:.0}",
                final_bytes.saturating_sub(baseline) as f64 / out.acked as f64
            )
        } else {
            "-".into()
        },
        notes: notes.join("; "),
    };
    eprintln!(
        "  {label}: {rate:.0} msg/s, p50 {} ms, p99 {} ms (encrypting took {:.1}s)",
        row.p50, row.p99, out.encrypt_secs
    );
    Ok((row, rate))
}

async fn idle_row(ctx: &Ctx) -> Result<Row> {
    let n = ctx.args.connections_d;
    let data = ctx.data_dir()?;
    let clients = ctx.client_root()?;
    let server = ctx.start_server(data.path()).await?;
    let prepared = idle::prepare(&server, clients.path()).await;
    server.stop().await?;
    let prepared = prepared?;
    // Measure a server process that has done nothing but start (the argon2
    // of the login would otherwise sit in its RSS).
    let server = ctx.start_server(data.path()).await?;
    let res = idle::run(&server, &prepared, n).await;
    server.stop().await?;
    let out = res?;
    let mut notes = vec![
        format!(
            "RSS {} -> {} MiB",
            mib(out.before.rss_kib),
            mib(out.after.rss_kib)
        ),
        format!("{:.1} KiB/connection", out.kib_per_conn()),
        format!(
            "{} connected+resumed in {:.1}s, all one device",
            out.open, out.connect_secs
        ),
        format!("srv CPU {:.2}s", cpu_secs(&out.before, &out.after, ctx.clk)),
    ];
    if out.failed > 0 {
        notes.push(format!(
            "{} of {} failed: {}",
            out.failed,
            out.requested,
            out.first_error.as_deref().unwrap_or("?")
        ));
    }
    Ok(Row {
        scenario: "d idle conns".into(),
        rooms_members: format!("1 x 1 ({} conns)", out.open),
        msg_bytes: "-".into(),
        senders: "0".into(),
        messages: "1".into(),
        p50: "-".into(),
        p90: "-".into(),
        p99: "-".into(),
        max: "-".into(),
        rate: "-".into(),
        cpu_us: "-".into(),
        rss_mib: mib(out.after.rss_kib),
        disk_per_msg: "-".into(),
        notes: notes.join("; "),
    })
}

async fn bigroom_row(ctx: &Ctx) -> Result<Row> {
    let n = ctx.args.members_e;
    let data = ctx.data_dir()?;
    let clients = ctx.client_root()?;
    let server = ctx.start_server(data.path()).await?;
    let res = bigroom::run(&server, clients.path(), n).await;
    server.stop().await?;
    let out = res?;
    let validate = match (out.validate_ms, &out.server_timing) {
        (Some(v), _) => format!("server validate {v:.1} ms (Server-Timing)"),
        (None, Some(h)) => format!("Server-Timing without validate: {h:?}"),
        (None, None) => "no Server-Timing header from this server".into(),
    };
    let notes = [
        format!("add 1 member to {} devices", out.bulk_devices + 1),
        validate,
        format!("submit RTT {:.1} ms", out.rtt_ms),
        format!(
            "commit {} B, welcome {} B (built in {:.0} ms)",
            out.commit_bytes, out.welcome_bytes, out.craft_ms
        ),
        format!(
            "srv CPU {:.0} ms (tick {} ms)",
            cpu_secs(&out.before, &out.after, ctx.clk) * 1e3,
            1000 / ctx.clk.max(1)
        ),
        "RSS includes the setup's argon2 logins".to_string(),
        format!(
            "setup: {} logins {:.0}s, invite of {} devices in one commit {:.1}s",
            out.bulk_devices, out.login_secs, out.bulk_devices, out.invite_secs
        ),
        format!("invite seq {}, add seq {}", out.invite_seq, out.ack_seq),
    ];
    Ok(Row {
        scenario: "e big room add".into(),
        rooms_members: format!("1 x {}", out.bulk_devices + 1),
        msg_bytes: out.commit_bytes.to_string(),
        senders: "1".into(),
        messages: "1".into(),
        p50: "-".into(),
        p90: "-".into(),
        p99: "-".into(),
        max: format!("{:.1}", out.rtt_ms),
        rate: "-".into(),
        cpu_us: "-".into(),
        rss_mib: mib(out.after.rss_kib),
        // A single commit's growth is lost in the WAL's preallocated size.
        disk_per_msg: "-".into(),
        notes: notes.join("; "),
    })
}

fn default_server_bin() -> Result<PathBuf> {
    Ok(std::env::current_exe()
        .context("locating this executable")?
        .with_file_name("tonari"))
}

fn default_client_parent() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let bin = match &args.server_bin {
        Some(b) => b.clone(),
        None => default_server_bin()?,
    };
    if !bin.is_file() {
        bail!(
            "server binary {} not found (build it with `cargo build --release -p tonari`, or pass --server-bin)",
            bin.display()
        );
    }
    let chosen = args.scenario.clone();
    let want = |s: Scenario| chosen.contains(&Scenario::All) || chosen.contains(&s);
    if args.members < 2 {
        bail!("--members must be at least 2");
    }
    if (want(Scenario::A) || want(Scenario::B))
        && (args.senders == 0 || args.senders > args.members)
    {
        bail!("--senders must be between 1 and --members");
    }
    let ctx = Ctx {
        data_parent: args.data_parent.clone().unwrap_or_else(std::env::temp_dir),
        client_parent: args
            .client_parent
            .clone()
            .unwrap_or_else(default_client_parent),
        clk: server::clock_ticks_per_sec(),
        bin,
        args,
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    eprintln!(
        "tonari-bench: server {}, {cores} cores, data in {}, clients in {}",
        ctx.bin.display(),
        ctx.data_parent.display(),
        ctx.client_parent.display()
    );
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut rate_a = None;
    let a = &ctx.args;
    if want(Scenario::A) {
        eprintln!(
            "(a) {} senders, window {}, as fast as possible",
            a.senders, a.window
        );
        match traffic_row(&ctx, "a max rate", a.senders, a.window, None).await {
            Ok((row, rate)) => {
                rate_a = Some(rate);
                rows.push(row);
            }
            Err(e) => rows.push(Row::failed("a max rate", &e)),
        }
    }
    if want(Scenario::B) {
        let rate = a
            .rate_b
            .or(rate_a.map(|r| r / 2.0))
            .filter(|r| *r > 0.0)
            .unwrap_or(200.0);
        eprintln!(
            "(b) {} senders paced at {rate:.0} msg/s in total",
            a.senders
        );
        // Open loop: the window only guards against runaway queues.
        match traffic_row(&ctx, "b half rate", a.senders, 4096, Some(rate)).await {
            Ok((row, _)) => rows.push(row),
            Err(e) => rows.push(Row::failed("b half rate", &e)),
        }
    }
    if want(Scenario::C) {
        eprintln!("(c) one sender, one message in flight");
        match traffic_row(&ctx, "c sequential", 1, 1, None).await {
            Ok((row, _)) => rows.push(row),
            Err(e) => rows.push(Row::failed("c sequential", &e)),
        }
    }
    if want(Scenario::D) {
        eprintln!("(d) {} idle WebSocket connections", a.connections_d);
        rows.push(
            idle_row(&ctx)
                .await
                .unwrap_or_else(|e| Row::failed("d idle conns", &e)),
        );
    }
    if want(Scenario::E) {
        eprintln!("(e) room with {} devices, add one more", a.members_e);
        rows.push(
            bigroom_row(&ctx)
                .await
                .unwrap_or_else(|e| Row::failed("e big room add", &e)),
        );
    }
    eprintln!("done in {:.0}s", started.elapsed().as_secs_f64());
    println!();
    print_table(&rows);
    println!();
    println!(
        "MLS: messages are real MLS PrivateMessages encrypted by tonari-sdk before the timed phase and replayed; the server validates and stores them as in production."
    );
    println!(
        "Latency: send -> deliver, per delivered copy at every member's WebSocket (ms). CPU: server utime+stime per delivered copy. Disk: growth of the data dir per acked message, both sizes taken after a clean shutdown (WAL checkpointed). Machine: {cores} cores, loopback 127.0.0.1."
    );
    if rows.iter().any(|r| r.notes.starts_with("FAILED")) {
        return Err(anyhow!("some scenarios failed"));
    }
    Ok(())
}
