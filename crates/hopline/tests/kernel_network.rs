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

/// One lab at a time in this process: a network's names carry the process id.
static LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds the lab for one test (a test that failed holding it does not stop the others).
fn one_lab() -> std::sync::MutexGuard<'static, ()> {
    LAB.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

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

/// The namespaces of the kernel network of process `pid` (prefix `hd<pid>-`).
fn namespaces_of(pid: u32) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    let prefix = format!("hd{pid}-");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(String::from)
        .collect()
}

fn namespaces_of_this_process() -> Vec<String> {
    namespaces_of(std::process::id())
}

/// Starts `hopline drill examples/nat-kernel.drill.toml` with its report in `report`;
/// stdout and stderr piped.
fn nat_kernel_drill(report: &str) -> (std::process::Child, std::path::PathBuf) {
    let scenario = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/nat-kernel.drill.toml");
    let out = temp_file("x", "").with_file_name(report);
    let drill = Command::new(bin())
        .args(["drill", scenario.to_str().expect("utf8"), "--out"])
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("drill");
    (drill, out)
}

/// Waits until `ready` holds, or panics after 20 s.
fn wait_for(what: &str, ready: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < end, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs root, ip and nft; run by .ci/run"]
fn each_fault_kind_is_seen_from_inside_and_everything_is_removed() {
    let _lab = one_lab();
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
    let (drill, _) = nat_kernel_drill("nat-kernel-report");
    let pid = drill.id();
    let o = drill.wait_with_output().expect("drill");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(text.contains("(egress): connect timed out"), "{text}");
    assert!(namespaces_of(pid).is_empty(), "namespaces left behind");
}

/// A kernel drill stopped with SIGTERM removes its namespaces itself.
#[test]
#[ignore = "needs root, ip and nft; run by .ci/run"]
fn a_kernel_drill_stopped_by_sigterm_leaves_nothing() {
    let (drill, out) = nat_kernel_drill("term-report");
    let pid = drill.id();
    // Running: its network built and the gateway logging requests.
    wait_for("the drill did not start", || {
        namespaces_of(pid).len() >= 3
            && std::fs::metadata(out.join("nat-kernel/gateway.log")).is_ok_and(|m| m.len() > 0)
    });
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let o = drill.wait_with_output().expect("exit");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("INTERRUPTED"),
        "a partial report"
    );
    assert!(
        namespaces_of(pid).is_empty(),
        "namespaces left after SIGTERM"
    );
}

/// A drill killed with SIGKILL leaves its namespaces; the next kernel drill removes them.
#[test]
#[ignore = "needs root, ip and nft; run by .ci/run"]
fn leftovers_of_a_killed_drill_are_removed_by_the_next() {
    let (mut drill, _) = nat_kernel_drill("killed-report");
    let pid = drill.id();
    wait_for("the drill built no network", || {
        namespaces_of(pid).len() >= 3
    });
    drill.kill().expect("SIGKILL");
    let _ = drill.wait();
    assert!(
        namespaces_of(pid).len() >= 3,
        "a SIGKILLed drill cannot clean up"
    );
    hopline_drill::network::remove_leftovers();
    assert!(
        namespaces_of(pid).is_empty(),
        "leftovers of a dead drill stay"
    );
}

/// A gateway inside the lab's `in` host, listening on `port` there, with `upstream_extra`
/// on its upstream (the lab's mock, behind the NAT); two requests 7 s apart, the second
/// on the pooled connection the first left: the second's access record.
fn request_after_idling(
    net: &Network,
    mock: SocketAddr,
    port: u16,
    upstream_extra: &str,
) -> serde_json::Value {
    let inside = net.host("in").expect("host").clone();
    let config = temp_file(
        &format!("keepalive-{port}.toml"),
        &format!(
            "[server]\nlisten = \"{}:{port}\"\n[upstreams.m]\nendpoints = [\"{mock}\"]\npool_idle_timeout = \"10s\"\n{upstream_extra}\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"m\"\n",
            inside.ip
        ),
    );
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &inside.ns,
        bin(),
        "serve",
        "--threads",
        "1",
        "-c",
    ])
    .arg(&config);
    let gw = Proc::spawn_command(cmd);
    assert_eq!(get(gw.addr, "/first", "").status, 200);
    // Idle past the NAT's memory of the connection (5 s): the idleness is what is tested.
    let idle_until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < idle_until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get(gw.addr, "/second", "").status, 200);
    gw.wait_json(
        Duration::from_secs(10),
        "the second request's record",
        |l| l["path"] == "/second",
    )
}

/// TCP keepalive keeps a NAT's entry for an idle pooled connection alive: with probes
/// every second after 2 s idle, a connection pooled for 7 s behind a NAT that forgets
/// established connections after 5 s is reused as it is; without keepalive, the NAT has
/// forgotten it, its reuse meets a reset and the request is sent again on a new one.
#[test]
#[ignore = "needs root, ip and nft; run by .ci/run"]
fn keepalive_keeps_an_idle_pooled_connection_through_a_nat_that_forgets() {
    let _lab = one_lab();
    let (net, _mock, addr) = lab();
    let target = Some(match addr {
        SocketAddr::V4(a) => (*a.ip(), a.port()),
        SocketAddr::V6(_) => unreachable!("v4 lab"),
    });
    let u = net
        .apply(FaultKind::ConntrackExpiry { seconds: 5 }, target)
        .expect("apply");
    let with = request_after_idling(
        &net,
        addr,
        8101,
        "tcp_keepalive = { idle = \"2s\", interval = \"1s\", count = 3 }",
    );
    assert_eq!(
        (&with["upstream_reused"], &with["attempts"]),
        (&serde_json::json!(true), &serde_json::json!(1)),
        "kept alive: {with}"
    );
    let without = request_after_idling(&net, addr, 8102, "tcp_keepalive = false");
    assert_eq!(
        (&without["upstream_reused"], &without["attempts"]),
        (&serde_json::json!(false), &serde_json::json!(2)),
        "forgotten by the NAT, then sent again on a new connection: {without}"
    );
    net.undo(u).expect("undo");
}
