//! Queries on the main database for result notices: who in a room wants an
//! e-mail that new results arrived. Only ids, usernames and addresses; no
//! clinical data lives in this database.

use super::{Store, StoreResult};

/// One person to tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub user_id: i64,
    pub email: String,
}

impl Store {
    /// Current human members of `room_id` with an e-mail address who want
    /// result notices: `users.notify_results` = 1, or NULL for a care manager
    /// (the role's default). Bots never get mail.
    pub async fn result_notice_recipients(&self, room_id: &str) -> StoreResult<Vec<Recipient>> {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT DISTINCT u.id, u.email FROM room_members m
             JOIN devices d ON d.id = m.device_id
             JOIN users u ON u.id = d.user_id
             WHERE m.room_id = $1 AND m.left_at_seq IS NULL
               AND u.email IS NOT NULL AND u.email <> '' AND u.role <> 'bot'
               AND (u.notify_results = 1 OR (u.notify_results IS NULL AND u.role = 'care_manager'))
             ORDER BY u.id",
        )
        .bind(room_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(user_id, email)| Recipient { user_id, email })
            .collect())
    }
}

impl Store {
    /// (notify_results, role) of a user.
    pub async fn notice_pref(&self, user_id: i64) -> StoreResult<Option<(Option<bool>, String)>> {
        let row: Option<(Option<i64>, String)> =
            sqlx::query_as("SELECT notify_results, role FROM users WHERE id = $1")
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(n, role)| (n.map(|v| v != 0), role)))
    }

    pub async fn set_notice_pref(&self, user_id: i64, results: Option<bool>) -> StoreResult<()> {
        sqlx::query("UPDATE users SET notify_results = $1 WHERE id = $2")
            .bind(results.map(i64::from))
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
