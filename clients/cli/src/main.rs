//! `tonari-cli`: a command-line Tonari client built on `tonari-sdk`.
#![forbid(unsafe_code)]

use clap::{Args, Parser, Subcommand};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use tonari_sdk::{Client, Event, SdkError, Sender};
use tonari_wire::{CreateInvitation, OrgKind, Role, RoomSettings};

#[derive(Parser, Debug)]
#[command(
    name = "tonari-cli",
    version,
    about = "Tonari end-to-end encrypted messaging, from the command line",
    long_about = "Tonari end-to-end encrypted messaging (MLS) from the command line.\n\n\
        Each device keeps its keys and state in a device directory. Register an \
        account, log in once (creating the device), then use the other commands \
        with the same --user or --device-dir."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct Global {
    /// Server base URL.
    #[arg(
        long,
        global = true,
        env = "TONARI_SERVER",
        default_value = "http://127.0.0.1:8480"
    )]
    server: String,
    /// Device directory (keys, rooms, history). Default:
    /// $HOME/.local/share/tonari-cli/<username>.
    #[arg(long, global = true, env = "TONARI_DEVICE_DIR")]
    device_dir: Option<PathBuf>,
    /// Username whose default device directory to use (for commands that do
    /// not take a username).
    #[arg(long, short = 'u', global = true, env = "TONARI_USER")]
    user: Option<String>,
    /// Password (else TONARI_PASSWORD, else read one line from stdin).
    #[arg(long, global = true, env = "TONARI_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a new account on the server (does not log in). On a server
    /// that registers by invitation, give the code from your invitation
    /// e-mail: it decides your role, organisation and patient link.
    Register {
        /// The new username.
        username: String,
        /// The one-time code from the invitation e-mail.
        #[arg(long, value_name = "CODE")]
        invitation: Option<String>,
        /// The name others see (default: the username).
        #[arg(long, value_name = "NAME")]
        display_name: Option<String>,
        /// Open-registration servers only (development): the role to take.
        #[arg(long, value_name = "ROLE")]
        role: Option<Role>,
    },
    /// Log in and register this device (or re-attach the device stored in the
    /// device directory). Uploads key packages.
    Login {
        /// The account's username.
        username: String,
        /// A label for this device.
        #[arg(long, default_value = "tonari-cli")]
        device_name: String,
        /// The current code of your authenticator app, if TOTP is on.
        #[arg(long, value_name = "CODE")]
        totp: Option<String>,
    },
    /// Revoke this device's session token (keys and history stay on disk).
    Logout,
    /// Start turning on a TOTP second factor: prints a secret and an
    /// otpauth:// URI for an authenticator app. Then run `totp-confirm`.
    TotpEnroll,
    /// Turn TOTP on with a current code from the authenticator app; from then
    /// on `login` needs `--totp CODE`.
    TotpConfirm {
        /// The 6-digit code shown by the app now.
        code: String,
    },
    /// List the rooms of this device with their last processed seq and members.
    Rooms,
    /// Create a new room with only this device in it; prints the room id.
    /// With --patient it is the care room of that patient (family and the
    /// patient join only with the patient's consent); without, a team room.
    Create {
        /// The patient's network id (the region's shared EHR id).
        #[arg(long, value_name = "NETWORK_ID")]
        patient: Option<String>,
        /// Do not allow bots in the room.
        #[arg(long)]
        no_bots: bool,
    },
    /// Show a room's patient and policy (who may add and remove whom).
    Policy {
        /// Room id (hex).
        room: String,
    },
    /// Create an organisation (admins of the server operator).
    OrgCreate {
        /// The organisation's name.
        name: String,
        /// clinic, hospital, home_care_agency, pharmacy, dental_clinic,
        /// care_management_office or municipality.
        #[arg(long)]
        kind: OrgKind,
    },
    /// List the organisations.
    Orgs,
    /// E-mail notices that new results arrived in your rooms (a link, no
    /// values): show them, or set `on`, `off` or `default` (care managers on,
    /// others off).
    Notices {
        /// on, off or default; omit to show.
        setting: Option<String>,
    },
    /// Invite someone by e-mail: the server mails them a one-time code (no
    /// clinical content, no patient name).
    InviteEmail {
        /// Their e-mail address.
        email: String,
        /// doctor, nurse, care_manager, pharmacist, dentist, therapist,
        /// emergency, admin, patient or family.
        #[arg(long)]
        role: Role,
        /// The organisation they join (professionals; default: yours).
        #[arg(long, value_name = "ORG_ID")]
        org: Option<i64>,
        /// Patient and family: the patient's network id.
        #[arg(long, value_name = "NETWORK_ID")]
        patient: Option<String>,
        /// Family: how they are related to the patient (e.g. daughter).
        #[arg(long)]
        relationship: Option<String>,
        /// Family: they may consent on the patient's behalf.
        #[arg(long)]
        legal_proxy: bool,
        /// A room they join once registered (run `invitations --complete`).
        #[arg(long, value_name = "ROOM")]
        room: Option<String>,
    },
    /// List the invitations you sent; --complete adds accepted invitees to
    /// the rooms they were invited to (once they have a device).
    Invitations {
        #[arg(long)]
        complete: bool,
    },
    /// Search the directory by name, role and organisation.
    Directory {
        /// Text to look for in usernames and display names.
        query: Option<String>,
        #[arg(long)]
        role: Option<Role>,
        #[arg(long, value_name = "ORG_ID")]
        org: Option<i64>,
    },
    /// As the patient (or a legal proxy): consent that USER may be in ROOM,
    /// signed with this device's key; --revoke withdraws it and removes them
    /// (when this device is in the room).
    Consent {
        /// Room id (hex).
        room: String,
        /// The family member (or the patient) the consent is about.
        #[arg(value_name = "USER")]
        username: String,
        /// Withdraw the consent.
        #[arg(long)]
        revoke: bool,
        /// The patient's network id (default: yours, or that of the patient
        /// you are a legal proxy for).
        #[arg(long, value_name = "NETWORK_ID")]
        patient: Option<String>,
    },
    /// Add every device of USER to ROOM (one commit, with a Welcome).
    Invite {
        /// Room id (hex).
        room: String,
        /// Username to add.
        #[arg(value_name = "USER")]
        username: String,
    },
    /// Send a text message to ROOM; prints the acknowledged seq.
    Send {
        /// Room id (hex).
        room: String,
        /// The message text.
        text: String,
    },
    /// Sync, then print ROOM's messages as they arrive (WebSocket) until Ctrl-C.
    /// One line per message: `[seq] username: text`; membership changes as
    /// `* alice added bob (device 3)`.
    Follow {
        /// Room id (hex).
        room: String,
        /// Print the local history of the room first.
        #[arg(long)]
        history: bool,
    },
    /// Print the local history of ROOM (run `sync` first to fetch new messages).
    History {
        /// Room id (hex).
        room: String,
    },
    /// Remove every device of USER from ROOM.
    Remove {
        /// Room id (hex).
        room: String,
        /// Username to remove.
        #[arg(value_name = "USER")]
        username: String,
    },
    /// Ask to leave ROOM: another member's client commits the removal.
    Leave {
        /// Room id (hex).
        room: String,
    },
    /// Accept invitations and fetch new messages of every room; prints what happened.
    Sync,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Sdk(e)) => {
            eprintln!("error [{}]: {e}", e.kind());
            ExitCode::FAILURE
        }
        Err(CliError::Usage(m)) => {
            eprintln!("error [usage]: {m}");
            ExitCode::from(2)
        }
    }
}

