//! The legacy gateway refuses to start without its upstreams, with a usage line. (Having an
//! integration test here also makes `cargo test --workspace` build the binary, which the
//! incident tests and the drill run.)

#[test]
fn missing_arguments_print_usage_and_exit_2() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_legacy-gateway"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: legacy-gateway --listen ADDR"));
}
