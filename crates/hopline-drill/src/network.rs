//! A real network for a drill (`network = "kernel"`): every host a network namespace,
//! joined by a veth pair to one router namespace, which is the NAT gateway in front of
//! the `outside` hosts (nftables masquerade with a source port range, conntrack on). The
//! drill itself (load generator, readiness checks) reaches the hosts through one more veth
//! pair from its own namespace. Addresses come from one 198.18.N.0/24 per run (the
//! benchmarking range; concurrent runs take different N) and exist only inside these
//! namespaces and on that one link.
//!
//! Faults are netfilter rules in the router (added at `at`, removed at `until`) or its
//! conntrack settings. Everything carries a per-run prefix (`hd<pid>`) and is removed when
//! the [`Network`] is dropped; leftovers of a run that was killed are removed by the next.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Mutex;

use crate::scenario::{FaultKind, Host};

/// Why the network could not be built or changed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// Not root, or `ip` / `nft` missing.
    #[error("a kernel-network drill needs {0}")]
    Unavailable(String),
    /// A command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed.
        stderr: String,
    },
}

/// One host's place in the network.
#[derive(Debug, Clone)]
pub struct HostNet {
    /// The scenario's name for it.
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Behind the NAT.
    pub outside: bool,
    /// The router's end of its link.
    router_if: String,
}

/// A built network; torn down when dropped.
#[derive(Debug)]
pub struct Network {
    prefix: String,
    /// The third octet of this run's 198.18.N.0/24 (concurrent runs take different ones).
    subnet: u8,
    router: String,
    root_if: String,
    hosts: Vec<HostNet>,
    /// The NAT rule's handle and the port range in force.
    nat: Mutex<Vec<u64>>,
    nat_ports: (u16, u16),
}

/// Undoes one applied fault.
#[derive(Debug)]
pub enum Undo {
    /// Delete these rules from the fault chain.
    Rules(Vec<u64>),
    /// Put the NAT's port range back.
    SnatPorts,
    /// Put the conntrack established timeout back and delete the reset rule.
    Conntrack(String, u64),
    /// Nothing to undo.
    Nothing,
}

fn run(args: &[&str]) -> Result<String, NetworkError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| NetworkError::Command {
            command: args.join(" "),
            stderr: e.to_string(),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetworkError::Command {
            command: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Root, with `ip` and `nft`: what a kernel-network drill needs.
pub fn available() -> Result<(), NetworkError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0");
    if !root {
        return Err(NetworkError::Unavailable("root".into()));
    }
    for tool in ["ip", "nft"] {
        let found = Command::new(tool)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(NetworkError::Unavailable(format!(
                "`{tool}` (Debian: iproute2 / nftables)"
            )));
        }
    }
    Ok(())
}

/// Removes namespaces and links of earlier runs whose drill is no longer running.
pub fn remove_leftovers() {
    let dead = |name: &str| -> bool {
        let digits: String = name
            .strip_prefix("hd")
            .unwrap_or("")
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        !digits.is_empty()
            && digits.parse::<u32>().is_ok_and(|pid| {
                pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            })
    };
    for line in run(&["ip", "netns", "list"]).unwrap_or_default().lines() {
        let ns = line.split_whitespace().next().unwrap_or("");
        if dead(ns) {
            let _ = run(&["ip", "netns", "delete", ns]);
        }
    }
    for line in run(&["ip", "-o", "link", "show"])
        .unwrap_or_default()
        .lines()
    {
        let name = line
            .split(':')
            .nth(1)
            .map(|n| n.trim().split('@').next().unwrap_or(""))
            .unwrap_or("");
        if dead(name) {
            let _ = run(&["ip", "link", "delete", name]);
        }
    }
}

impl Network {
    /// Builds the namespaces, links, routes and the NAT for `hosts`.
    pub fn build(hosts: &[Host], nat_ports: (u16, u16)) -> Result<Network, NetworkError> {
        available()?;
        if hosts.len() > 62 {
            return Err(NetworkError::Unavailable("at most 62 hosts".into()));
        }
        remove_leftovers();
        let prefix = format!("hd{}", std::process::id());
        let mut net = Network {
            subnet: 0,
            router: format!("{prefix}-router"),
            root_if: format!("{prefix}root"),
            prefix,
            hosts: Vec::new(),
            nat: Mutex::new(Vec::new()),
            nat_ports,
        };
        // On any failure below, dropping `net` removes what was made.
        net.make_router()?;
        for (i, h) in hosts.iter().enumerate() {
            let host = net.make_host(i + 1, h)?;
            net.hosts.push(host);
        }
        net.make_nat()?;
        Ok(net)
    }

