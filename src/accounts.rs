//! Accounts, sessions, devices, the directory and key packages.

use crate::audit::AuditEvent;
use crate::config::Registration;
use crate::error::{Error, Result};
use crate::mls;
use crate::ratelimit::Limiter;
use crate::store::care::{CreateUserError, NewUser, Profile};
use crate::store::writer::Writer;
use crate::store::{DeviceRow, Store};
use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use tonari_wire::{
    B64, ClaimedKeyPackage, ClaimedKeyPackages, DeviceIdentity, DeviceInfo, DirectoryEntry,
    ErrorCode, KeyPackageCount, LoginRequest, LoginResponse, RegisterRequest, RegisterResponse,
    Role, TotpEnrollment,
};

/// The authenticated caller of a request.
#[derive(Debug, Clone, Copy)]
pub struct AuthDevice {
    pub user_id: i64,
    pub device_id: i64,
    pub role: Role,
    /// The role needs TOTP and the account has none yet: only TOTP
    /// enrolment and logout are allowed.
    pub restricted: bool,
}

impl AuthDevice {
    /// The identity this device must carry in its MLS credential.
    pub fn identity(&self) -> DeviceIdentity {
        DeviceIdentity {
            user_id: self.user_id,
            device_id: self.device_id,
            role: self.role,
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// RFC 6238 with the usual authenticator-app parameters (SHA-1, 6 digits,
/// 30 s steps, one step of clock skew either way).
fn totp(secret: &[u8]) -> Result<totp_rs::Totp> {
    totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_digits(6)
        .with_step_duration(30)
        .with_skew(1)
        .with_secret(secret.to_vec())
        .build()
        .map_err(|e| Error::internal(format!("totp: {e:?}")))
}

pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn validate_username(name: &str) -> Result<()> {
    let ok_len = (3..=64).contains(&name.len());
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'));
    if ok_len && ok_chars {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::InvalidCredentials,
            "usernames are 3-64 characters of a-z, 0-9, '_', '.', '-'",
        ))
    }
}

fn validate_password(pw: &str) -> Result<()> {
    if (8..=1024).contains(&pw.len()) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::InvalidCredentials,
            "passwords are 8 to 1024 bytes long",
        ))
    }
}

/// Password hashing is memory-hard (argon2id, ~19 MiB each): at most this
/// many run at once, so a burst of logins cannot exhaust memory.
fn hashing_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(cores)
    })
}

async fn hash_password(password: String) -> Result<String> {
    let _permit = hashing_permits().acquire().await.map_err(Error::internal)?;
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(Error::internal)
    })
    .await
    .map_err(Error::internal)?
}

async fn verify_password(password: String, hash: String) -> Result<bool> {
    let _permit = hashing_permits().acquire().await.map_err(Error::internal)?;
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&hash).map_err(Error::internal)?;
        Ok(Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await
    .map_err(Error::internal)?
}

/// A directory entry from a profile and its devices.
pub fn directory_entry(p: Profile, devices: &[DeviceRow]) -> DirectoryEntry {
    DirectoryEntry {
        user_id: p.id,
        display_name: if p.display_name.is_empty() {
            p.username.clone()
        } else {
            p.display_name
        },
        username: p.username,
        role: p.role,
        org: p.org,
        network_id: p.network_id,
        family_of: p.family_of,
        devices: devices.iter().map(device_info).collect(),
    }
}

pub fn device_info(d: &DeviceRow) -> DeviceInfo {
    DeviceInfo {
        device_id: d.id,
        user_id: d.user_id,
        username: d.username.clone(),
        role: d.role,
        device_name: d.name.clone(),
        signature_key: B64(d.signature_key.clone()),
    }
}

