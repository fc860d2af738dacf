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
    // Only what is implemented.
    for cap in [
        "connection.blocked",
        "publisher_confirms",
        "exchange_exchange_bindings",
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
                return Err(super::decode_error(e))
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

/// Until `tune-ok` is in, RabbitMQ answers only a refused login (to a client with the
/// `authentication_failure_close` capability); any other error just closes the socket.
fn silent(conn: &Conn, e: AmqpError) -> Outcome {
    tracing::info!(peer = %conn.peer, code = e.code.code(), text = %e.text, "handshake failed, closing");
    Outcome::Closed
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
    let m = match next_method(reader).await {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(Outcome::Closed),
        Err(e) => return Ok(silent(conn, e)),
    };
    let Method::ConnectionStartOk(start_ok) = m else {
        let e = AmqpError::new(
            ReplyCode::ChannelError,
            "unexpected method in connection state starting",
        );
        return Ok(silent(conn, e));
    };
    if let Some(FieldValue::Table(caps)) = start_ok.client_properties.get("capabilities") {
        let on = |k: &str| caps.get(k).and_then(FieldValue::as_bool).unwrap_or(false);
        conn.cancel_notify = on("consumer_cancel_notify");
        conn.auth_failure_close = on("authentication_failure_close");
        conn.blocked_notify = on("connection.blocked");
    }
    let mechanism = start_ok.mechanism.as_str();
    conn.auth_mechanism = mechanism.to_string();
    conn.client_properties = start_ok.client_properties.clone();
    if mechanism != "PLAIN" && mechanism != "AMQPLAIN" {
        let e = AmqpError::new(
            ReplyCode::CommandInvalid,
            format!("unknown authentication mechanism '{mechanism}'"),
        );
        return Ok(silent(conn, e));
    }
    let creds = credentials(mechanism, &start_ok.response);
    // The password is checked in constant time (`auth.rs`).
    let mut accepted = creds
        .as_ref()
        .is_some_and(|(u, p)| conn.state.users.login(u, p).is_some());
    // RabbitMQ's `loopback_users`: guest only from this machine, unless allowed.
    if accepted
        && creds.as_ref().is_some_and(|(u, _)| u == "guest")
        && !conn.peer.ip().to_canonical().is_loopback()
        && !conn.state.config.allow_guest_remote
    {
        tracing::warn!(peer = %conn.peer, "user 'guest' can only connect via localhost (--allow-guest-remote lifts this)");
        accepted = false;
    }
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
    let m = match next_method(reader).await {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(Outcome::Closed),
        Err(e) => return Ok(silent(conn, e)),
    };
    let Method::ConnectionTuneOk(tune) = m else {
        let e = AmqpError::new(
            ReplyCode::ChannelError,
            "unexpected method in connection state tuning",
        );
        return Ok(silent(conn, e));
    };
    // RabbitMQ's negotiation: at least the minimum, and not above (nor 0 = "no limit"
    // against) a server limit.
    let negotiate = |field: &str, client: u32, min: u32, ours: u32| -> Result<u32, AmqpError> {
        let refuse = |detail: String| {
            AmqpError::new(
                ReplyCode::NotAllowed,
                format!("negotiated {field} = {client}{detail}"),
            )
        };
        if client != 0 && client < min {
            return Err(refuse(format!(
                " is lower than the minimum allowed value ({min})"
            )));
        }
        if ours != 0 && (client == 0 || client > ours) {
            let no_limit = if client == 0 { " (no limit)" } else { "" };
            return Err(refuse(format!(
                "{no_limit} is higher than the maximum allowed value ({ours})"
            )));
        }
        Ok(client)
    };
    let negotiated = negotiate(
        "frame_max",
        tune.frame_max,
        minimq_protocol::frame::FRAME_MIN_SIZE,
        cfg.frame_max,
    )
    .and_then(|f| {
        let c = negotiate(
            "channel_max",
            u32::from(tune.channel_max),
            0,
            u32::from(cfg.channel_max),
        )?;
        Ok((f, c as u16))
    });
    let (frame_max, channel_max) = match negotiated {
        Ok(v) => v,
        Err(e) => return Ok(silent(conn, e)),
    };
    conn.frame_max = frame_max;
    conn.channel_max = if channel_max == 0 {
        u16::MAX
    } else {
        channel_max
    };
    conn.heartbeat = tune.heartbeat;
    // Like RabbitMQ, accept a frame whose payload alone is frame_max (8 octets over),
    // which sloppy clients send.
    let limit = if frame_max == 0 {
        0
    } else {
        frame_max.saturating_add(8)
    };
    reader.decoder_mut().set_frame_max(limit);
    let Some(m) = next_method(reader).await? else {
        return Ok(Outcome::Closed);
    };
    let Method::ConnectionOpen(open) = m else {
        return Err(AmqpError::new(
            ReplyCode::ChannelError,
            "unexpected method in connection state opening",
        )
        .on(m.class_id(), m.method_id()));
    };
    // RabbitMQ 3.10's order (`rabbit_reader`, `connection.open`): the vhost's connection
    // limit, then whether the vhost exists, then the user's permission on it.
    let name = open.virtual_host.as_str();
    let vhost = conn.state.vhosts.get(name);
    if let Some(max) = vhost.as_ref().and_then(|v| v.limits().max_connections) {
        let opened = conn
            .state
            .connections
            .iter()
            .filter(|c| c.vhost == name)
            .count();
        if opened as u64 >= max {
            return Err(AmqpError::new(
                ReplyCode::NotAllowed,
                format!(
                    "access to vhost '{name}' refused for user '{}': connection limit ({max}) is reached",
                    conn.user
                ),
            )
            .on(10, 40));
        }
    }
    let Some(vhost) = vhost else {
        return Err(
            AmqpError::new(ReplyCode::NotAllowed, format!("vhost {name} not found")).on(10, 40),
        );
    };
    conn.perm = conn.state.users.permission(name, &conn.user);
    if conn.perm.is_none() {
        return Err(AmqpError::new(
            ReplyCode::NotAllowed,
            format!("access to vhost '{name}' refused for user '{}'", conn.user),
        )
        .on(10, 40));
    }
    conn.vhost = vhost;
    // Listed before the client hears open-ok.
    conn.register();
    conn.send_method(0, ConnectionOpenOk.into());
    conn.flush();
    Ok(Outcome::Open)
}