    fn make_router(&mut self) -> Result<(), NetworkError> {
        let r = self.router.clone();
        run(&["ip", "netns", "add", &r])?;
        run(&["ip", "-n", &r, "link", "set", "lo", "up"])?;
        self.sysctl("net.ipv4.ip_forward=1")?;
        // The drill's own link: 198.18.N.2 here, 198.18.N.1 in the router, and a route to
        // this run's 198.18.N.0/24 over it. N: the first free from a start of this run's.
        let peer = format!("{}rr", self.prefix);
        run(&[
            "ip",
            "link",
            "add",
            &self.root_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ])?;
        run(&["ip", "link", "set", &peer, "netns", &r])?;
        run(&["ip", "link", "set", &self.root_if, "up"])?;
        run(&["ip", "-n", &r, "link", "set", &peer, "up"])?;
        let start = (std::process::id() % 200) as u8;
        let mut last = None;
        for k in 0..250u8 {
            let n = 1 + (start.wrapping_add(k) % 250);
            let taken = run(&["ip", "route", "show", &format!("198.18.{n}.0/24")])
                .is_ok_and(|o| !o.trim().is_empty());
            if taken {
                continue;
            }
            let mine = format!("198.18.{n}.2/30");
            if let Err(e) = run(&["ip", "addr", "add", &mine, "dev", &self.root_if]) {
                last = Some(e);
                continue;
            }
            let route = format!("198.18.{n}.0/24");
            let via = format!("198.18.{n}.1");
            match run(&[
                "ip",
                "route",
                "add",
                &route,
                "via",
                &via,
                "dev",
                &self.root_if,
            ]) {
                Ok(_) => {
                    run(&[
                        "ip",
                        "-n",
                        &r,
                        "addr",
                        "add",
                        &format!("{via}/30"),
                        "dev",
                        &peer,
                    ])?;
                    self.subnet = n;
                    return Ok(());
                }
                Err(e) => {
                    let _ = run(&["ip", "addr", "del", &mine, "dev", &self.root_if]);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(NetworkError::Unavailable("a free 198.18.N.0/24".into())))
    }

    fn make_host(&self, i: usize, h: &Host) -> Result<HostNet, NetworkError> {
        let ns = format!("{}-{}", self.prefix, h.name);
        let (host_if, router_if) = (
            format!("{}h{i}", self.prefix),
            format!("{}r{i}", self.prefix),
        );
        // Link i is 198.18.N.4i/30: the router at .4i+1, the host at .4i+2.
        let b = (i * 4) as u8;
        let n = self.subnet;
        let (router_ip, ip) = (
            Ipv4Addr::new(198, 18, n, b + 1),
            Ipv4Addr::new(198, 18, n, b + 2),
        );
        run(&["ip", "netns", "add", &ns])?;
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        run(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &router_if,
        ])?;
        run(&["ip", "link", "set", &host_if, "netns", &ns])?;
        run(&["ip", "link", "set", &router_if, "netns", &self.router])?;
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip}/30"),
            "dev",
            &host_if,
        ])?;
        run(&["ip", "-n", &ns, "link", "set", &host_if, "up"])?;
        let r = self.router.as_str();
        run(&[
            "ip",
            "-n",
            r,
            "addr",
            "add",
            &format!("{router_ip}/30"),
            "dev",
            &router_if,
        ])?;
        run(&["ip", "-n", r, "link", "set", &router_if, "up"])?;
        run(&[
            "ip",
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &router_ip.to_string(),
        ])?;
        Ok(HostNet {
            name: h.name.clone(),
            ns,
            ip,
            outside: h.outside,
            router_if,
        })
    }

    /// The NAT table: connections to outside hosts are masqueraded; faults go in their
    /// own chain, ahead of forwarding.
    fn make_nat(&self) -> Result<(), NetworkError> {
        self.in_router(&["nft", "add", "table", "ip", "hopline"])?;
        for (chain, spec) in [
            (
                "nat",
                "{ type nat hook postrouting priority srcnat; policy accept; }",
            ),
            (
                "faults",
                "{ type filter hook forward priority filter; policy accept; }",
            ),
        ] {
            self.in_router(&["nft", "add", "chain", "ip", "hopline", chain, spec])?;
        }
        self.set_nat_ports(self.nat_ports)
    }

    /// Replaces the masquerade rules with ones using `ports`.
    fn set_nat_ports(&self, (from, to): (u16, u16)) -> Result<(), NetworkError> {
        let mut handles = self.nat.lock().unwrap_or_else(|p| p.into_inner());
        for h in handles.drain(..) {
            self.delete_rule("nat", h)?;
        }
        for host in self.hosts.iter().filter(|h| h.outside) {
            for proto in ["tcp", "udp"] {
                let rule = format!(
                    "oifname \"{}\" meta l4proto {proto} masquerade to :{from}-{to}",
                    host.router_if
                );
                handles.push(self.add_rule("nat", &rule)?);
            }
        }
        Ok(())
    }

    /// Runs `args` inside the router's namespace.
    fn in_router(&self, args: &[&str]) -> Result<String, NetworkError> {
        let mut line = vec!["ip", "netns", "exec", self.router.as_str()];
        line.extend_from_slice(args);
        run(&line)
    }

    /// Sets a sysctl in the router's namespace (`key=value`).
    fn sysctl(&self, setting: &str) -> Result<(), NetworkError> {
        self.in_router(&["sysctl", "-qw", setting]).map(drop)
    }

    /// Deletes rule `handle` from `chain`.
    fn delete_rule(&self, chain: &str, handle: u64) -> Result<(), NetworkError> {
        let h = handle.to_string();
        self.in_router(&[
            "nft", "delete", "rule", "ip", "hopline", chain, "handle", &h,
        ])
        .map(drop)
    }

    /// Adds `rule` to `chain`; its handle.
    fn add_rule(&self, chain: &str, rule: &str) -> Result<u64, NetworkError> {
        let out = self.in_router(&[
            "nft", "--echo", "--handle", "add", "rule", "ip", "hopline", chain, rule,
        ])?;
        out.split("# handle ")
            .nth(1)
            .and_then(|h| h.split_whitespace().next())
            .and_then(|h| h.parse().ok())
            .ok_or_else(|| NetworkError::Command {
                command: format!("nft add rule ip hopline {chain} {rule}"),
                stderr: format!("no handle in {out:?}"),
            })
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> Option<&HostNet> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// The hosts.
    pub fn hosts(&self) -> &[HostNet] {
        &self.hosts
    }

    /// Applies a kernel fault aimed at `target` (the service's host address and port).
    pub fn apply(
        &self,
        kind: FaultKind,
        target: Option<(Ipv4Addr, u16)>,
    ) -> Result<Undo, NetworkError> {
        let both = |what: &str, ip: Ipv4Addr| -> Result<Undo, NetworkError> {
            let a = self.add_rule("faults", &format!("ip daddr {ip} {what}"))?;
            let b = self.add_rule("faults", &format!("ip saddr {ip} {what}"))?;
            Ok(Undo::Rules(vec![a, b]))
        };
        match (kind, target) {
            (FaultKind::SynRateLimit { rate }, Some((ip, port))) => {
                let rule = if rate == 0 {
                    format!("ip daddr {ip} tcp dport {port} tcp flags & (syn|ack) == syn drop")
                } else {
                    format!("ip daddr {ip} tcp dport {port} tcp flags & (syn|ack) == syn limit rate over {rate}/second drop")
                };
                Ok(Undo::Rules(vec![self.add_rule("faults", &rule)?]))
            }
            // `numgen random mod 100` is 0..=99: 100 % is every packet.
            (FaultKind::Loss { percent }, Some((ip, _))) if percent >= 100 => both("drop", ip),
            (FaultKind::Loss { percent }, Some((ip, _))) => {
                both(&format!("numgen random mod 100 < {percent} drop"), ip)
            }
            (FaultKind::Blackhole, Some((ip, _))) => both("drop", ip),
            (FaultKind::SnatPorts { from, to }, _) => {
                self.set_nat_ports((from, to))?;
                // Connections already holding ports outside the new range keep them:
                // forget them so the shrunk range is what new and old traffic meet.
                let _ = self.in_router(&["conntrack", "-F"]);
                Ok(Undo::SnatPorts)
            }
            (FaultKind::ConntrackExpiry { seconds }, _) => {
                let key = "net.netfilter.nf_conntrack_tcp_timeout_established";
                let old = self.in_router(&["sysctl", "-n", key])?;
                self.sysctl(&format!("{key}={seconds}"))?;
                // The setting applies to an entry from its next packet on: a connection
                // that has traffic during the fault and then idles longer is forgotten.
                // Late packets of a forgotten connection are not taken up as new ones.
                self.sysctl("net.netfilter.nf_conntrack_tcp_loose=0")?;
                let rule = self.add_rule(
                    "faults",
                    "ct state invalid meta l4proto tcp reject with tcp reset",
                )?;
                Ok(Undo::Conntrack(old.trim().to_string(), rule))
            }
            _ => Ok(Undo::Nothing),
        }
    }

    /// Removes an applied fault.
    pub fn undo(&self, u: Undo) -> Result<(), NetworkError> {
        match u {
            Undo::Rules(handles) => {
                for h in handles {
                    self.delete_rule("faults", h)?;
                }
            }
            Undo::SnatPorts => self.set_nat_ports(self.nat_ports)?,
            Undo::Conntrack(old, rule) => {
                self.sysctl(&format!(
                    "net.netfilter.nf_conntrack_tcp_timeout_established={old}"
                ))?;
                self.sysctl("net.netfilter.nf_conntrack_tcp_loose=1")?;
                self.delete_rule("faults", rule)?;
            }
            Undo::Nothing => {}
        }
        Ok(())
    }

    /// Removes every namespace and link of this run.
    fn teardown(&self) {
        for h in &self.hosts {
            let _ = run(&["ip", "netns", "delete", &h.ns]);
        }
        let _ = run(&["ip", "netns", "delete", &self.router]);
        // Deleting one end of a veth pair deletes both (and the route over it).
        let _ = run(&["ip", "link", "delete", &self.root_if]);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.teardown();
    }
}
