//! The bot runtime. Bots are ordinary MLS clients built on `tonari-sdk`, with
//! their own device keys and state (one SDK device directory each under
//! `data_dir/bots/`), accounts of role `bot` created by the server at startup
//! (random passwords kept in the bots' own store, `bots.sqlite3`), logging in
//! over HTTP to the server's own address like any client. They read and write
//! a room only as members: a care-team member with the right to add bots
//! (doctor, nurse, care manager, if the room allows bots) invites them.
//!
//! - `lab-bot` posts a lab card per stored result set into every room it is
//!   in whose patient (from its own MLS group state) matches; a set with no
//!   such room is held (logged by id, reported at `/v1/ingest/held`) and
//!   posted when the bot joins a room of that patient.
//! - `summary-bot` posts an EHR summary card when it joins a room and when a
//!   member writes `/summary`.
//!
//! They run inside the server process by default (`bots_enabled`), as tasks
//! owned by the app, or as a separate process (`tonari bots`).

pub mod summary;

use crate::ingest::Ingestor;
use crate::notify::Notifier;
use crate::store::Store;
use crate::store::bots::BotStore;
use rand::RngCore as _;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonari_sdk::{Client, Content, Event};
use tonari_wire::{Card, LabCard, Role};

pub const LAB_BOT: &str = "lab-bot";
pub const SUMMARY_BOT: &str = "summary-bot";
pub const BOTS: [&str; 2] = [LAB_BOT, SUMMARY_BOT];
/// The lab bot also sweeps for unposted results this often (retries after
/// failures; the only trigger when the bots run in a separate process).
const SWEEP: Duration = Duration::from_secs(30);

/// Create the bot accounts that do not exist yet (server side, at startup).
/// The password is saved in the bots' store before the account is created,
/// so a crash in between is repaired on the next start.
pub async fn ensure_accounts(store: &Store, bots: &BotStore) -> Result<(), String> {
    // SQLite may answer "busy" while other connections write (the server
    // running next to `tonari bots`): retry a few times.
    let mut last = String::new();
    for attempt in 0..5u32 {
        match ensure_accounts_once(store, bots).await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100 * 2u64.pow(attempt))).await;
    }
    Err(last)
}

