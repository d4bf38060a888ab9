//! Outgoing e-mail over SMTP (lettre). E-mails carry one-time codes and
//! links, never clinical content, patient names or message text.

use crate::config::Config;
use crate::error::{Error, Result};
use lettre::message::{Mailbox, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::time::Duration;
use tonari_wire::ErrorCode;

pub struct Mailer {
    transport: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Mailbox,
    public_url: String,
}

/// Parse `smtp://host[:port]` (port 25 by default).
fn parse_smtp_url(url: &str) -> std::result::Result<(String, u16), String> {
    let rest = url
        .strip_prefix("smtp://")
        .ok_or_else(|| format!("smtp_url must start with smtp:// (got {url:?})"))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse()
                .map_err(|_| format!("smtp_url has an invalid port: {p:?}"))?,
        ),
        None => (rest, 25),
    };
    if host.is_empty() {
        return Err("smtp_url has no host".into());
    }
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

/// Check the form of an e-mail address.
pub fn parse_address(addr: &str) -> Result<Mailbox> {
    let addr = addr.trim();
    if addr.len() > 254 {
        return Err(Error::new(
            ErrorCode::InvalidRequest,
            "the e-mail address is too long",
        ));
    }
    addr.parse::<lettre::Address>()
        .map(|a| Mailbox::new(None, a))
        .map_err(|_| Error::new(ErrorCode::InvalidRequest, "that is not an e-mail address"))
}

impl Mailer {
    pub fn new(config: &Config) -> std::result::Result<Mailer, String> {
        let from: Mailbox = config
            .mail_from
            .parse()
            .map_err(|e| format!("mail_from is not a valid address: {e}"))?;
        let transport = if config.smtp_url.is_empty() {
            None
        } else {
            let (host, port) = parse_smtp_url(&config.smtp_url)?;
            Some(
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
                    .port(port)
                    .timeout(Some(Duration::from_secs(15)))
                    .build(),
            )
        };
        Ok(Mailer {
            transport,
            from,
            public_url: config.public_url.trim_end_matches('/').to_string(),
        })
    }

    fn not_configured() -> Error {
        Error::new(
            ErrorCode::Unavailable,
            "e-mail is not set up on this server (smtp_url), so invitations cannot be sent",
        )
    }

    /// 503 when the server has no SMTP relay configured.
    pub fn check_configured(&self) -> Result<()> {
        match self.transport {
            Some(_) => Ok(()),
            None => Err(Self::not_configured()),
        }
    }

    /// The invitation e-mail: the code, its expiry and where to use it.
    /// Nothing about the patient or the care room.
    pub async fn send_invitation(&self, to: Mailbox, code: &str, expires_ms: i64) -> Result<()> {
        let Some(transport) = &self.transport else {
            return Err(Self::not_configured());
        };
        let expires = format_utc(expires_ms);
        let url = &self.public_url;
        let body = format!(
            "You have been invited to join a care team on Tonari.\n\
             \n\
             Your one-time invitation code: {code}\n\
             It can be used once and expires {expires} (UTC).\n\
             \n\
             Register in the browser: {url}/#/register?code={code}\n\
             or with the command line: tonari-cli register YOUR-USERNAME --invitation {code}\n\
             \n\
             If you did not expect this e-mail, ignore it.\n\
             \n\
             --\n\
             Tonari のケアチームに招待されました。\n\
             招待コード（1回のみ有効、{expires} UTC まで）: {code}\n\
             登録: {url}/#/register?code={code}\n\
             心当たりがない場合は、このメールを無視してください。\n"
        );
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject("Your Tonari invitation / Tonari への招待")
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(Error::internal)?;
        transport.send(message).await.map_err(|e| {
            tracing::warn!(error = %e, "invitation e-mail could not be sent");
            Error::new(
                ErrorCode::Unavailable,
                "the invitation e-mail could not be sent; nothing was created, try again later",
            )
        })?;
        Ok(())
    }
}

impl Mailer {
    /// The result notice: new results arrived in these rooms, with links.
    /// No values, no test names, no patient names.
    pub async fn send_results_notice(&self, to: &str, rooms: &[String]) -> Result<()> {
        let Some(transport) = &self.transport else {
            return Err(Self::not_configured());
        };
        let to = parse_address(to)?;
        let url = &self.public_url;
        let links: String = rooms
            .iter()
            .map(|r| format!("  {url}/#/rooms/{r}\n"))
            .collect();
        let body = format!(
            "New results arrived in {n} care room(s) you are a member of on Tonari.\n\
             Open the room to see them:\n\
             {links}\n\
             --\n\
             Tonari のケアルームに新しい検査結果が届きました。ルームを開いて確認してください。\n\
             {links}\n\
             (You get this notice as a member of the room. Results are shown only inside the room.)\n",
            n = rooms.len()
        );
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject("New results in Tonari / 新しい検査結果")
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(Error::internal)?;
        transport.send(message).await.map_err(|e| {
            tracing::warn!(error = %e, "result notice e-mail could not be sent");
            Error::new(
                ErrorCode::Unavailable,
                "the notice e-mail could not be sent",
            )
        })?;
        Ok(())
    }
}

/// `YYYY-MM-DD HH:MM` in UTC from Unix milliseconds.
pub fn format_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_urls() {
        assert_eq!(
            parse_smtp_url("smtp://127.0.0.1:2525"),
            Ok(("127.0.0.1".into(), 2525))
        );
        assert_eq!(
            parse_smtp_url("smtp://mail.example"),
            Ok(("mail.example".into(), 25))
        );
        assert!(parse_smtp_url("smtps://x").is_err());
        assert!(parse_smtp_url("smtp://x:y").is_err());
    }

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00");
        assert_eq!(format_utc(1_795_000_000_000), "2026-11-18 11:06");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29 00:00");
    }
}
