//! The server under test: a real `tonari` child process with its own data
//! directory, and its resource use read from `/proc`.

use anyhow::{Context, Result, anyhow, bail};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// How long the server may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server may take to shut down after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Server {
    child: Child,
    pid: u32,
    /// `http://127.0.0.1:PORT`
    pub url: String,
}

/// Resource use of the server process at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// VmRSS in KiB.
    pub rss_kib: u64,
}

impl Server {
    /// Start `bin serve` on 127.0.0.1:0 with the data directory `data_dir`,
    /// and wait for its listening line.
    /// With `cpus`, the server runs under `taskset -c CPUS` (same pid: taskset
    /// execs the server).
    pub async fn start(
        bin: &Path,
        cpus: Option<&str>,
        data_dir: &Path,
        env: &[(String, String)],
    ) -> Result<Server> {
        let mut command = match cpus {
            Some(list) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(list).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = command
            .arg("serve")
            .env("TONARI_LISTEN", "127.0.0.1:0")
            .env("TONARI_DATA_DIR", data_dir)
            .env("TONARI_LOG_FILTER", "warn")
            // The bench registers its own users (doctors) without invitations.
            .env("TONARI_REGISTRATION", "open")
            .env("TONARI_TOTP_REQUIRED_ROLES", "")
            // The bench logs in many devices from 127.0.0.1.
            .env("TONARI_LOGIN_MAX_ATTEMPTS_PER_IP", "1000000")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting the server {}", bin.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("the server exited right away"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no server stdout"))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow!("no server stderr"))?;
        tokio::spawn(drain(stderr, "server stderr"));
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.trim().strip_prefix("tonari listening on ") {
                    return Ok::<_, anyhow::Error>(rest.trim().to_string());
                }
                eprintln!("[server stdout] {line}");
            }
            bail!("the server closed stdout before it was listening")
        })
        .await
        .context("timed out waiting for the server to listen")??;
        if !url.starts_with("http://127.0.0.1:") {
            bail!("the server listens on {url}, expected http://127.0.0.1:PORT");
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[server stdout] {line}");
            }
        });
        Ok(Server { child, pid, url })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    pub fn usage(&self) -> Result<Usage> {
        Ok(Usage {
            cpu_ticks: cpu_ticks(self.pid)?,
            rss_kib: rss_kib(self.pid)?,
        })
    }

    /// SIGTERM (via `kill -TERM`), then wait for the exit.
    pub async fn stop(mut self) -> Result<()> {
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .context("running kill -TERM")?;
        if !status.success() {
            eprintln!("kill -TERM {} failed: {status}", self.pid);
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(Ok(st)) => {
                if !st.success() {
                    eprintln!("server exited with {st}");
                }
            }
            Ok(Err(e)) => return Err(e).context("waiting for the server"),
            Err(_) => {
                eprintln!("server did not stop within {STOP_TIMEOUT:?}; killing it");
                self.child.kill().await.context("killing the server")?;
            }
        }
        Ok(())
    }
}

async fn drain(r: impl AsyncRead + Unpin, what: &'static str) {
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("[{what}] {line}");
    }
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 when that fails).
pub fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// utime + stime of a process from `/proc/<pid>/stat`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("unexpected /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime is field 14, stime field 15.
    let get = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .ok_or_else(|| anyhow!("short /proc/{pid}/stat"))?
            .parse::<u64>()
            .context("parsing /proc/<pid>/stat")
    };
    Ok(get(11)? + get(12)?)
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("VmRSS:") {
            let kib = v
                .split_whitespace()
                .next()
                .ok_or_else(|| anyhow!("empty VmRSS"))?
                .parse::<u64>()
                .context("parsing VmRSS")?;
            return Ok(kib);
        }
    }
    bail!("no VmRSS in /proc/{pid}/status")
}

/// Sum of the sizes of all files below `dir`.
pub fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let meta = match entry.metadata() {
            Ok(m) => m,
            // SQLite may remove a -shm/-journal file between listing and stat.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        if meta.is_dir() {
            total += dir_bytes(&entry.path())?;
        } else {
            total += meta.len();
        }
    }
    Ok(total)
}