async fn hash_password(password: String) -> Result<String, String> {
    tokio::task::spawn_blocking(move || {
        use argon2::password_hash::PasswordHasher as _;
        argon2::Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn ensure_accounts_once(store: &Store, bots: &BotStore) -> Result<(), String> {
    for name in BOTS {
        let (password, new_password) =
            match bots.bot_password(name).await.map_err(|e| e.to_string())? {
                Some(p) => (p, false),
                None => {
                    let mut raw = [0u8; 24];
                    rand::rng().fill_bytes(&mut raw);
                    let p = hex::encode(raw);
                    bots.save_bot_password(name, &p, crate::accounts::now_ms())
                        .await
                        .map_err(|e| e.to_string())?;
                    (p, true)
                }
            };
        let exists = store
            .user_by_name(name)
            .await
            .map_err(|e| e.to_string())?
            .is_some();
        if exists {
            if new_password {
                // The account outlived the bots' store (a fresh data_dir next
                // to a kept database): give it the new password. The bot
                // comes back as a new device and must be added to rooms again.
                let hash = hash_password(password).await?;
                store
                    .reset_bot_password(name, &hash)
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::warn!(
                    bot = name,
                    "bot credentials were lost: password reset, add the bot to its rooms again"
                );
            }
            continue;
        }
        let hash = hash_password(password).await?;
        let display = if name == LAB_BOT {
            "Lab results bot"
        } else {
            "EHR summary bot"
        };
        match store
            .create_user(
                crate::store::care::NewUser {
                    username: name,
                    password_hash: &hash,
                    display_name: display,
                    role: Role::Bot,
                    org_id: None,
                    network_id: None,
                    family: None,
                },
                None,
                crate::accounts::now_ms(),
            )
            .await
        {
            Ok(_) => tracing::info!(bot = name, "bot account created"),
            Err(crate::store::care::CreateUserError::UsernameTaken) => {}
            Err(e) => return Err(format!("cannot create bot account {name}: {e:?}")),
        }
    }
    Ok(())
}

/// What the bots share.
pub struct BotContext {
    pub server_url: String,
    pub dir: PathBuf,
    pub bots: BotStore,
    pub wake: Arc<Notify>,
    pub notifier: Option<Notifier>,
    /// Counts bots that are logged in and listening.
    pub ready: tokio::sync::watch::Sender<usize>,
}

/// Run the bots as a separate process against `server_url` until
/// `shutdown`: the bots' store is `data_dir/bots.sqlite3` (shared with the
/// server's ingestion on the same host), accounts are ensured through the
/// main database like at server start. New results are found by the sweep
/// (every `poll`), as there is no in-process wake-up; result notices stay
/// with the server.
pub async fn run_separately(
    config: &crate::Config,
    server_url: String,
    poll: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let store = Store::open(&config.database()?)
        .await
        .map_err(|e| format!("cannot open the database: {e}"))?;
    let bots = BotStore::open(&config.bots_database_path())
        .await
        .map_err(|e| format!("cannot open the bots' database: {e}"))?;
    ensure_accounts(&store, &bots).await?;
    store.close().await;
    let ctx = Arc::new(BotContext {
        server_url,
        dir: config.data_dir.join("bots"),
        bots: bots.clone(),
        wake: Arc::new(Notify::new()),
        notifier: None,
        ready: tokio::sync::watch::Sender::new(0),
    });
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    for name in BOTS {
        let ctx = ctx.clone();
        let cancel = cancel.clone();
        tasks.spawn(async move { run_bot(name, ctx, cancel, poll).await });
    }
    tasks.close();
    shutdown.await;
    cancel.cancel();
    tasks.wait().await;
    bots.close().await;
    Ok(())
}

/// Start both bots as tasks owned by `tasks`, stopping on `cancel`.
pub fn spawn(ctx: Arc<BotContext>, cancel: CancellationToken, tasks: &TaskTracker) {
    for name in BOTS {
        let ctx = ctx.clone();
        let cancel = cancel.clone();
        tasks.spawn(async move {
            run_bot(name, ctx, cancel, SWEEP).await;
        });
    }
}

/// The context for bots inside the server, from the ingestor.
pub fn context(
    server_url: String,
    data_dir: &Path,
    ingest: &Ingestor,
    notifier: Option<Notifier>,
    ready: tokio::sync::watch::Sender<usize>,
) -> Arc<BotContext> {
    Arc::new(BotContext {
        server_url,
        dir: data_dir.join("bots"),
        bots: ingest.store.clone(),
        wake: ingest.wake.clone(),
        notifier,
        ready,
    })
}

async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

async fn login(name: &str, ctx: &BotContext, cancel: &CancellationToken) -> Option<Client> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let password = match ctx.bots.bot_password(name).await {
            Ok(Some(p)) => p,
            Ok(None) => {
                tracing::error!(
                    bot = name,
                    "no credentials in the bots store; bot not started"
                );
                return None;
            }
            Err(e) => {
                tracing::error!(bot = name, error = %e, "bots store failed");
                return None;
            }
        };
        let dir = ctx.dir.join(name);
        match Client::login(&ctx.server_url, &dir, name, &password, "server").await {
            Ok(c) => return Some(c),
            Err(e) => tracing::warn!(bot = name, error = %e, "bot login failed; retrying"),
        }
        if !sleep_or_cancel(backoff, cancel).await {
            return None;
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn run_bot(
    name: &'static str,
    ctx: Arc<BotContext>,
    cancel: CancellationToken,
    sweep_every: Duration,
) {
    let mut counted_ready = false;
    // One iteration per session: when the server ends the session (idle
    // logout, revocation), the bot logs in again with the same device.
    'session: loop {
        let Some(client) = login(name, &ctx, &cancel).await else {
            return;
        };
        let mut sub = loop {
            match client.connect().await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(bot = name, error = %e, "bot cannot connect; retrying");
                    if !sleep_or_cancel(Duration::from_secs(1), &cancel).await {
                        return;
                    }
                }
            }
        };
        tracing::info!(bot = name, device = client.device_id(), "bot running");
        let mut lab = (name == LAB_BOT).then(|| LabBot {
            client: client.clone(),
            ctx: ctx.clone(),
            held_logged: HashSet::new(),
        });
        if let Some(l) = lab.as_mut() {
            l.post_pending().await;
        }
        if !counted_ready {
            counted_ready = true;
            ctx.ready.send_modify(|n| *n += 1);
        }
        let mut sweep = tokio::time::interval(sweep_every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            enum Step {
                Stop,
                Ev(Box<Option<tonari_sdk::Result<Event>>>),
                Wake,
            }
            let step = tokio::select! {
                _ = cancel.cancelled() => Step::Stop,
                ev = sub.next() => Step::Ev(Box::new(ev)),
                _ = ctx.wake.notified(), if lab.is_some() => Step::Wake,
                _ = sweep.tick(), if lab.is_some() => Step::Wake,
            };
            match step {
                Step::Stop => break 'session,
                Step::Wake => {
                    if let Some(l) = lab.as_mut() {
                        l.post_pending().await;
                    }
                }
                Step::Ev(ev) => match *ev {
                    None => break 'session,
                    Some(Err(e)) if e.is_code(tonari_wire::ErrorCode::Unauthenticated) => {
                        tracing::warn!(bot = name, "bot session ended; logging in again");
                        continue 'session;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(bot = name, error = %e, "bot subscription error");
                        if !sleep_or_cancel(Duration::from_millis(200), &cancel).await {
                            break 'session;
                        }
                    }
                    Some(Ok(ev)) => handle_event(name, &client, &ctx, lab.as_mut(), ev).await,
                },
            }
        }
    }
    tracing::info!(bot = name, "bot stopped");
}

async fn handle_event(
    name: &str,
    client: &Client,
    ctx: &BotContext,
    lab: Option<&mut LabBot>,
    ev: Event,
) {
    match ev {
        Event::Joined { room_id } => {
            tracing::info!(bot = name, room = %room_id, "bot joined a room");
            match lab {
                Some(l) => l.post_pending().await,
                None => summary::post(client, &ctx.bots, &room_id).await,
            }
        }
        Event::Message {
            room_id,
            sender,
            content: Content::Text { body },
            ..
        } if name == SUMMARY_BOT
            && sender.user_id != client.user_id()
            && body.trim() == "/summary" =>
        {
            summary::post(client, &ctx.bots, &room_id).await;
        }
        _ => {}
    }
}

/// Active rooms of `client` by patient network id.
pub async fn rooms_by_patient(client: &Client) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    let Ok(rooms) = client.rooms().await else {
        return out;
    };
    for r in rooms {
        if r.status != tonari_sdk::room_status::ACTIVE {
            continue;
        }
        if let Ok(settings) = client.room_settings(&r.room_id)
            && let Some(nid) = settings.patient_network_id
        {
            out.entry(nid).or_default().push(r.room_id);
        }
    }
    out
}

