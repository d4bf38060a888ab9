//! The MLLP listener: HL7 v2 messages framed as `0x0B message 0x1C 0x0D` over
//! TCP, each answered with an ACK in the same framing. Frames are bounded
//! (`mllp_max_frame_bytes`; a longer one gets AR and the connection is
//! closed), connections are bounded (64), idle connections close after 5
//! minutes, and every task is owned by the app's `TaskTracker` and ends on
//! shutdown.

use super::Ingestor;
use super::hl7::{self, AckCode};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const START: u8 = 0x0B;
const END: [u8; 2] = [0x1C, 0x0D];
const MAX_CONNECTIONS: usize = 64;
const IDLE: Duration = Duration::from_secs(300);

/// Accept connections until `cancel`.
pub async fn serve(
    listener: TcpListener,
    ingestor: Arc<Ingestor>,
    max_frame: usize,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "MLLP accept failed");
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "MLLP connection refused: too many connections");
            continue;
        };
        let ing = ingestor.clone();
        let cancel = cancel.clone();
        tasks.spawn(async move {
            let _permit = permit;
            if let Err(e) = connection(stream, &ing, max_frame, &cancel).await {
                tracing::debug!(%peer, error = %e, "MLLP connection ended");
            }
        });
    }
}

async fn connection(
    mut stream: TcpStream,
    ing: &Ingestor,
    max_frame: usize,
    cancel: &CancellationToken,
) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        // Hand out every complete frame in the buffer.
        while let Some(frame) = take_frame(&mut buf) {
            let ack = handle_frame(ing, &frame).await;
            stream.write_all(&wrap(ack.as_bytes())).await?;
        }
        if buf.len() > max_frame + 3 {
            let h = hl7::header(&String::from_utf8_lossy(&buf[..buf.len().min(1024)]));
            let ack = hl7::ack(
                &h,
                AckCode::AR,
                "frame too large",
                crate::accounts::now_ms(),
            );
            tracing::info!(control_id = %h.control_id, "HL7 frame too large: AR");
            ing.count("hl7", "AR");
            stream.write_all(&wrap(ack.as_bytes())).await?;
            return Ok(());
        }
        let n = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = tokio::time::timeout(IDLE, stream.read(&mut chunk)) => match r {
                Ok(r) => r?,
                Err(_) => return Ok(()),
            },
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Remove and return the first complete frame's content. Bytes before a
/// start byte are discarded.
pub fn take_frame(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let start = match buf.iter().position(|&b| b == START) {
        Some(p) => p,
        None => {
            buf.clear();
            return None;
        }
    };
    if start > 0 {
        buf.drain(..start);
    }
    let end = buf.windows(2).position(|w| w == END)?;
    let frame = buf[1..end].to_vec();
    buf.drain(..end + 2);
    Some(frame)
}

pub fn wrap(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 3);
    out.push(START);
    out.extend_from_slice(msg);
    out.extend_from_slice(&END);
    out
}

/// Process one message; the ACK to send back (and counted by its code).
pub async fn handle_frame(ing: &Ingestor, frame: &[u8]) -> String {
    let ack = answer(ing, frame).await;
    let outcome = if ack.contains("|duplicate, already accepted") {
        "duplicate"
    } else if ack.contains("\rMSA|AA|") {
        "stored"
    } else if ack.contains("\rMSA|AE|") {
        "AE"
    } else {
        "AR"
    };
    ing.count("hl7", outcome);
    ack
}

async fn answer(ing: &Ingestor, frame: &[u8]) -> String {
    let now = crate::accounts::now_ms();
    let Ok(text) = std::str::from_utf8(frame) else {
        let h = hl7::header(&String::from_utf8_lossy(frame));
        tracing::info!(control_id = %h.control_id, "HL7 refused: not UTF-8 (AR)");
        return hl7::ack(&h, AckCode::AR, "the message is not UTF-8", now);
    };
    let h = hl7::header(text);
    let Some(source) = ing.source_for_key(&h.security) else {
        tracing::info!(control_id = %h.control_id, "HL7 refused: source not authenticated (AR)");
        return hl7::ack(&h, AckCode::AR, "source not authenticated (MSH-8)", now);
    };
    let oru = match hl7::parse_oru(text, &ing.network_id_authority, source) {
        Ok(o) => o,
        Err(r) => {
            tracing::info!(source, control_id = %h.control_id, code = r.code.as_str(), reason = r.reason, "HL7 refused");
            return hl7::ack(&h, r.code, r.reason, now);
        }
    };
    let item = match oru.item(source) {
        Ok(i) => i,
        Err(_) => return hl7::ack(&h, AckCode::AE, "the result could not be encoded", now),
    };
    match ing.store(source, &[item]).await {
        Ok(stored) if stored.inserted.is_empty() => {
            hl7::ack(&h, AckCode::AA, "duplicate, already accepted", now)
        }
        Ok(_) => hl7::ack(&h, AckCode::AA, "accepted", now),
        Err(e) => {
            tracing::error!(error = %e, "bots store failed");
            hl7::ack(&h, AckCode::AE, "could not be stored, send again", now)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing() {
        let mut buf = b"junk\x0bMSH|a\x1c\x0d\x0bMSH|b\x1c".to_vec();
        assert_eq!(take_frame(&mut buf), Some(b"MSH|a".to_vec()));
        assert_eq!(take_frame(&mut buf), None);
        buf.push(0x0d);
        assert_eq!(take_frame(&mut buf), Some(b"MSH|b".to_vec()));
        assert!(buf.is_empty());
    }
}
