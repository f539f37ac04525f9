//! The request vector table against Debian's nginx and HAProxy, configured like hopline's
//! strict test gateway (same limits, routes and upstream). `#[ignore]`d: it needs both
//! installed (`.ci/run` installs them). It prints every vector where they differ from
//! hopline and checks that docs/strictness.md's comparison table says exactly that.

mod common;
mod vectors;

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Daemon;
use vectors::{observe, table, Observed, Recorder};

/// A third-party proxy, stopped when dropped.
type Peer = Daemon;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn wait_listening(addr: SocketAddr) {
    let end = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < end, "{addr} never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn nginx(dir: &std::path::Path, port: u16, up: SocketAddr) -> Peer {
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/b;\n  proxy_temp_path {d}/p;\n\
         fastcgi_temp_path {d}/f;\n  uwsgi_temp_path {d}/u;\n  scgi_temp_path {d}/s;\n\
         large_client_header_buffers 4 4k;\n  client_max_body_size 4096;\n\
         upstream rec {{ server {up}; keepalive 8; }}\n\
         server {{\n    listen 127.0.0.1:{port};\n\
         proxy_http_version 1.1;\n    proxy_set_header Connection \"\";\n\
         location /ok {{ proxy_pass http://rec; }}\n\
         location = /probe {{ proxy_pass http://rec; }}\n\
         location = /agg {{ proxy_pass http://rec; }}\n\
         location = /getonly {{ limit_except GET {{ deny all; }} proxy_pass http://rec; }}\n\
         location / {{ return 404; }}\n  }}\n}}\n",
        d = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).expect("conf");
    let child = Command::new("nginx")
        .args([
            "-c",
            path.to_str().expect("utf8"),
            "-p",
            dir.to_str().expect("utf8"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx (apt install nginx-light)");
    Daemon(child)
}

fn haproxy(dir: &std::path::Path, port: u16, up: SocketAddr) -> Peer {
    let conf = format!(
        "global\n  nbthread 1\n  tune.bufsize 16384\n\
         defaults\n  mode http\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n\
         frontend fe\n  bind 127.0.0.1:{port}\n\
           acl routed path_beg /ok\n\
           acl routed path /probe /agg /getonly\n\
           http-request deny deny_status 405 if {{ path /getonly }} !METH_GET\n\
           http-request return status 404 unless routed\n\
           default_backend rec\n\
         backend rec\n  server up {up}\n"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf).expect("conf");
    let child = Command::new("haproxy")
        .args(["-f", path.to_str().expect("utf8")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy (apt install haproxy)");
    Daemon(child)
}

/// docs/strictness.md's rows between the compare markers: vector name → (nginx, HAProxy)
/// as written.
fn readme_rows() -> Vec<(String, String, String)> {
    let readme = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/strictness.md"
    ))
    .expect("docs/strictness.md");
    let start = readme
        .find("<!-- compare:begin -->")
        .expect("compare:begin marker");
    let end = readme
        .find("<!-- compare:end -->")
        .expect("compare:end marker");
    readme[start..end]
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| vector") && !l.starts_with("|---"))
        .map(|l| {
            let cells: Vec<String> = l
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect();
            (cells[0].clone(), cells[2].clone(), cells[3].clone())
        })
        .collect()
}

#[test]
#[ignore = "needs nginx and haproxy (installed by .ci/run)"]
fn nginx_and_haproxy_on_the_same_vectors() {
    let rec = Recorder::start();
    let dir = common::temp_file("compare.keep", "")
        .parent()
        .expect("dir")
        .to_path_buf();
    let (np, hp) = (free_port(), free_port());
    let _nginx = nginx(&dir, np, rec.addr);
    let _haproxy = haproxy(&dir, hp, rec.addr);
    let (n_addr, h_addr): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{np}").parse().expect("addr"),
        format!("127.0.0.1:{hp}").parse().expect("addr"),
    );
    wait_listening(n_addr);
    wait_listening(h_addr);
    let mut differ = Vec::new();
    let mut report =
        String::from("| vector | hopline | nginx 1.22 | HAProxy 2.6 |\n|---|---|---|---|\n");
    for v in table() {
        let hopline = Observed {
            statuses: v.statuses.clone(),
            closed: v.closed,
            upstream: v.upstream,
        };
        let n = observe(n_addr, &rec, &v);
        let h = observe(h_addr, &rec, &v);
        if n != hopline || h != hopline {
            let same = |o: &Observed| {
                if *o == hopline {
                    "same".to_string()
                } else {
                    o.to_string()
                }
            };
            let row = (v.name.to_string(), same(&n), same(&h));
            report.push_str(&format!(
                "| {} | {hopline} | {} | {} |\n",
                row.0, row.1, row.2
            ));
            differ.push(row);
        }
    }
    println!("{report}");
    std::fs::write(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../target/strict-compare.md"
        ),
        &report,
    )
    .ok();
    assert_eq!(
        differ,
        readme_rows(),
        "docs/strictness.md's comparison table is out of date; the observed one is:\n{report}"
    );
}
