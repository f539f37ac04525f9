//! The `traceparent` parser on arbitrary bytes: never panics, and what it accepts renders
//! back (version 00) to the same ids and flags.
#![no_main]

use hopline_core::trace::{traceparent, TraceParent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hopline_core::trace::valid_tracestate(data);
    if let Some(tp) = TraceParent::parse(data) {
        let again = TraceParent::parse(&traceparent(tp.trace_id, tp.parent_id, tp.flags))
            .expect("a rendered traceparent parses");
        assert_eq!(again, tp);
    }
});