struct LabBot {
    client: Client,
    ctx: Arc<BotContext>,
    /// Held sets already logged (log once per set).
    held_logged: HashSet<i64>,
}

impl LabBot {
    /// Post every unposted lab set whose patient has a room this bot is in.
    async fn post_pending(&mut self) {
        let rows = match self.ctx.bots.unposted_labs(500).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "bots store failed");
                return;
            }
        };
        if rows.is_empty() {
            return;
        }
        let rooms = rooms_by_patient(&self.client).await;
        for row in rows {
            let Some(targets) = rooms.get(&row.patient_network_id) else {
                if self.held_logged.insert(row.id) {
                    tracing::warn!(item = row.id, source = %row.source, "result held: no room of this patient has the lab bot");
                }
                continue;
            };
            let card: LabCard = match serde_json::from_str(&row.payload) {
                Ok(c) => c,
                Err(_) => {
                    tracing::error!(item = row.id, "stored lab set does not decode; skipped");
                    continue;
                }
            };
            let content = Content::Card {
                card: Card::LabResults(card),
            };
            let mut posted = None;
            for room in targets {
                match self.client.send_content(room, &content).await {
                    Ok(ack) => {
                        tracing::info!(item = row.id, room = %room, seq = ack.seq, "lab card posted");
                        posted.get_or_insert(room.clone());
                        if let Some(n) = &self.ctx.notifier {
                            n.note(room);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(item = row.id, room = %room, error = %e, "lab card not posted")
                    }
                }
            }
            if let Some(room) = posted
                && let Err(e) = self
                    .ctx
                    .bots
                    .mark_posted(row.id, &room, crate::accounts::now_ms())
                    .await
            {
                tracing::error!(item = row.id, error = %e, "bots store failed");
            }
        }
    }
}
