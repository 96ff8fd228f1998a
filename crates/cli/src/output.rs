//! Standard output and error reports of the `temper` binary.
//!
//! `println!` panics when stdout is closed (`temper inspect X | head -1`). Everything the
//! commands print goes through [`outln!`]/[`out!`], which return the `io::Error` instead; `main`
//! treats a broken pipe as the reader having seen enough and exits 0 without a message (the
//! choice `git`-style pagers' users expect under `set -o pipefail`; a process killed by
//! SIGPIPE would exit 141).

use std::io;

/// `println!` that returns `io::Result<()>` instead of panicking on a closed stdout.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// `print!` that returns `io::Result<()>`.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut lock = std::io::stdout().lock();
        write!(lock, $($arg)*).and_then(|()| lock.flush())
    }};
}

pub(crate) use {out, outln};

/// Whether `error` comes from writing to a closed pipe.
pub(crate) fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// `error` and its causes, `: `-separated, skipping a cause whose text the previous one
/// already ends with (the crates' errors print their source inline *and* return it as
/// `source()`, so `{:#}` would print an OS error twice).
pub(crate) fn report(error: &anyhow::Error) -> String {
    let mut text = String::new();
    let mut previous = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if !previous.is_empty() && previous.ends_with(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
        previous = message;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_os_error_is_reported_once() {
        let os = io::Error::new(
            io::ErrorKind::NotFound,
            "No such file or directory (os error 2)",
        );
        let inner =
            anyhow::Error::new(os).context("model.gguf: No such file or directory (os error 2)");
        let outer = inner.context("loading model.gguf");
        assert_eq!(
            report(&outer),
            "loading model.gguf: model.gguf: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn a_broken_pipe_is_found_in_the_chain() {
        let e = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe)).context("printing");
        assert!(is_broken_pipe(&e));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}
