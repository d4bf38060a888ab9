//! Store functions of the care-team model: users with roles, organisations,
//! family links, invitations and consents.

use super::{Store, StoreError, StoreResult, parse_role};
use sqlx::Row;
use tonari_wire::{FamilyLink, OrgInfo, OrgKind, Role};

/// A new account.
#[derive(Debug, Clone)]
pub struct NewUser<'a> {
    pub username: &'a str,
    pub password_hash: &'a str,
    pub display_name: &'a str,
    pub role: Role,
    pub org_id: Option<i64>,
    /// Patients: their network id.
    pub network_id: Option<String>,
    pub family: Option<FamilyLink>,
}

/// What an invitation fixes about the account that uses it.
#[derive(Debug, Clone)]
pub struct InvitationRow {
    pub id: i64,
    pub inviter_user: Option<i64>,
    pub role: Role,
    pub org_id: Option<i64>,
    pub patient_network_id: Option<String>,
    pub relationship: Option<String>,
    pub legal_proxy: bool,
    pub room_id: Option<String>,
    pub expires_ms: i64,
    pub used_by: Option<(i64, String)>,
    /// The address the invitation was sent to (becomes the account's).
    pub email: Option<String>,
}

/// A user as the directory shows them (without devices).
#[derive(Debug, Clone)]
pub struct Profile {
    pub id: i64,
    pub username: String,
    pub display_name: String,
    pub role: Role,
    pub org: Option<OrgInfo>,
    pub network_id: Option<String>,
    pub family_of: Option<FamilyLink>,
}

/// A stored consent (grant or revocation).
#[derive(Debug, Clone)]
pub struct ConsentRow {
    pub consent_id: String,
    pub subject_user: i64,
    pub granted: bool,
    pub consent: String,
    pub signature: Vec<u8>,
}

/// Directory search filters.
#[derive(Debug, Clone, Default)]
pub struct DirectoryQuery {
    /// Matched against username and display name (case-insensitive substring).
    pub text: Option<String>,
    pub role: Option<Role>,
    pub org_id: Option<i64>,
    pub limit: u32,
}

fn parse_kind(s: &str) -> StoreResult<OrgKind> {
    OrgKind::parse(s).ok_or(StoreError::Corrupt("unknown organisation kind"))
}

const PROFILE_SELECT: &str = "SELECT u.id, u.username, u.display_name, u.role, u.network_id,
        o.id, o.name, o.kind, f.patient_network_id, f.relationship, f.legal_proxy
     FROM users u
     LEFT JOIN orgs o ON o.id = u.org_id
     LEFT JOIN family_links f ON f.user_id = u.id";

fn profile_from_row(r: &sqlx::any::AnyRow) -> StoreResult<Profile> {
    let org = match r.get::<Option<i64>, _>(5) {
        Some(org_id) => Some(OrgInfo {
            org_id,
            name: r.get(6),
            kind: parse_kind(r.get(7))?,
        }),
        None => None,
    };
    let family_of = r
        .get::<Option<String>, _>(8)
        .map(|patient_network_id| FamilyLink {
            patient_network_id,
            relationship: r.get(9),
            legal_proxy: r.get::<i64, _>(10) != 0,
        });
    Ok(Profile {
        id: r.get(0),
        username: r.get(1),
        display_name: r.get(2),
        role: parse_role(r.get(3))?,
        network_id: r.get(4),
        org,
        family_of,
    })
}

fn invitation_from_row(r: &sqlx::any::AnyRow) -> StoreResult<InvitationRow> {
    Ok(InvitationRow {
        id: r.get(0),
        inviter_user: r.get(1),
        role: parse_role(r.get(2))?,
        org_id: r.get(3),
        patient_network_id: r.get(4),
        relationship: r.get(5),
        legal_proxy: r.get::<i64, _>(6) != 0,
        room_id: r.get(7),
        expires_ms: r.get(8),
        used_by: match (r.get::<Option<i64>, _>(9), r.get::<Option<String>, _>(10)) {
            (Some(id), Some(name)) => Some((id, name)),
            _ => None,
        },
        email: r.get(11),
    })
}

/// Why an account could not be created.
#[derive(Debug)]
pub enum CreateUserError {
    UsernameTaken,
    /// Unknown, expired or used invitation code.
    InvitationInvalid,
    /// Another patient account has this network id.
    NetworkIdTaken,
    Store(StoreError),
}

impl From<sqlx::Error> for CreateUserError {
    fn from(e: sqlx::Error) -> Self {
        CreateUserError::Store(e.into())
    }
}

