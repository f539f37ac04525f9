//! The kernel-network drill (`network = "kernel"`): each fault kind observed from inside
//! a real NAT built of network namespaces, and cleanup after success, SIGTERM and
//! SIGKILL. Root only, with `ip` and `nft`: `#[ignore]`d, run by `.ci/run`.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use hopline_drill::network::{Network, Undo};
use hopline_drill::scenario::{FaultKind, Host};

/// A network with one inside host and one outside host running `hopline mock`.
fn lab() -> (Network, Proc, SocketAddr) {
    let hosts = [
        Host {
            name: "in".into(),
            outside: false,
        },
        Host {
            name: "out".into(),
            outside: true,
        },
    ];
    let net = Network::build(&hosts, (40000, 40999)).expect("network (root, ip, nft)");
    let out = net.host("out").expect("host").clone();
    let addr = SocketAddr::from((out.ip, 8080));
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &out.ns,
        bin(),
        "mock",
        "--quiet",
        "--listen",
    ])
    .arg(addr.to_string());
    let mock = Proc::spawn_command(cmd);
    (net, mock, addr)
}

fn try_connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    TcpStream::connect_timeout(&addr, Duration::from_millis(700))
}

/// One request on `s`: the status line's code.
fn ask(s: &mut TcpStream) -> std::io::Result<u16> {
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")?;
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf)?;
    if n == 0 {
        return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "closed"));
    }
    Ok(String::from_utf8_lossy(&buf[9..12]).parse().unwrap_or(0))
}

fn namespaces_of_this_process() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    let prefix = format!("hd{}-", std::process::id());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(String::from)
        .collect()
}

#[test]
#[ignore = "needs root, ip and nft; run by .ci/run"]
fn each_fault_kind_is_seen_from_inside_and_everything_is_removed() {
    let (net, _mock, addr) = lab();
    let target = Some(match addr {
        SocketAddr::V4(a) => (*a.ip(), a.port()),
        SocketAddr::V6(_) => unreachable!("v4 lab"),
    });
    // Through the NAT, as the drill's clients go.
    let mut s = try_connect(addr).expect("connect through the NAT");
    assert_eq!(ask(&mut s).expect("answer"), 200);

    // syn_rate_limit 0: every new connection's SYN is dropped — a connect timeout.
    let u = net
        .apply(FaultKind::SynRateLimit { rate: 0 }, target)
        .expect("apply");
    let e = try_connect(addr).expect_err("SYN dropped");
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
    // An established connection is untouched.
    assert_eq!(ask(&mut s).expect("established"), 200);
    net.undo(u).expect("undo");
    assert!(try_connect(addr).is_ok());

    // loss 100 %: every packet to and from it is lost.
    let u = net
        .apply(FaultKind::Loss { percent: 100 }, target)
        .expect("apply");
    assert_eq!(
        try_connect(addr).expect_err("lost").kind(),
        ErrorKind::TimedOut
    );
    net.undo(u).expect("undo");

    // blackhole: nothing passes, either way.
    let u = net.apply(FaultKind::Blackhole, target).expect("apply");
    assert_eq!(
        try_connect(addr).expect_err("dropped").kind(),
        ErrorKind::TimedOut
    );
    net.undo(u).expect("undo");

    // snat_ports with one port: the second concurrent connection to the same service
    // finds no free mapping.
    let u = net
        .apply(
            FaultKind::SnatPorts {
                from: 40500,
                to: 40500,
            },
            target,
        )
        .expect("apply");
    let mut first = try_connect(addr).expect("the one port");
    assert_eq!(ask(&mut first).expect("answer"), 200);
    let second = try_connect(addr);
    assert!(
        second.is_err(),
        "a second connection got a port: {second:?}"
    );
    drop(first);
    net.undo(u).expect("undo");

    // conntrack_expiry: a connection that idles longer than the NAT remembers is
    // forgotten; its next packet meets a reset. (The short timeout applies to an entry
    // from its next packet on: the connection is used once during the fault.)
    let u = net
        .apply(FaultKind::ConntrackExpiry { seconds: 1 }, target)
        .expect("apply");
    let mut idle = try_connect(addr).expect("connect");
    assert_eq!(ask(&mut idle).expect("answer"), 200);
    // Idle past the NAT's memory (the idleness is what is tested, not a race).
    let idle_until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < idle_until {
        std::thread::sleep(Duration::from_millis(100));
    }
    let late = ask(&mut idle);
    assert!(
        late.is_err(),
        "a forgotten connection still answered: {late:?}"
    );
    net.undo(u).expect("undo");
    // `stop` is not a network fault: nothing to do at the NAT.
    assert!(matches!(
        net.apply(FaultKind::Stop, target),
        Ok(Undo::Nothing)
    ));

    // Dropping the network removes every namespace and link of this run.
    assert!(!namespaces_of_this_process().is_empty());
    drop(net);
    assert_eq!(namespaces_of_this_process(), Vec::<String>::new());
}

