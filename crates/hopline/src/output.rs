//! A command's output on stdout. Unix tools end quietly when their reader goes away
//! (`hopline diagnose … | head`): Rust ignores SIGPIPE, so a write then fails with
//! `BrokenPipe`, which `println!` turns into a panic. Everything a command prints goes
//! through [`emit`], and a `BrokenPipe` anywhere in an error's chain ([`reader_gone`])
//! ends the command with exit 0 and nothing on stderr.

use std::io::{self, Write};

/// Writes `text` to stdout and flushes it.
pub(crate) fn emit(text: impl AsRef<[u8]>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_ref())?;
    out.flush()
}

/// [`emit`] with a line end after `text`.
pub(crate) fn emit_line(text: impl std::fmt::Display) -> io::Result<()> {
    emit(format!("{text}\n"))
}

/// The reader of stdout went away: the error, or one of its sources, is a broken pipe.
pub(crate) fn reader_gone(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}