enum CliError {
    Sdk(SdkError),
    Usage(String),
}

impl From<SdkError> for CliError {
    fn from(e: SdkError) -> Self {
        CliError::Sdk(e)
    }
}

type Res<T> = Result<T, CliError>;

impl Global {
    fn device_dir(&self, username: Option<&str>) -> Res<PathBuf> {
        if let Some(d) = &self.device_dir {
            return Ok(d.clone());
        }
        let Some(user) = username.or(self.user.as_deref()) else {
            return Err(CliError::Usage(
                "give --device-dir (or TONARI_DEVICE_DIR) or --user (or TONARI_USER)".into(),
            ));
        };
        if user.is_empty() || user.contains(['/', '\\']) || user.starts_with('.') {
            return Err(CliError::Usage(
                "username cannot be used as a directory name".into(),
            ));
        }
        let home = std::env::var_os("HOME")
            .ok_or_else(|| CliError::Usage("HOME is not set; give --device-dir".into()))?;
        Ok(PathBuf::from(home)
            .join(".local/share/tonari-cli")
            .join(user))
    }

    fn password(&self) -> Res<String> {
        if let Some(p) = &self.password {
            return Ok(p.clone());
        }
        eprint!("password: ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| CliError::Usage(format!("cannot read password: {e}")))?;
        let p = line.trim_end_matches(['\n', '\r']).to_string();
        if p.is_empty() {
            return Err(CliError::Usage("empty password".into()));
        }
        Ok(p)
    }

    fn open(&self) -> Res<Client> {
        let dir = self.device_dir(None)?;
        Ok(Client::open(&dir)?)
    }

    /// Open the device and make sure `room` is known locally (a pending
    /// invitation is accepted by syncing once).
    async fn open_with_room(&self, room: &str) -> Res<Client> {
        let c = self.open()?;
        if let Err(SdkError::UnknownRoom(_)) = c.room(room).await
            && let Err(e) = c.sync().await
        {
            eprintln!("warning [{}]: {e}", e.kind());
        }
        Ok(c)
    }
}

async fn run(cli: Cli) -> Res<()> {
    let g = &cli.global;
    match &cli.command {
        Command::Register {
            username,
            invitation,
            display_name,
            role,
        } => {
            let password = g.password()?;
            let req = tonari_wire::RegisterRequest {
                username: username.clone(),
                password,
                invitation_code: invitation.clone(),
                display_name: display_name.clone(),
                role: *role,
            };
            let r = Client::register_with(&g.server, &req).await?;
            println!(
                "registered {} (user id {}, role {})",
                r.username, r.user_id, r.role
            );
        }
        Command::Login {
            username,
            device_name,
            totp,
        } => {
            let dir = g.device_dir(Some(username))?;
            let password = g.password()?;
            let c = Client::login_with_totp(
                &g.server,
                &dir,
                username,
                &password,
                device_name,
                totp.as_deref(),
            )
            .await?;
            println!(
                "logged in as {} ({}, user id {}, device {}); device dir {}",
                c.username(),
                c.identity().role,
                c.user_id(),
                c.device_id(),
                dir.display()
            );
            if c.needs_totp_enrollment() {
                println!(
                    "your role requires a second factor: run `tonari-cli totp-enroll`, then `tonari-cli totp-confirm CODE`"
                );
            }
        }
        Command::Logout => {
            let c = g.open()?;
            c.logout().await?;
            println!("logged out");
        }
        Command::TotpEnroll => {
            let c = g.open()?;
            let e = c.totp_enroll().await?;
            println!("secret (base32): {}", e.secret_base32);
            println!("{}", e.otpauth_uri);
            println!("add it to an authenticator app, then: tonari-cli totp-confirm CODE");
        }
        Command::TotpConfirm { code } => {
            let c = g.open()?;
            c.totp_confirm(code).await?;
            println!("TOTP is on: log in with --totp CODE from now on");
        }
        Command::Rooms => {
            let c = g.open()?;
            let rooms = c.rooms().await?;
            if rooms.is_empty() {
                println!("no rooms");
            }
            for r in rooms {
                let members: Vec<String> = r.members.iter().map(member_label).collect();
                println!(
                    "{}  last_seq={}  {}  members: {}",
                    r.room_id,
                    r.last_seq,
                    r.status,
                    members.join(", ")
                );
            }
        }
        Command::Create { patient, no_bots } => {
            let c = g.open()?;
            let mut settings = RoomSettings::care_room(patient.clone());
            settings.policy.allow_bots = !no_bots;
            let room = c.create_room_with(&settings).await?;
            println!("{room}");
        }
        Command::Policy { room } => {
            let c = g.open_with_room(room).await?;
            let s = c.room_settings(room)?;
            match &s.patient_network_id {
                Some(p) => println!("care room of patient {p}"),
                None => println!("team room (no patient or family members)"),
            }
            println!("bots allowed: {}", s.policy.allow_bots);
            for r in &s.policy.rules {
                let list = |v: &[Role]| {
                    if v.is_empty() {
                        "nobody".to_string()
                    } else {
                        v.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
                    }
                };
                println!(
                    "{:<13} adds: {}; removes: {}",
                    r.actor.as_str(),
                    list(&r.may_add),
                    list(&r.may_remove)
                );
            }
            println!(
                "always: a device may leave; members manage their own devices; patients and family need the patient's signed consent"
            );
        }
        Command::OrgCreate { name, kind } => {
            let c = g.open()?;
            let org = c.create_org(name, *kind).await?;
            println!(
                "organisation {} created: {} ({})",
                org.org_id, org.name, org.kind
            );
        }
        Command::Notices { setting } => {
            let c = g.open()?;
            let prefs = match setting.as_deref() {
                None => c.notice_prefs().await?,
                Some("on") => c.set_result_notices(Some(true)).await?,
                Some("off") => c.set_result_notices(Some(false)).await?,
                Some("default") => c.set_result_notices(None).await?,
                Some(other) => {
                    return Err(tonari_sdk::SdkError::Invalid(format!(
                        "expected on, off or default, not {other:?}"
                    ))
                    .into());
                }
            };
            println!(
                "result notices by e-mail: {} ({})",
                if prefs.effective { "on" } else { "off" },
                match prefs.results {
                    None => "role default",
                    Some(_) => "your choice",
                }
            );
        }
        Command::Orgs => {
            let c = g.open()?;
            for o in c.orgs().await? {
                println!("{:>5}  {}  ({})", o.org_id, o.name, o.kind);
            }
        }
        Command::InviteEmail {
            email,
            role,
            org,
            patient,
            relationship,
            legal_proxy,
            room,
        } => {
            let c = g.open()?;
            let inv = c
                .invite_by_email(&CreateInvitation {
                    email: email.clone(),
                    role: *role,
                    org_id: *org,
                    patient_network_id: patient.clone(),
                    relationship: relationship.clone(),
                    legal_proxy: *legal_proxy,
                    room_id: room.clone(),
                })
                .await?;
            println!(
                "invitation {} e-mailed ({}); the code is single use and expires in {} h",
                inv.invitation_id,
                inv.role,
                (inv.expires_ms - now_ms()).max(0) / 3_600_000
            );
        }
        Command::Invitations { complete } => {
            let c = g.open()?;
            if *complete {
                c.sync().await?;
                for u in c.complete_invitations().await? {
                    println!("added {u} to the room they were invited to");
                }
            }
            for i in c.invitations().await? {
                println!(
                    "{:>5}  {:<12} {:<9} {}{}",
                    i.invitation_id,
                    i.role.as_str(),
                    i.status,
                    i.username.as_deref().unwrap_or("-"),
                    i.room_id
                        .as_deref()
                        .map(|r| format!("  room {}", short(r)))
                        .unwrap_or_default()
                );
            }
        }
        Command::Directory { query, role, org } => {
            let c = g.open()?;
            let found = c.search_directory(query.as_deref(), *role, *org).await?;
            if found.is_empty() {
                println!("nobody found");
            }
            for u in found {
                println!(
                    "{}  \"{}\"  {}{}  devices: {}",
                    u.username,
                    u.display_name,
                    u.role,
                    u.org.map(|o| format!(" at {}", o.name)).unwrap_or_default(),
                    u.devices.len()
                );
            }
        }
        Command::Consent {
            room,
            username,
            revoke,
            patient,
        } => {
            let c = g.open()?;
            let nid = match patient {
                Some(p) => p.clone(),
                None => {
                    let me = c.user_devices(c.username()).await?;
                    me.network_id
                        .or(me.family_of.map(|f| f.patient_network_id))
                        .ok_or_else(|| {
                            CliError::Usage(
                                "only the patient or a legal proxy consents; give --patient".into(),
                            )
                        })?
                }
            };
            if *revoke {
                match c.revoke_consent(room, &nid, username).await? {
                    Some(ack) => println!(
                        "consent for {username} revoked; removed from the room (seq {})",
                        ack.seq
                    ),
                    None => println!(
                        "consent for {username} revoked; the care team must remove them before anything else changes"
                    ),
                }
            } else {
                c.sign_consent(room, &nid, username, true).await?;
                println!(
                    "consent for {username} signed and recorded; the care team can add them now"
                );
            }
        }
        Command::Invite { room, username } => {
            let c = g.open_with_room(room).await?;
            let ack = c.invite(room, username).await?;
            println!("invited {username} (seq {}, epoch {})", ack.seq, ack.epoch);
        }
        Command::Send { room, text } => {
            let c = g.open_with_room(room).await?;
            let ack = c.send_text(room, text).await?;
            println!("{}", ack.seq);
        }
        Command::Follow { room, history } => {
            let c = g.open()?;
            follow(&c, room, *history).await?;
        }
        Command::History { room } => {
            let c = g.open()?;
            print_history(&c, room).await?;
        }
        Command::Remove { room, username } => {
            let c = g.open_with_room(room).await?;
            let ack = c.remove(room, username).await?;
            println!("removed {username} (seq {}, epoch {})", ack.seq, ack.epoch);
        }
        Command::Leave { room } => {
            let c = g.open_with_room(room).await?;
            let ack = c.leave(room).await?;
            println!(
                "leave requested (seq {}); another member completes it",
                ack.seq
            );
        }
        Command::Sync => {
            let c = g.open()?;
            let events = c.sync().await?;
            for e in &events {
                println!("{} {}", short(e.room_id()), render(c.device_id(), e));
            }
            if events.is_empty() {
                println!("nothing new");
            }
        }
    }
    Ok(())
}

async fn follow(c: &Client, room: &str, history: bool) -> Res<()> {
    // Make sure the room exists locally (it may arrive with a pending welcome).
    let synced = c.sync().await;
    if history {
        print_history(c, room).await?;
    }
    match synced {
        Ok(events) if !history => print_room_events(c, room, &events),
        Ok(_) => {}
        Err(e) => eprintln!("warning [{}]: {e}", e.kind()),
    }
    // Fail early with a clear message for unknown rooms.
    let mut printed = c.room(room).await?.last_seq;
    let mut sub = c.connect().await?;
    // Another process using this device directory (e.g. `send` in a second
    // terminal) may have processed messages meanwhile: show those from the
    // local history, and never print a seq twice.
    printed = print_history_after(c, room, printed).await?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            next = sub.next() => match next {
                None => return Ok(()),
                Some(Ok(e)) => {
                    if let Event::Message { seq, .. } = &e {
                        if *seq <= printed {
                            continue;
                        }
                        printed = *seq;
                    }
                    print_room_events(c, room, std::slice::from_ref(&e));
                    if matches!(&e, Event::Removed { room_id, .. } | Event::Left { room_id, .. } if room_id == room) {
                        return Ok(());
                    }
                }
                Some(Err(e)) => {
                    if matches!(e, SdkError::NotLoggedIn)
                        || e.is_code(tonari_sdk::ErrorCode::Unauthenticated)
                    {
                        return Err(e.into());
                    }
                    eprintln!("warning [{}]: {e}", e.kind());
                }
            }
        }
    }
}

