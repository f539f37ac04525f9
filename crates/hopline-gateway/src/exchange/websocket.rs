//! WebSocket over HTTP/1.1 (RFC 6455 §4) on routes with `websocket = true`: the upgrade
//! request is forwarded like any request, and only once the upstream has answered `101
//! Switching Protocols` — never before, so no byte of the client's can reach the
//! upstream unparsed on a refused upgrade — are bytes tunnelled both ways, until either
//! side closes (its close passed on to the other), the tunnel is silent for
//! `websocket_idle_timeout`, or a side does not take what is written to it within
//! `server.write_timeout` (a client that stops reading while the upstream sends would
//! otherwise hold the tunnel, its slot and its buffers for as long as it likes).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use crate::front::Request;
use crate::observe::access_log::TunnelEnd;
use crate::stream::ClientStream;
use crate::upstream::ClientConn;

/// An HTTP/1.1 WebSocket opening handshake: `GET` with `Upgrade: websocket` and
/// `Connection: upgrade`.
pub(crate) fn is_upgrade(req: &Request) -> bool {
    &req.method[..] == b"GET"
        && req.headers.has_token("upgrade", "websocket")
        && req.headers.has_token("connection", "upgrade")
}

/// Tunnels between the client (with bytes it already sent in `client_buf`) and the
/// upgraded upstream connection (with bytes after its 101 head).
pub(crate) async fn tunnel(
    client: &mut ClientStream,
    client_buf: &mut bytes::BytesMut,
    upstream: ClientConn,
    idle: Duration,
    write: Duration,
) -> TunnelEnd {
    let (mut up, up_buf) = upstream.into_parts();
    let mut end = TunnelEnd::default();
    // Bytes already read on either side go across first.
    if !client_buf.is_empty() {
        if let Err(why) = put(&mut up, client_buf, write, "upstream").await {
            end.closed_by = why;
            return end;
        }
        end.bytes_up += client_buf.len() as u64;
        client_buf.clear();
    }
    if !up_buf.is_empty() {
        if let Err(why) = put(client, &up_buf, write, "client").await {
            end.closed_by = why;
            return end;
        }
        end.bytes_down += up_buf.len() as u64;
    }
    let (mut cr, mut cw) = client.split();
    let (mut ur, mut uw) = up.split();
    let (mut a, mut b) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut client_open, mut upstream_open) = (true, true);
    while client_open || upstream_open {
        let step = timeout(idle, async {
            tokio::select! {
                r = cr.read(&mut a), if client_open => (true, r),
                r = ur.read(&mut b), if upstream_open => (false, r),
            }
        })
        .await;
        let first = |end: &mut TunnelEnd, who| {
            if end.closed_by.is_empty() {
                end.closed_by = who;
            }
        };
        match step {
            Err(_) => {
                first(&mut end, "idle");
                break;
            }
            // The client is done sending: pass its close on, keep reading the upstream.
            Ok((true, Ok(0) | Err(_))) => {
                client_open = false;
                first(&mut end, "client");
                let _ = timeout(write, uw.shutdown()).await;
            }
            Ok((true, Ok(n))) => {
                if let Err(why) = put(&mut uw, &a[..n], write, "upstream").await {
                    first(&mut end, why);
                    break;
                }
                end.bytes_up += n as u64;
            }
            Ok((false, Ok(0) | Err(_))) => {
                upstream_open = false;
                first(&mut end, "upstream");
                let _ = timeout(write, cw.shutdown()).await;
            }
            Ok((false, Ok(n))) => {
                if let Err(why) = put(&mut cw, &b[..n], write, "client").await {
                    first(&mut end, why);
                    break;
                }
                end.bytes_down += n as u64;
            }
        }
    }
    end
}

/// Writes `bytes` to one side within `limit`: `Err(side)` when it failed (the side closed
/// or reset), `Err("write_timeout")` when the side did not take them in time.
async fn put<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
    limit: Duration,
    side: &'static str,
) -> Result<(), &'static str> {
    match timeout(limit, w.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(side),
        Err(_) => Err("write_timeout"),
    }
}
