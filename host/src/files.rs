//! Reading the files a user points the host at (plugins, grants,
//! manifests, objects): regular files only, and bounded in size, so that a
//! symlink to `/dev/zero` or a FIFO cannot fill memory or block start-up.
//! A plugin may be gzip-compressed (`NAME.wasm.gz`, for a ConfigMap's
//! 1 MiB), and is then decompressed within the same bound.

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

/// Whether a file name is a plugin's: `NAME.wasm`, or `NAME.wasm.gz`
/// compressed with gzip; hidden files (`.NAME.wasm`, an editor's or the
/// kubelet's) are not.
pub fn is_plugin_name(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".wasm") || name.ends_with(".wasm.gz"))
}

/// The plugin file `path` without `.wasm` or `.wasm.gz`: `dir/demoapp`
/// for `dir/demoapp.wasm.gz`.
pub fn plugin_stem(path: &Path) -> std::path::PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name
        .strip_suffix(".wasm.gz")
        .or_else(|| name.strip_suffix(".wasm"))
        .unwrap_or(&name);
    path.with_file_name(stem)
}

/// Reads the plugin at `path`: a component, or (`NAME.wasm.gz`) one
/// compressed with gzip, decompressed to at most [`MAX_PLUGIN_BYTES`].
pub fn read_plugin(path: &Path) -> Result<Vec<u8>, Error> {
    read_plugin_within(path, MAX_PLUGIN_BYTES)
}

fn read_plugin_within(path: &Path, limit: u64) -> Result<Vec<u8>, Error> {
    let bytes = read_bounded(path, limit)?;
    let gzip = bytes.starts_with(&[0x1f, 0x8b]);
    let named_gz = path.to_string_lossy().ends_with(".gz");
    match (named_gz, gzip) {
        (false, false) => Ok(bytes),
        (false, true) => Err(Error::new(
            ErrorKind::InvalidData,
            "it is compressed with gzip: name it `.wasm.gz` for the host to decompress it",
        )),
        (true, false) => Err(Error::new(
            ErrorKind::InvalidData,
            "it is named `.gz` but is not compressed with gzip",
        )),
        (true, true) => {
            let bound = usize::try_from(limit)
                .unwrap_or(usize::MAX)
                .saturating_add(1);
            let mut out = Vec::with_capacity(bytes.len().saturating_mul(4).min(bound));
            flate2::read::MultiGzDecoder::new(bytes.as_slice())
                .take(limit + 1)
                .read_to_end(&mut out)
                .map_err(|e| {
                    Error::new(
                        ErrorKind::InvalidData,
                        format!("it does not decompress: {e}"),
                    )
                })?;
            if out.len() as u64 > limit {
                return Err(Error::new(
                    ErrorKind::FileTooLarge,
                    format!("it decompresses to more than {} MiB", limit / (1024 * 1024)),
                ));
            }
            Ok(out)
        }
    }
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

    #[test]
    fn compressed_plugins_are_decompressed_within_the_bound() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let gz = |bytes: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(bytes).unwrap();
            e.finish().unwrap()
        };
        let component = b"\0asm\x0d\0\x01\0 and the rest".to_vec();
        let packed = dir.path().join("p.wasm.gz");
        std::fs::write(&packed, gz(&component)).unwrap();
        assert_eq!(read_plugin(&packed).unwrap(), component);
        assert!(is_plugin_name("p.wasm.gz") && is_plugin_name("p.wasm"));
        assert!(!is_plugin_name(".p.wasm.gz") && !is_plugin_name("p.gz"));
        assert_eq!(plugin_stem(&packed), dir.path().join("p"));
        assert_eq!(plugin_stem(Path::new("a/b.wasm")), Path::new("a/b"));

        // A bomb: 3 MiB of zeros in a few KiB, refused at a 2 MiB bound.
        let bomb = dir.path().join("bomb.wasm.gz");
        std::fs::write(&bomb, gz(&vec![0u8; 3 << 20])).unwrap();
        assert!(std::fs::metadata(&bomb).unwrap().len() < 16 * 1024);
        let e = read_plugin_within(&bomb, 2 << 20).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FileTooLarge);
        assert!(
            e.to_string().contains("decompresses to more than 2 MiB"),
            "{e}"
        );

        // Names and contents that disagree, and a truncated stream.
        let plain = dir.path().join("plain.wasm.gz");
        std::fs::write(&plain, &component).unwrap();
        let e = read_plugin(&plain).unwrap_err();
        assert!(e.to_string().contains("not compressed with gzip"), "{e}");
        let hidden = dir.path().join("hidden.wasm");
        std::fs::write(&hidden, gz(&component)).unwrap();
        let e = read_plugin(&hidden).unwrap_err();
        assert!(e.to_string().contains("name it `.wasm.gz`"), "{e}");
        let cut = dir.path().join("cut.wasm.gz");
        let whole = gz(&component);
        std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
        let e = read_plugin(&cut).unwrap_err();
        assert!(e.to_string().contains("does not decompress"), "{e}");
    }
}