impl Store {
    /// Create a user, using up `invitation` (code hash) in the same
    /// transaction when given: the invitation then fixes role, organisation
    /// and patient link and `user` only contributes name and password.
    pub async fn create_user(
        &self,
        user: NewUser<'_>,
        invitation: Option<&[u8]>,
        now_ms: i64,
    ) -> Result<(i64, Role, Option<InvitationRow>), CreateUserError> {
        // Reads, then writes: on SQLite take the write lock up front, or a
        // concurrent writer makes the upgrade fail with "database is locked".
        let mut tx = if self.db.is_postgres() {
            self.pool.begin().await?
        } else {
            self.pool.begin_with("BEGIN IMMEDIATE").await?
        };
        let mut user = user;
        let mut used = None;
        if let Some(code_hash) = invitation {
            let row = sqlx::query(
                "SELECT id, inviter_user, role, org_id, patient_network_id, relationship, legal_proxy, room_id, expires_ms, NULL, NULL, email
                 FROM invitations WHERE code_hash = $1 AND used_by IS NULL AND expires_ms > $2",
            )
            .bind(code_hash)
            .bind(now_ms)
            .fetch_optional(&mut *tx)
            .await?;
            let inv = match row {
                Some(r) => invitation_from_row(&r).map_err(CreateUserError::Store)?,
                None => return Err(CreateUserError::InvitationInvalid),
            };
            user.role = inv.role;
            user.org_id = inv.org_id;
            user.network_id = None;
            user.family = None;
            match inv.role {
                Role::Patient => user.network_id = inv.patient_network_id.clone(),
                Role::Family => {
                    user.family = inv.patient_network_id.clone().map(|p| FamilyLink {
                        patient_network_id: p,
                        relationship: inv.relationship.clone().unwrap_or_default(),
                        legal_proxy: inv.legal_proxy,
                    })
                }
                _ => {}
            }
            used = Some(inv);
        }
        if let Some(nid) = &user.network_id {
            let taken = sqlx::query("SELECT 1 FROM users WHERE network_id = $1")
                .bind(nid)
                .fetch_optional(&mut *tx)
                .await?;
            if taken.is_some() {
                return Err(CreateUserError::NetworkIdTaken);
            }
        }
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO users (username, password_hash, created_ms, role, org_id, display_name, network_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT(username) DO NOTHING RETURNING id",
        )
        .bind(user.username)
        .bind(user.password_hash)
        .bind(now_ms)
        .bind(user.role.as_str())
        .bind(user.org_id)
        .bind(user.display_name)
        .bind(&user.network_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(user_id) = inserted else {
            return Err(CreateUserError::UsernameTaken);
        };
        if let Some(f) = &user.family {
            sqlx::query(
                "INSERT INTO family_links (user_id, patient_network_id, relationship, legal_proxy) VALUES ($1, $2, $3, $4)",
            )
            .bind(user_id)
            .bind(&f.patient_network_id)
            .bind(&f.relationship)
            .bind(i64::from(f.legal_proxy))
            .execute(&mut *tx)
            .await?;
        }
        if let Some(inv) = &used {
            // The address moves from the invitation to the account.
            sqlx::query(
                "UPDATE invitations SET used_by = $1, used_ms = $2, email = NULL WHERE id = $3",
            )
            .bind(user_id)
            .bind(now_ms)
            .bind(inv.id)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE users SET email = $1 WHERE id = $2")
                .bind(&inv.email)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok((user_id, user.role, used))
    }

    pub async fn profile(&self, user_id: i64) -> StoreResult<Option<Profile>> {
        let sql = format!("{PROFILE_SELECT} WHERE u.id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(profile_from_row).transpose()
    }

    pub async fn profile_by_name(&self, username: &str) -> StoreResult<Option<Profile>> {
        let sql = format!("{PROFILE_SELECT} WHERE u.username = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(profile_from_row).transpose()
    }

    /// Directory search, ordered by display name then id.
    pub async fn search_directory(&self, q: &DirectoryQuery) -> StoreResult<Vec<Profile>> {
        let sql = format!(
            "{PROFILE_SELECT} WHERE (CAST($1 AS TEXT) IS NULL
                     OR lower(u.username) LIKE $1 ESCAPE '\\'
                     OR lower(u.display_name) LIKE $1 ESCAPE '\\')
                AND (CAST($2 AS TEXT) IS NULL OR u.role = $2)
                AND (CAST($3 AS BIGINT) IS NULL OR u.org_id = $3)
              ORDER BY u.display_name, u.id LIMIT $4"
        );
        // A case-insensitive substring match, with LIKE's wildcards escaped.
        let pattern = q.text.as_deref().map(|t| {
            let escaped = t
                .to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%{escaped}%")
        });
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(pattern)
            .bind(q.role.map(Role::as_str))
            .bind(q.org_id)
            .bind(i64::from(q.limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(profile_from_row).collect()
    }

    /// The role of a user and whether their TOTP is on.
    pub async fn role_and_totp(&self, user_id: i64) -> StoreResult<Option<(Role, bool)>> {
        let row = sqlx::query(
            "SELECT u.role, COALESCE(t.enabled, 0) FROM users u
             LEFT JOIN totp t ON t.user_id = u.id WHERE u.id = $1",
        )
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((parse_role(r.get(0))?, r.get::<i64, _>(1) != 0)))
            .transpose()
    }

    // ------------------------------------------------------------ organisations

    /// Create an organisation; `None` when the name is taken.
    pub async fn create_org(
        &self,
        name: &str,
        kind: OrgKind,
        now_ms: i64,
    ) -> StoreResult<Option<i64>> {
        Ok(sqlx::query_scalar(
            "INSERT INTO orgs (name, kind, created_ms) VALUES ($1, $2, $3)
             ON CONFLICT(name) DO NOTHING RETURNING id",
        )
        .bind(name)
        .bind(kind.as_str())
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn org(&self, org_id: i64) -> StoreResult<Option<OrgInfo>> {
        let row = sqlx::query("SELECT id, name, kind FROM orgs WHERE id = $1")
            .bind(org_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(OrgInfo {
                org_id: r.get(0),
                name: r.get(1),
                kind: parse_kind(r.get(2))?,
            })
        })
        .transpose()
    }

    pub async fn orgs(&self) -> StoreResult<Vec<OrgInfo>> {
        let rows = sqlx::query("SELECT id, name, kind FROM orgs ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(OrgInfo {
                    org_id: r.get(0),
                    name: r.get(1),
                    kind: parse_kind(r.get(2))?,
                })
            })
            .collect()
    }

    /// The user that is the patient with this network id, if registered.
    pub async fn patient_user(&self, network_id: &str) -> StoreResult<Option<i64>> {
        let row = sqlx::query("SELECT id FROM users WHERE network_id = $1 AND role = 'patient'")
            .bind(network_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    // ------------------------------------------------------------ invitations

    #[allow(clippy::too_many_arguments)]
    pub async fn create_invitation(
        &self,
        email: Option<&str>,
        code_hash: &[u8],
        inviter_user: Option<i64>,
        role: Role,
        org_id: Option<i64>,
        patient_network_id: Option<&str>,
        relationship: Option<&str>,
        legal_proxy: bool,
        room_id: Option<&str>,
        now_ms: i64,
        expires_ms: i64,
    ) -> StoreResult<i64> {
        let res: i64 = sqlx::query_scalar(
            "INSERT INTO invitations (email, code_hash, inviter_user, role, org_id, patient_network_id, relationship, legal_proxy, room_id, created_ms, expires_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
        )
        .bind(email)
        .bind(code_hash)
        .bind(inviter_user)
        .bind(role.as_str())
        .bind(org_id)
        .bind(patient_network_id)
        .bind(relationship)
        .bind(i64::from(legal_proxy))
        .bind(room_id)
        .bind(now_ms)
        .bind(expires_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok(res)
    }

    /// Take back an invitation whose e-mail could not be sent.
    pub async fn delete_invitation(&self, id: i64) -> StoreResult<()> {
        sqlx::query("DELETE FROM invitations WHERE id = $1 AND used_by IS NULL")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The invitations a user sent, newest first.
    pub async fn invitations_by(&self, inviter_user: i64) -> StoreResult<Vec<InvitationRow>> {
        let rows = sqlx::query(
            "SELECT i.id, i.inviter_user, i.role, i.org_id, i.patient_network_id, i.relationship, i.legal_proxy, i.room_id, i.expires_ms, u.id, u.username, NULL
             FROM invitations i LEFT JOIN users u ON u.id = i.used_by
             WHERE i.inviter_user = $1 ORDER BY i.id DESC LIMIT 500",
        )
        .bind(inviter_user)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(invitation_from_row).collect()
    }

    // ------------------------------------------------------------ consents

    /// Record a consent; `false` if its consent id is already recorded.
    #[allow(clippy::too_many_arguments)]
    pub async fn insert_consent(
        &self,
        consent_id: &str,
        room_id: &str,
        subject_user: i64,
        granted: bool,
        signer_device: i64,
        consent: &str,
        signature: &[u8],
        now_ms: i64,
    ) -> StoreResult<bool> {
        let res = sqlx::query(
            "INSERT INTO consents (consent_id, room_id, subject_user, granted, signer_device, consent, signature, created_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT(consent_id) DO NOTHING",
        )
        .bind(consent_id)
        .bind(room_id)
        .bind(subject_user)
        .bind(i64::from(granted))
        .bind(signer_device)
        .bind(consent)
        .bind(signature)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Every consent of a room, oldest first.
    pub async fn consents(&self, room_id: &str) -> StoreResult<Vec<ConsentRow>> {
        let rows = sqlx::query(
            "SELECT consent_id, subject_user, granted, consent, signature FROM consents
             WHERE room_id = $1 ORDER BY id",
        )
        .bind(room_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| ConsentRow {
                consent_id: r.get(0),
                subject_user: r.get(1),
                granted: r.get::<i64, _>(2) != 0,
                consent: r.get(3),
                signature: r.get(4),
            })
            .collect())
    }
}
