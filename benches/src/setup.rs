//! Untimed setup with tonari-sdk: accounts, devices, a room and its members.

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use std::path::Path;
use std::time::{Duration, Instant};
use tonari_sdk::{Client, Event};

pub const PASSWORD: &str = "bench-password-1";
/// Logins (argon2 on the server) run this many at a time.
pub const LOGIN_CONCURRENCY: usize = 8;

/// One member device of a room.
pub struct Member {
    pub client: Client,
    pub token: String,
}

/// Register `username` and log in one device whose state lives in
/// `client_root/dir_name`.
pub async fn user_with_device(
    url: &str,
    client_root: &Path,
    username: &str,
    dir_name: &str,
) -> Result<Member> {
    Client::register(url, username, PASSWORD)
        .await
        .with_context(|| format!("registering {username}"))?;
    device(url, client_root, username, dir_name).await
}

/// Log in a new device of an existing user.
pub async fn device(
    url: &str,
    client_root: &Path,
    username: &str,
    dir_name: &str,
) -> Result<Member> {
    let dir = client_root.join(dir_name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let client = Client::login(url, &dir, username, PASSWORD, dir_name)
        .await
        .with_context(|| format!("logging in {username} ({dir_name})"))?;
    let token = client.testing_token();
    if token.is_empty() {
        bail!("{username}: no session token after login");
    }
    Ok(Member { client, token })
}

/// A room created by the first of `n` new users (`{prefix}00`, ...), with the
/// other users invited one by one and joined (each synced until it got
/// `Event::Joined` and then caught up to the room's last epoch).
pub async fn room_with_members(
    url: &str,
    client_root: &Path,
    prefix: &str,
    n: usize,
) -> Result<(String, Vec<Member>)> {
    let t0 = Instant::now();
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i:02}")).collect();
    let results: Vec<Result<Member>> = futures_util::stream::iter(names.iter().cloned())
        .map(|name| async move { user_with_device(url, client_root, &name, &name).await })
        .buffered(LOGIN_CONCURRENCY)
        .collect()
        .await;
    let members = results.into_iter().collect::<Result<Vec<_>>>()?;
    let Some(owner) = members.first() else {
        bail!("a room needs at least one member");
    };
    let room = owner
        .client
        .create_room()
        .await
        .context("creating the room")?;
    for name in names.iter().skip(1) {
        owner
            .client
            .invite(&room, name)
            .await
            .with_context(|| format!("inviting {name}"))?;
    }
    for (m, name) in members.iter().zip(&names).skip(1) {
        join(&m.client, &room)
            .await
            .with_context(|| format!("{name} joining"))?;
    }
    let epoch = owner.client.epoch(&room)?;
    for (m, name) in members.iter().zip(&names) {
        let e = m.client.epoch(&room)?;
        if e != epoch {
            bail!("{name} is at epoch {e}, the room at {epoch}");
        }
    }
    eprintln!(
        "  setup: room {room} with {n} members at epoch {epoch} in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    Ok((room, members))
}

/// Sync until the device got `Event::Joined` for the room (then it has also
/// caught up on the room).
async fn join(client: &Client, room: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = client.sync().await?;
        if events
            .iter()
            .any(|e| matches!(e, Event::Joined { room_id } if room_id == room))
        {
            // Process everything after the joining commit too.
            client.sync().await?;
            return Ok(());
        }
        if client.rooms().await?.iter().any(|r| r.room_id == room) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no welcome for room {room} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
