//! Reading the files a user points the host at (plugins, grants,
//! manifests, objects): regular files only, and bounded in size, so that a
//! symlink to `/dev/zero` or a FIFO cannot fill memory or block start-up.

use std::io::{Error, ErrorKind, Read as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// Largest plugin read (a componentized Python guest is about 40 MiB).
pub const MAX_PLUGIN_BYTES: u64 = 128 * 1024 * 1024;

/// Largest grant, manifest or object file read.
pub const MAX_TEXT_BYTES: u64 = 16 * 1024 * 1024;

/// Reads `path` whole if it is a regular file (symlinks followed) of at
/// most `limit` bytes; the error says which rule it broke.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, Error> {
    // Non-blocking: opening a FIFO must not wait for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        let what = kind(&metadata.file_type());
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("it is {what}, not a regular file"),
        ));
    }
    if metadata.len() > limit {
        return Err(too_large(limit));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    // It may grow while read: never past the limit.
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(limit));
    }
    Ok(bytes)
}

/// [`read_bounded`] as UTF-8 text.
pub fn read_text(path: &Path, limit: u64) -> Result<String, Error> {
    String::from_utf8(read_bounded(path, limit)?)
        .map_err(|_| Error::new(ErrorKind::InvalidData, "it is not UTF-8 text"))
}

fn too_large(limit: u64) -> Error {
    Error::new(
        ErrorKind::FileTooLarge,
        format!("it is larger than {} MiB", limit / (1024 * 1024)),
    )
}

fn kind(file_type: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_devices_fifos_directories_and_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let zero = dir.path().join("zero.wasm");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let e = read_bounded(&zero, MAX_PLUGIN_BYTES).unwrap_err();
        assert!(e.to_string().contains("a character device"), "{e}");

        let fifo = dir.path().join("fifo.wasm");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let e = read_bounded(&fifo, MAX_PLUGIN_BYTES).unwrap_err();
        assert!(e.to_string().contains("a FIFO"), "{e}");

        let e = read_bounded(dir.path(), MAX_PLUGIN_BYTES).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");

        let big = dir.path().join("big.wasm");
        std::fs::write(&big, vec![0u8; 2048]).unwrap();
        let e = read_bounded(&big, 1024).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FileTooLarge);
        assert_eq!(read_bounded(&big, 2048).unwrap().len(), 2048);
    }
}