/// Print local history messages after `after`; returns the last seq printed.
async fn print_history_after(c: &Client, room: &str, after: u64) -> Res<u64> {
    let mut last = after;
    for m in c.history(room).await?.into_iter().filter(|m| m.seq > after) {
        println!(
            "[{}] {}: {}",
            m.seq,
            m.sender.username,
            m.content.display_text()
        );
        last = m.seq;
    }
    Ok(last)
}

fn print_room_events(c: &Client, room: &str, events: &[Event]) {
    let mut out = std::io::stdout().lock();
    for e in events.iter().filter(|e| e.room_id() == room) {
        let _ = writeln!(out, "{}", render(c.device_id(), e));
    }
    let _ = out.flush();
}

fn short(room_id: &str) -> String {
    format!("[{}]", room_id.get(..8).unwrap_or(room_id))
}

fn member_label(s: &Sender) -> String {
    match s.role {
        Some(role) => format!("{} ({role}, device {})", s.username, s.device_id),
        None => format!("{} (device {})", s.username, s.device_id),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// One line per event.
fn render(own_device: i64, e: &Event) -> String {
    match e {
        Event::Message {
            seq,
            sender,
            content,
            ..
        } => format!("[{seq}] {}: {}", sender.username, content.display_text()),
        Event::MembersChanged {
            by,
            added,
            removed,
            grounds,
            ..
        } => {
            let why = |device: i64| {
                grounds
                    .iter()
                    .find(|(d, _)| *d == device)
                    .map(|(_, g)| format!(" [{g}]"))
                    .unwrap_or_default()
            };
            let mut parts = Vec::new();
            for a in added {
                parts.push(format!(
                    "* {} added {}{}",
                    by.username,
                    member_label(a),
                    why(a.device_id)
                ));
            }
            for r in removed {
                if r.device_id == by.device_id {
                    parts.push(format!("* {} left", member_label(r)));
                } else if r.device_id == own_device {
                    parts.push(format!("* {} removed you{}", by.username, why(r.device_id)));
                } else {
                    parts.push(format!(
                        "* {} removed {}{}",
                        by.username,
                        member_label(r),
                        why(r.device_id)
                    ));
                }
            }
            parts.join("\n")
        }
        Event::Joined { room_id } => format!("* joined room {room_id}"),
        Event::Removed { seq, .. } => format!("* you were removed from the room (seq {seq})"),
        Event::Left { seq, .. } => format!("* you left the room (seq {seq})"),
        Event::Undecryptable { seq, .. } => format!("[{seq}] (message could not be decrypted)"),
    }
}

/// Print a room's local history, one line per message.
async fn print_history(c: &Client, room: &str) -> Res<()> {
    print_history_after(c, room, 0).await.map(|_| ())
}
