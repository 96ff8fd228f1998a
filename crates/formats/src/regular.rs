//! Open only regular files: every reader of a model, config or data file goes through here.
//!
//! A FIFO named as a shard or a GGUF blocks `open(2)` until some writer appears (forever, in
//! practice), and a character device such as `/dev/zero` reads without end, so a loader that
//! opens whatever path it is given hangs or fills memory. The file is opened with
//! `O_NONBLOCK` (which `open` honours for FIFOs and POSIX ignores for regular files) and its
//! type checked on the open handle (`fstat`, no race with a rename) before a byte is read.
//!
//! The errors are `std::io::Error`s (kind `InvalidInput`) so that every crate keeps wrapping
//! them in its own error with the path, as it already does for a missing file.

use std::fs::{File, FileType, OpenOptions};
use std::io::{self, Read};
use std::path::Path;

/// Open `path` for reading if it is a regular file (symlinks followed).
///
/// # Errors
/// The file cannot be opened, or it is a directory, FIFO, socket or device.
pub fn open_regular(path: impl AsRef<Path>) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    let file_type = file.metadata()?.file_type();
    if !file_type.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file (it is {})", describe(file_type)),
        ));
    }
    Ok(file)
}

/// `std::fs::read` through [`open_regular`].
///
/// # Errors
/// As [`open_regular`], or reading fails.
pub fn read_regular(path: impl AsRef<Path>) -> io::Result<Vec<u8>> {
    let mut file = open_regular(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// `std::fs::read_to_string` through [`open_regular`].
///
/// # Errors
/// As [`open_regular`], or the file is not UTF-8.
pub fn read_regular_to_string(path: impl AsRef<Path>) -> io::Result<String> {
    let mut file = open_regular(path)?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

fn describe(file_type: FileType) -> &'static str {
    if file_type.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "a named pipe (FIFO)";
        }
        if file_type.is_socket() {
            return "a socket";
        }
        if file_type.is_char_device() || file_type.is_block_device() {
            return "a device";
        }
    }
    "not a regular file"
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_regular_files_and_refuses_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, "{}").unwrap();
        assert_eq!(read_regular_to_string(&path).unwrap(), "{}");
        assert_eq!(read_regular(&path).unwrap(), b"{}");
        let err = read_regular(dir.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("a directory"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn refuses_a_fifo_without_blocking_and_a_device_without_reading_it() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("model.gguf");
        // No writer ever opens this FIFO: a plain open() would block this test forever.
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let err = open_regular(&fifo).unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
        // /dev/zero would read without end.
        let err = read_regular("/dev/zero").unwrap_err();
        assert!(err.to_string().contains("a device"), "{err}");
    }
}