/// The kernel drill example: the connect phase shows, and nothing is left behind.
#[test]
#[ignore = "needs root, ip and nft; run by .ci/run"]
fn the_kernel_nat_drill_shows_the_connect_phase() {
    let scenario = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/nat-kernel.drill.toml");
    let out = temp_file("x", "").with_file_name("nat-kernel-report");
    let drill = Command::new(bin())
        .args(["drill", scenario.to_str().expect("utf8"), "--out"])
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("drill");
    let prefix = format!("hd{}-", drill.id());
    let o = drill.wait_with_output().expect("drill");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(text.contains("(egress): connect timed out"), "{text}");
    let left = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    assert!(
        !String::from_utf8_lossy(&left.stdout).contains(&prefix),
        "namespaces left behind"
    );
}

/// A kernel drill stopped with SIGTERM removes its namespaces itself.
#[test]
#[ignore = "needs root, ip and nft; run by .ci/run"]
fn a_kernel_drill_stopped_by_sigterm_leaves_nothing() {
    let scenario = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/nat-kernel.drill.toml");
    let out = temp_file("x", "").with_file_name("term-report");
    let drill = Command::new(bin())
        .args(["drill", scenario.to_str().expect("utf8"), "--out"])
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("drill");
    let prefix = format!("hd{}-", drill.id());
    let listed = || {
        let o = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip");
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .count()
    };
    // Running: its network built and the gateway logging requests.
    let end = Instant::now() + Duration::from_secs(20);
    while listed() < 3
        || !std::fs::metadata(out.join("nat-kernel/gateway.log")).is_ok_and(|m| m.len() > 0)
    {
        assert!(Instant::now() < end, "the drill did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &drill.id().to_string()])
        .status();
    let o = drill.wait_with_output().expect("exit");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("INTERRUPTED"),
        "a partial report"
    );
    assert_eq!(listed(), 0, "namespaces left after SIGTERM");
}

/// A drill killed with SIGKILL leaves its namespaces; the next kernel drill removes them.
#[test]
#[ignore = "needs root, ip and nft; run by .ci/run"]
fn leftovers_of_a_killed_drill_are_removed_by_the_next() {
    let scenario = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/nat-kernel.drill.toml");
    let out = temp_file("x", "").with_file_name("killed-report");
    let mut drill = Command::new(bin())
        .args(["drill", scenario.to_str().expect("utf8"), "--out"])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("drill");
    let prefix = format!("hd{}-", drill.id());
    let listed = || {
        let o = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip");
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .count()
    };
    let end = Instant::now() + Duration::from_secs(20);
    while listed() < 3 {
        assert!(Instant::now() < end, "the drill built no network");
        std::thread::sleep(Duration::from_millis(50));
    }
    drill.kill().expect("SIGKILL");
    let _ = drill.wait();
    assert!(listed() >= 3, "a SIGKILLed drill cannot clean up");
    hopline_drill::network::remove_leftovers();
    assert_eq!(listed(), 0, "leftovers of a dead drill stay");
}

/// `hopline drill --network kernel`: the embedded incident behind a real NAT. The legacy
/// gateway reproduces the storm; hopline answers degraded 200s, and its top cause names
/// the coupon upstream, the egress zone and the connect phase.
#[test]
#[ignore = "needs root, ip and nft; run by .ci/run"]
fn the_embedded_incident_runs_behind_a_real_nat() {
    let out = temp_file("x", "").with_file_name("incident-kernel-report");
    let o = Command::new(bin())
        .args(["drill", "--network", "kernel", "--out"])
        .arg(&out)
        .output()
        .expect("drill");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(
        text.contains("(egress): connect timed out"),
        "hopline's cause names the connect phase: {text}"
    );
}
