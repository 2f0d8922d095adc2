//! Reading and writing key material, certificates and the other files cordon writes.
//!
//! Writes are atomic: a temporary file created exclusively (`O_CREAT|O_EXCL`, so a planted file or
//! symlink at its name makes the write fail instead of being followed) in the same directory with
//! its final mode from the start, fsynced, renamed over the target, and the directory fsynced. An
//! agent watching the directory never reads half a file, and a private key is never readable by
//! anyone else, not even for a moment.
//!
//! Private keys are read with [`read_private_key`], which refuses a key that group or others may
//! read, as ssh does. This module must not log file contents.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::PkiError;

/// The permission bits a private key must not have: any access by group or others.
const KEY_FORBIDDEN_BITS: u32 = 0o077;

fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Fsyncs a directory, so a rename or a creation in it survives a crash. Filesystems that cannot
/// sync a directory (`EINVAL`) are left as they are.
fn sync_dir(dir: &Path) -> Result<(), PkiError> {
    let io = |source| PkiError::Write { path: dir.to_owned(), source };
    match File::open(dir).and_then(|d| d.sync_all()) {
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
        other => other.map_err(io),
    }
}

/// Writes `data` to `path` atomically, the file having the permission bits `mode` (less the
/// umask) from its creation.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let io = |source| PkiError::Write { path: path.to_owned(), source };
    let dir = dir_of(path);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(data).and_then(|_| tmp.as_file().sync_all()).map_err(io)?;
    // On failure the temporary file is removed when `PersistError` drops it.
    tmp.persist(path).map_err(|e| io(e.error))?;
    sync_dir(dir)
}

/// Creates `path` with `data` and the permission bits `mode`, failing with
/// [`std::io::ErrorKind::AlreadyExists`] (inside [`PkiError::Write`]) when anything is at that
/// name, a dangling symlink included: nothing is ever overwritten or followed.
pub fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let io = |source| PkiError::Write { path: path.to_owned(), source };
    let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(io)?;
    if let Err(e) = f.write_all(data).and_then(|_| f.sync_all()) {
        // Half a key is worse than none: the file is ours (create_new), remove it.
        let _ = std::fs::remove_file(path);
        return Err(io(e));
    }
    sync_dir(dir_of(path))
}

/// Reads a file, naming it in the error.
pub fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Read { path: path.to_owned(), source })
}

/// Reads a private key, refusing it when group or others may access it (the mode is read from
/// the opened file, so it is the mode of what is read).
pub fn read_private_key(path: &Path) -> Result<String, PkiError> {
    let io = |source| PkiError::Read { path: path.to_owned(), source };
    let mut f = File::open(path).map_err(io)?;
    let mode = f.metadata().map_err(io)?.permissions().mode() & 0o7777;
    if mode & KEY_FORBIDDEN_BITS != 0 {
        return Err(PkiError::KeyPermissions { path: path.to_owned(), mode });
    }
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(io)?;
    Ok(text)
}

/// The permission bits of `path` when group or others may access it, as [`read_secret`] would
/// refuse it; `None` when it is private or cannot be read (reading it will say why).
pub fn too_open(path: &Path) -> Option<u32> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & KEY_FORBIDDEN_BITS != 0).then_some(mode)
}

/// Reads a secret that is not a key (a join token, the store's password), refusing it when group
/// or others may access it, as [`read_private_key`] refuses a key. `what` names it in the error.
pub fn read_secret(path: &Path, what: &'static str) -> Result<String, PkiError> {
    let io = |source| PkiError::Read { path: path.to_owned(), source };
    let mut f = File::open(path).map_err(io)?;
    let mode = f.metadata().map_err(io)?.permissions().mode() & 0o7777;
    if mode & KEY_FORBIDDEN_BITS != 0 {
        return Err(PkiError::SecretPermissions { path: path.to_owned(), mode, what });
    }
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(io)?;
    Ok(text)
}

/// The problem a configuration check reports for a secret file `field` names at `path` that
/// group or others may read; `None` when it is private (or missing: loading it says so).
pub fn secret_problem(field: &str, path: &Path) -> Option<String> {
    too_open(path).map(|mode| {
        format!(
            "{field}: {} has permissions {mode:04o}, too open for a secret: make it readable by its owner only (chmod 600 {})",
            path.display(),
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_symlink_planted_at_the_old_temporary_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let target = dir.path().join("key.pem");
        // The name earlier versions wrote through, predictable from the process id.
        let planted = dir.path().join(format!(".key.pem.tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();

        write_atomic(&target, b"secret", 0o600).unwrap();

        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious", "the symlink was followed");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "secret");
        assert_eq!(mode_of(&target), 0o600);
        assert!(std::fs::symlink_metadata(&target).unwrap().file_type().is_file());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "no temporary file left: {left:?}");
    }

    #[test]
    fn write_new_refuses_an_existing_file_or_a_dangling_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let existing = dir.path().join("existing");
        std::fs::write(&existing, "old").unwrap();
        let err = write_new(&existing, b"new", 0o600).unwrap_err();
        assert!(
            matches!(&err, PkiError::Write { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists)
        );
        assert_eq!(std::fs::read_to_string(&existing).unwrap(), "old");

        let link = dir.path().join("link");
        let elsewhere = dir.path().join("elsewhere");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        assert!(write_new(&link, b"new", 0o600).is_err());
        assert!(!elsewhere.exists(), "the dangling symlink was followed");

        let fresh = dir.path().join("fresh");
        write_new(&fresh, b"key", 0o600).unwrap();
        assert_eq!(mode_of(&fresh), 0o600);
    }

    #[test]
    fn a_key_readable_by_group_or_others_is_refused_with_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        std::fs::write(&key, "k").unwrap();
        for (mode, ok) in [(0o600, true), (0o400, true), (0o640, false), (0o604, false), (0o644, false)] {
            std::fs::set_permissions(&key, Permissions::from_mode(mode)).unwrap();
            match read_private_key(&key) {
                Ok(text) => assert!(ok, "{mode:o} accepted: {text}"),
                Err(e) => {
                    assert!(!ok, "{mode:o} refused: {e}");
                    let msg = e.to_string();
                    assert!(msg.contains("key.pem") && msg.contains(&format!("{mode:04o}")), "{msg}");
                }
            }
        }
    }
}
