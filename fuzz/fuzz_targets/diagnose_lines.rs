//! `diagnose`'s line reader on arbitrary bytes (access-log JSON, nginx lines, invalid
//! UTF-8, hostile numbers): never panics, every line is either counted or skipped (an
//! invalid line never takes the next one with it), and both reports render.
#![no_main]

use hopline_diagnose::{diagnose_reader, Options};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let r = diagnose_reader(data, &Options::default()).expect("reading memory cannot fail");
    let pieces = data.split(|&b| b == b'\n').count() - usize::from(data.ends_with(b"\n"));
    let pieces = if data.is_empty() { 0 } else { pieces };
    assert_eq!((r.lines + r.skipped) as usize, pieces);
    let _ = r.text();
    let _ = r.to_json();
});
