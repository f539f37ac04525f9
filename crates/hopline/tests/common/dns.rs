//! A tiny authoritative DNS server on a loopback UDP port, for tests of endpoint
//! discovery: it answers A queries from a table the test changes while it runs (names
//! not in the table get NXDOMAIN; AAAA and other types get an empty answer).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Records: name (lowercase, no trailing dot) → (addresses, TTL seconds).
type Table = HashMap<String, (Vec<Ipv4Addr>, u32)>;

/// The running server; stops when dropped.
pub(crate) struct Dns {
    pub addr: SocketAddr,
    table: Arc<Mutex<Table>>,
    stop: Arc<AtomicBool>,
}

impl Dns {
    pub(crate) fn start() -> Dns {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind dns");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let addr = socket.local_addr().expect("addr");
        let table: Arc<Mutex<Table>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (table.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(answer) = answer(&buf[..n], &t.lock().expect("lock")) {
                    let _ = socket.send_to(&answer, from);
                }
            }
        });
        Dns { addr, table, stop }
    }

    /// Sets `name`'s A records (an empty list removes the name: NXDOMAIN).
    pub(crate) fn set(&self, name: &str, addrs: &[Ipv4Addr], ttl: u32) {
        let mut t = self.table.lock().expect("lock");
        if addrs.is_empty() {
            t.remove(name);
        } else {
            t.insert(name.to_string(), (addrs.to_vec(), ttl));
        }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The response to one query, or `None` for a packet that is not one.
fn answer(q: &[u8], table: &Table) -> Option<Vec<u8>> {
    if q.len() < 12 || q[2] & 0x80 != 0 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    // The question: labels, then type and class.
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*q.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question = &q[12..i + 4];
    let name = labels.join(".");
    let found = table.get(&name);
    let records: &[Ipv4Addr] = match (found, qtype) {
        (Some((addrs, _)), 1) => addrs,
        _ => &[],
    };
    let rcode = if found.is_some() { 0 } else { 3 };
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&q[0..2]);
    // QR, AA, RD as asked; RA; rcode.
    out.push(0x84 | (q[2] & 0x01));
    out.push(0x80 | rcode);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(question);
    let ttl = found.map_or(0, |(_, ttl)| *ttl);
    for a in records {
        out.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1]);
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&a.octets());
    }
    Some(out)
}