pub struct Accounts {
    store: Store,
    writer: Writer,
    session_ttl_ms: i64,
    /// A session unused for this long is logged out.
    session_idle_ms: i64,
    /// A verified session is re-checked against the store after this long (so
    /// expiry, idle logout or revocation elsewhere applies within it); the
    /// check also records the use.
    session_cache_ms: i64,
    low_water: u32,
    max_per_device: u32,
    /// A real argon2id hash to verify against when the user does not exist,
    /// so a failed login takes as long whether or not the name is known.
    dummy_hash: String,
    /// Recently verified sessions (token hash → device, cached-until ms), so
    /// a busy device does not cost a database read per request.
    sessions: Mutex<HashMap<Vec<u8>, (AuthDevice, i64)>>,
    /// Login attempts per client IP.
    ip_attempts: Limiter,
    /// Failed logins per account.
    account_failures: Limiter,
    registration: Registration,
    totp_required_roles: Vec<Role>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

/// Most cached sessions (the cache is cleared when full).
const SESSION_CACHE_MAX: usize = 100_000;

impl Accounts {
    pub async fn new(
        store: Store,
        writer: Writer,
        config: &crate::Config,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Result<Self> {
        Ok(Accounts {
            metrics,
            store,
            writer,
            session_ttl_ms: i64::try_from(config.session_ttl_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX),
            session_idle_ms: i64::try_from(config.session_idle_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX),
            session_cache_ms: i64::try_from(config.session_cache_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX),
            low_water: config.key_package_low_water,
            registration: config.registration,
            totp_required_roles: config.totp_required_roles.clone(),
            max_per_device: config.key_package_max_per_device,
            dummy_hash: hash_password("tonari-dummy-password".to_string()).await?,
            sessions: Mutex::new(HashMap::new()),
            ip_attempts: Limiter::new(
                config.login_max_attempts_per_ip,
                config.login_ip_window_secs,
            ),
            account_failures: Limiter::new(
                config.login_max_failures_per_account,
                config.login_account_window_secs,
            ),
        })
    }

    pub async fn register(&self, req: RegisterRequest) -> Result<RegisterResponse> {
        validate_username(&req.username)?;
        validate_password(&req.password)?;
        let display_name = req.display_name.as_deref().unwrap_or("").trim();
        if display_name.len() > 128 || display_name.chars().any(char::is_control) {
            return Err(Error::new(
                ErrorCode::InvalidRequest,
                "display_name must be at most 128 bytes without control characters",
            ));
        }
        let code_hash = req.invitation_code.as_deref().map(|c| hash_token(c.trim()));
        let role = match (self.registration, &code_hash) {
            (_, Some(_)) => Role::Doctor, // the invitation decides
            (Registration::Open, None) => req.role.unwrap_or(Role::Doctor),
            (Registration::Invitation, None) => {
                return Err(Error::new(
                    ErrorCode::InvitationRequired,
                    "this server registers accounts by invitation only: use the code from your invitation e-mail",
                ));
            }
        };
        if role == Role::Patient || role == Role::Family {
            // Open registration cannot make patient or family accounts: they
            // need a patient link that only an invitation carries.
            return Err(Error::new(
                ErrorCode::InvalidRequest,
                "patient and family accounts are created from an invitation",
            ));
        }
        let hash = hash_password(req.password).await?;
        let user = NewUser {
            username: &req.username,
            password_hash: &hash,
            display_name,
            role,
            org_id: None,
            network_id: None,
            family: None,
        };
        match self
            .store
            .create_user(user, code_hash.as_deref(), now_ms())
            .await
        {
            Ok((user_id, role, invitation)) => {
                tracing::info!(user_id, role = %role, "user registered");
                self.audit(
                    "user_registered",
                    None,
                    format!("user:{user_id}"),
                    json!({ "role": role, "invitation": invitation.as_ref().map(|i| i.id) }),
                )
                .await;
                if let Some(inv) = invitation {
                    self.audit(
                        "invitation_accepted",
                        None,
                        format!("invitation:{}", inv.id),
                        json!({ "user": user_id, "inviter": inv.inviter_user, "role": inv.role }),
                    )
                    .await;
                }
                Ok(RegisterResponse {
                    user_id,
                    username: req.username,
                    role,
                })
            }
            Err(CreateUserError::UsernameTaken) => Err(Error::new(
                ErrorCode::UsernameTaken,
                "that username is taken",
            )),
            Err(CreateUserError::InvitationInvalid) => Err(Error::new(
                ErrorCode::InvitationInvalid,
                "the invitation code is unknown, expired or already used",
            )),
            Err(CreateUserError::NetworkIdTaken) => Err(Error::new(
                ErrorCode::Forbidden,
                "a patient account for this network id exists already",
            )),
            Err(CreateUserError::Store(e)) => Err(e.into()),
        }
    }

    pub async fn login(&self, req: LoginRequest, peer: std::net::IpAddr) -> Result<LoginResponse> {
        let res = self.login_inner(req, peer).await;
        self.metrics.login(match &res {
            Ok(_) => "ok",
            Err(e) => match e.code {
                ErrorCode::RateLimited => "rate_limited",
                ErrorCode::TotpRequired | ErrorCode::TotpInvalid => "totp_refused",
                ErrorCode::LoginFailed => "failed",
                _ => "error",
            },
        });
        res
    }

    async fn login_inner(
        &self,
        req: LoginRequest,
        peer: std::net::IpAddr,
    ) -> Result<LoginResponse> {
        let failed = || Error::new(ErrorCode::LoginFailed, "wrong username or password");
        let now = now_ms();
        // Every attempt counts against the client address.
        self.ip_attempts
            .hit(&format!("ip:{peer}"), now)
            .map_err(|r| Error::rate_limited(r.0))?;
        let user = self.store.user_by_name(&req.username).await?;
        let Some(user) = user else {
            let _ = verify_password(req.password, self.dummy_hash.clone()).await;
            return Err(failed());
        };
        // Every password check of an account is counted BEFORE it runs (so
        // concurrent guesses cannot slip past the limit) and forgiven after a
        // success; a locked account is refused without checking.
        let account = format!("user:{}", user.id);
        let attempt = self
            .account_failures
            .hit(&account, now)
            .map_err(|r| Error::rate_limited(r.0))?;
        if !verify_password(req.password, user.password_hash.clone()).await? {
            tracing::info!(user_id = user.id, "login refused: wrong password");
            self.audit("login_failed", None, account.clone(), json!({}))
                .await;
            if attempt == self.account_failures.limit() {
                tracing::warn!(user_id = user.id, "account locked after failed logins");
                self.audit("account_locked", None, account, json!({})).await;
            }
            return Err(failed());
        }
        self.check_totp(user.id, req.totp_code.as_deref()).await?;
        self.account_failures.reset(&account);
        if req.signature_key.0.len() != 32 {
            return Err(Error::new(
                ErrorCode::InvalidRequest,
                "signature_key must be a raw 32-byte Ed25519 public key",
            ));
        }
        if req.device_name.is_empty() || req.device_name.len() > 128 {
            return Err(Error::new(
                ErrorCode::InvalidRequest,
                "device_name must be 1-128 bytes",
            ));
        }
        let device_id = match req.device_id {
            Some(id) => {
                let device = self.store.device(id).await?;
                match device {
                    Some(d) if d.user_id == user.id && d.signature_key == req.signature_key.0 => id,
                    _ => {
                        return Err(Error::new(
                            ErrorCode::Forbidden,
                            "that device is not registered to this account with this key",
                        ));
                    }
                }
            }
            None => {
                let id = self
                    .store
                    .create_device(user.id, &req.device_name, &req.signature_key.0, now_ms())
                    .await?
                    .ok_or_else(|| {
                        Error::new(
                            ErrorCode::InvalidRequest,
                            "this signature key is already registered to a device",
                        )
                    })?;
                let fingerprint = hex::encode(Sha256::digest(&req.signature_key.0));
                self.audit(
                    "device_added",
                    Some((user.id, id)),
                    format!("device:{id}"),
                    json!({ "signature_key_sha256": fingerprint }),
                )
                .await;
                id
            }
        };
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let token = hex::encode(raw);
        let now = now_ms();
        self.store
            .create_session(
                &hash_token(&token),
                user.id,
                device_id,
                now,
                now.saturating_add(self.session_ttl_ms),
            )
            .await?;
        tracing::info!(user_id = user.id, device_id, "login");
        self.audit(
            "login",
            Some((user.id, device_id)),
            format!("device:{device_id}"),
            json!({}),
        )
        .await;
        let restricted = self.totp_missing(user.id).await?;
        Ok(LoginResponse {
            token,
            user_id: user.id,
            device_id,
            role: user.role,
            totp_enrollment_required: restricted,
        })
    }

    pub async fn authenticate(&self, token: &str) -> Result<AuthDevice> {
        let hash = hash_token(token);
        let now = now_ms();
        if let Some((auth, until)) = self.session_cache().get(&hash).copied()
            && until > now
        {
            return Ok(auth);
        }
        match self
            .store
            .session(&hash, now, now.saturating_sub(self.session_idle_ms))
            .await?
        {
            Some((user_id, device_id)) => {
                let (role, totp_on) = self
                    .store
                    .role_and_totp(user_id)
                    .await?
                    .ok_or_else(Error::unauthenticated)?;
                let auth = AuthDevice {
                    user_id,
                    device_id,
                    role,
                    restricted: self.needs_totp(role, totp_on),
                };
                if self.session_cache_ms > 0 {
                    let mut cache = self.session_cache();
                    if cache.len() >= SESSION_CACHE_MAX {
                        cache.clear();
                    }
                    cache.insert(hash, (auth, now.saturating_add(self.session_cache_ms)));
                }
                Ok(auth)
            }
            None => Err(Error::unauthenticated()),
        }
    }

    pub async fn logout(&self, auth: AuthDevice, token: &str) -> Result<()> {
        let hash = hash_token(token);
        self.audit(
            "logout",
            Some((auth.user_id, auth.device_id)),
            format!("device:{}", auth.device_id),
            json!({}),
        )
        .await;
        self.session_cache().remove(&hash);
        self.store.delete_session(&hash).await?;
        Ok(())
    }

    /// The role needs TOTP and it is not on yet.
    fn needs_totp(&self, role: Role, totp_on: bool) -> bool {
        !totp_on && self.totp_required_roles.contains(&role)
    }

    /// [`Self::needs_totp`] for a user looked up in the store.
    async fn totp_missing(&self, user_id: i64) -> Result<bool> {
        Ok(self
            .store
            .role_and_totp(user_id)
            .await?
            .is_some_and(|(role, on)| self.needs_totp(role, on)))
    }

    /// The second factor, for accounts that turned TOTP on.
    async fn check_totp(&self, user_id: i64, code: Option<&str>) -> Result<()> {
        let Some((secret, true)) = self.store.totp(user_id).await? else {
            return Ok(());
        };
        let Some(code) = code else {
            return Err(Error::new(
                ErrorCode::TotpRequired,
                "this account needs its TOTP code (totp_code)",
            ));
        };
        self.use_totp_code(user_id, &secret, code, false).await
    }

    /// Check a code against `secret` and consume its time step (no replay).
    async fn use_totp_code(
        &self,
        user_id: i64,
        secret: &[u8],
        code: &str,
        enable: bool,
    ) -> Result<()> {
        let invalid = || {
            Error::new(
                ErrorCode::TotpInvalid,
                "the TOTP code is wrong, expired or already used",
            )
        };
        let step = totp(secret)?
            .check_current(code.trim())
            .ok_or_else(invalid)?;
        if !self.store.totp_use_step(user_id, step, enable).await? {
            return Err(invalid());
        }
        Ok(())
    }

    /// Start TOTP enrolment: a fresh secret, active after [`Self::totp_confirm`].
    pub async fn totp_enroll(&self, auth: AuthDevice) -> Result<TotpEnrollment> {
        let mut secret = [0u8; 20];
        rand::rng().fill_bytes(&mut secret);
        if !self.store.totp_begin(auth.user_id, &secret).await? {
            return Err(Error::new(
                ErrorCode::TotpAlreadyEnabled,
                "TOTP is already on for this account",
            ));
        }
        let username = self
            .store
            .device(auth.device_id)
            .await?
            .map(|d| d.username)
            .unwrap_or_default();
        let secret_base32 = totp_rs::Secret::from(secret.to_vec()).to_base32();
        Ok(TotpEnrollment {
            otpauth_uri: format!(
                "otpauth://totp/Tonari:{username}?secret={secret_base32}&issuer=Tonari&algorithm=SHA1&digits=6&period=30"
            ),
            secret_base32,
        })
    }

    /// Confirm enrolment with a current code: from now on logins need one.
    pub async fn totp_confirm(&self, auth: AuthDevice, code: &str) -> Result<()> {
        let Some((secret, false)) = self.store.totp(auth.user_id).await? else {
            return Err(Error::new(
                ErrorCode::TotpInvalid,
                "no TOTP enrolment is pending for this account (enroll first)",
            ));
        };
        self.use_totp_code(auth.user_id, &secret, code, true)
            .await?;
        // Sessions restricted for lack of TOTP are now full sessions.
        self.session_cache()
            .retain(|_, (a, _)| a.user_id != auth.user_id);
        self.audit(
            "totp_enabled",
            Some((auth.user_id, auth.device_id)),
            format!("user:{}", auth.user_id),
            json!({}),
        )
        .await;
        Ok(())
    }

    /// Chain a security event into the audit log (logged if it cannot be).
    async fn audit(
        &self,
        event: &str,
        actor: Option<(i64, i64)>,
        subject: String,
        details: serde_json::Value,
    ) {
        if !self
            .writer
            .audit(AuditEvent::new(event, actor, subject, details))
            .await
        {
            tracing::error!(event, "audit entry not recorded");
        }
    }

    fn session_cache(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, (AuthDevice, i64)>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The directory entry of a user: who they are and their devices' keys.
    /// A patient's network id and a family link are shown to professionals
    /// and bots, to the user themself, and to the patient and family of the same
    /// patient (their clients need them to verify consents); to other
    /// patients and family they are left out.
    pub async fn user_devices(&self, auth: AuthDevice, username: &str) -> Result<DirectoryEntry> {
        let mut profile = self
            .store
            .profile_by_name(username)
            .await?
            .ok_or_else(|| Error::new(ErrorCode::UserNotFound, "no such user"))?;
        // Bots verify consents in their rooms like any member: they see it.
        let limited = !auth.role.is_professional() && auth.role != Role::Bot;
        if limited && profile.id != auth.user_id {
            let patient_of = |p: &Profile| {
                p.network_id
                    .clone()
                    .or_else(|| p.family_of.as_ref().map(|f| f.patient_network_id.clone()))
            };
            let caller = self.store.profile(auth.user_id).await?;
            let same_patient = caller
                .as_ref()
                .and_then(patient_of)
                .is_some_and(|mine| patient_of(&profile).as_deref() == Some(mine.as_str()));
            if !same_patient {
                profile.network_id = None;
                profile.family_of = None;
            }
        }
        let devices = self.store.devices_of_user(profile.id).await?;
        Ok(directory_entry(profile, &devices))
    }

    pub async fn device(&self, device_id: i64) -> Result<DeviceInfo> {
        self.store
            .device(device_id)
            .await?
            .map(|d| device_info(&d))
            .ok_or_else(|| Error::new(ErrorCode::DeviceNotFound, "no such device"))
    }

    pub async fn key_package_count(&self, device_id: i64) -> Result<KeyPackageCount> {
        let available = self.store.count_key_packages(device_id).await?;
        Ok(KeyPackageCount {
            available,
            low: available < self.low_water,
        })
    }

    pub async fn upload_key_packages(
        &self,
        auth: AuthDevice,
        key_packages: Vec<B64>,
    ) -> Result<KeyPackageCount> {
        let device = self
            .store
            .device(auth.device_id)
            .await?
            .ok_or_else(Error::unauthenticated)?;
        let have = self.store.count_key_packages(auth.device_id).await?;
        let total = u64::from(have) + key_packages.len() as u64;
        if key_packages.is_empty() || total > u64::from(self.max_per_device) {
            return Err(Error::new(
                ErrorCode::InvalidRequest,
                format!(
                    "upload 1 or more key packages; a device holds at most {} (it has {have})",
                    self.max_per_device
                ),
            ));
        }
        let mut rows = Vec::with_capacity(key_packages.len());
        for kp in key_packages {
            let hash_ref = mls::validate_key_package(&kp.0, &device)?;
            rows.push((hash_ref, kp.0));
        }
        if !self
            .store
            .insert_key_packages(auth.device_id, &rows)
            .await?
        {
            return Err(Error::new(
                ErrorCode::InvalidRequest,
                "a key package in this batch was uploaded before",
            ));
        }
        self.key_package_count(auth.device_id).await
    }

    /// Claim one key package for each device of a user. Returns the claim and
    /// the devices that are now low (to be told so).
    pub async fn claim_key_packages(
        &self,
        username: &str,
    ) -> Result<(ClaimedKeyPackages, Vec<(i64, u32)>)> {
        let user = self
            .store
            .user_by_name(username)
            .await?
            .ok_or_else(|| Error::new(ErrorCode::UserNotFound, "no such user"))?;
        let devices: Vec<i64> = self
            .store
            .devices_of_user(user.id)
            .await?
            .iter()
            .map(|d| d.id)
            .collect();
        let claimed = self.store.claim_key_packages(&devices).await?;
        let mut out = ClaimedKeyPackages {
            user_id: user.id,
            key_packages: Vec::new(),
            exhausted_devices: Vec::new(),
        };
        let mut low = Vec::new();
        for (device_id, data) in claimed {
            match data {
                Some(bytes) => {
                    out.key_packages.push(ClaimedKeyPackage {
                        device_id,
                        key_package: B64(bytes),
                    });
                    let left = self.store.count_key_packages(device_id).await?;
                    if left < self.low_water {
                        low.push((device_id, left));
                    }
                }
                None => {
                    out.exhausted_devices.push(device_id);
                    low.push((device_id, 0));
                }
            }
        }
        tracing::info!(
            user_id = user.id,
            claimed = out.key_packages.len(),
            exhausted = out.exhausted_devices.len(),
            "key packages claimed"
        );
        Ok((out, low))
    }
}
