//! The connection handshake: `start` / `start-ok` (authentication), `tune` / `tune-ok`,
//! `open` / `open-ok`. Runs under the handshake timeout; a client that stalls is dropped.

use bytes::Bytes;
use futures::StreamExt;
use minimq_protocol::types::read;
use minimq_protocol::{
    ConnectionOpenOk, ConnectionStart, ConnectionTune, FieldTable, FieldValue, Frame, Method,
    ReplyCode,
};

use super::{Conn, Reader};
use crate::error::AmqpError;

/// How the handshake ended.
pub enum Outcome {
    /// The connection is open.
    Open,
    /// The client went away or was refused; the connection ends.
    Closed,
}

fn server_properties() -> FieldTable {
    let mut caps = FieldTable::new();
    // Only what is implemented: exchange-to-exchange bindings and connection.blocked
    // are advertised once they exist.
    for cap in [
        "publisher_confirms",
        "basic.nack",
        "consumer_cancel_notify",
        "authentication_failure_close",
        "per_consumer_qos",
    ] {
        caps.insert(cap, true);
    }
    let mut p = FieldTable::new();
    p.insert("product", "minimq");
    p.insert("version", env!("CARGO_PKG_VERSION"));
    p.insert("platform", format!("Rust / {}", std::env::consts::OS));
    p.insert("information", "AMQP 0-9-1 work-queue broker");
    p.insert("capabilities", caps);
    p
}

async fn next_method(reader: &mut Reader) -> Result<Option<Method>, AmqpError> {
    loop {
        match reader.next().await {
            None | Some(Err(minimq_protocol::CodecError::Io(_))) => return Ok(None),
            Some(Err(minimq_protocol::CodecError::Decode(e))) => {
                return Err(AmqpError::new(e.reply_code(), e))
            }
            Some(Ok(Frame::Heartbeat)) => continue,
            Some(Ok(Frame::Method(0, m))) => return Ok(Some(m)),
            Some(Ok(_)) => {
                return Err(AmqpError::new(
                    ReplyCode::UnexpectedFrame,
                    "expected a connection method on channel 0 during the handshake",
                ))
            }
        }
    }
}

/// Parses a PLAIN (`\0user\0pass`) or AMQPLAIN (a table without its length) response.
fn credentials(mechanism: &str, response: &Bytes) -> Option<(String, String)> {
    match mechanism {
        "PLAIN" => {
            let mut parts = response.split(|b| *b == 0);
            let _authzid = parts.next()?;
            let user = std::str::from_utf8(parts.next()?).ok()?.to_string();
            let pass = std::str::from_utf8(parts.next()?).ok()?.to_string();
            Some((user, pass))
        }
        "AMQPLAIN" => {
            let mut framed = bytes::BytesMut::with_capacity(response.len() + 4);
            framed.extend_from_slice(&(response.len() as u32).to_be_bytes());
            framed.extend_from_slice(response);
            let table = read::table(&mut framed.freeze()).ok()?;
            let s = |k: &str| match table.get(k) {
                Some(FieldValue::LongString(b)) => String::from_utf8(b.to_vec()).ok(),
                _ => None,
            };
            Some((s("LOGIN")?, s("PASSWORD")?))
        }
        _ => None,
    }
}

/// Runs the handshake on `conn`.
pub async fn run(conn: &mut Conn, reader: &mut Reader) -> Result<Outcome, AmqpError> {
    conn.send_method(
        0,
        ConnectionStart {
            version_major: 0,
            version_minor: 9,
            server_properties: server_properties(),
            mechanisms: Bytes::from_static(b"PLAIN AMQPLAIN"),
            locales: Bytes::from_static(b"en_US"),
        }
        .into(),
    );
    conn.flush();
    let Some(m) = next_method(reader).await? else {
        return Ok(Outcome::Closed);
    };
    let Method::ConnectionStartOk(start_ok) = m else {
        return Err(AmqpError::new(
            ReplyCode::CommandInvalid,
            "expected 'connection.start_ok'",
        ));
    };
    if let Some(FieldValue::Table(caps)) = start_ok.client_properties.get("capabilities") {
        let on = |k: &str| caps.get(k).and_then(FieldValue::as_bool).unwrap_or(false);
        conn.cancel_notify = on("consumer_cancel_notify");
        conn.auth_failure_close = on("authentication_failure_close");
    }
    let mechanism = start_ok.mechanism.as_str();
    if mechanism != "PLAIN" && mechanism != "AMQPLAIN" {
        return Err(AmqpError::new(
            ReplyCode::AccessRefused,
            format!("unsupported authentication mechanism '{mechanism}'"),
        ));
    }
    let creds = credentials(mechanism, &start_ok.response);
    let accepted = creds.as_ref().is_some_and(|(u, p)| {
        conn.state
            .config
            .users
            .iter()
            .any(|(cu, cp)| cu == u && cp == p)
    });
    if !accepted {
        tracing::warn!(peer = %conn.peer, user = ?creds.as_ref().map(|c| &c.0), "login refused");
        if conn.auth_failure_close {
            return Err(AmqpError::new(
                ReplyCode::AccessRefused,
                format!(
                    "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
                ),
            ));
        }
        return Ok(Outcome::Closed);
    }
    conn.user = creds.map(|c| c.0).unwrap_or_default();
    let cfg = conn.state.config.clone();
    conn.send_method(
        0,
        ConnectionTune {
            channel_max: cfg.channel_max,
            frame_max: cfg.frame_max,
            heartbeat: cfg.heartbeat,
        }
        .into(),
    );
    conn.flush();
    let Some(m) = next_method(reader).await? else {
        return Ok(Outcome::Closed);
    };
    let Method::ConnectionTuneOk(tune) = m else {
        return Err(AmqpError::new(
            ReplyCode::CommandInvalid,
            "expected 'connection.tune_ok'",
        ));
    };
    let (ours_frame, ours_chan) = (cfg.frame_max, cfg.channel_max);
    if tune.frame_max != 0 && tune.frame_max < minimq_protocol::frame::FRAME_MIN_SIZE {
        return Err(AmqpError::new(
            ReplyCode::NotAllowed,
            format!(
                "frame_max={} < {} min size",
                tune.frame_max,
                minimq_protocol::frame::FRAME_MIN_SIZE
            ),
        ));
    }
    if tune.frame_max > ours_frame {
        return Err(AmqpError::new(
            ReplyCode::NotAllowed,
            format!("frame_max={} > {} max size", tune.frame_max, ours_frame),
        ));
    }
    conn.frame_max = if tune.frame_max == 0 {
        ours_frame
    } else {
        tune.frame_max
    };
    conn.channel_max = if tune.channel_max == 0 {
        ours_chan
    } else {
        tune.channel_max.min(ours_chan)
    };
    conn.heartbeat = tune.heartbeat;
    reader.decoder_mut().set_frame_max(conn.frame_max);
    let Some(m) = next_method(reader).await? else {
        return Ok(Outcome::Closed);
    };
    let Method::ConnectionOpen(open) = m else {
        return Err(AmqpError::new(
            ReplyCode::CommandInvalid,
            "expected 'connection.open'",
        ));
    };
    if open.virtual_host != "/" {
        return Err(AmqpError::new(
            ReplyCode::NotAllowed,
            format!("vhost {} not found", open.virtual_host),
        ));
    }
    conn.send_method(0, ConnectionOpenOk.into());
    conn.flush();
    Ok(Outcome::Open)
}
