use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Replaces the file at `path` with `text` atomically: a temporary file in
/// the same folder (a random name, created exclusively with mode 0600, so a
/// link planted in its place is never followed) is given the old file's
/// mode, owner and group before the first byte is written, then written,
/// synced and renamed over the old file; then the folder is synced.
/// Readers see the old text or the new, never a mix.
///
/// A symbolic link is followed: its target is replaced, the link kept.
/// Owner and group are kept where the process may set them (as root, or a
/// group the process belongs to); otherwise the new file belongs to the
/// process.
///
/// # Errors
///
/// Any I/O error. Before the rename the old file is untouched. If only the
/// final sync of the folder fails, the new text is already in place (it
/// may not survive a crash); the error says so.
pub fn write_atomic(path: &Path, text: &str) -> io::Result<()> {
    let target = fs::canonicalize(path)?;
    let old = fs::metadata(&target)?;
    replace(&target, text, Some(&old))
}

/// Like [`write_atomic`], for a file kiln owns alone (a cache that may hold
/// secrets): created when missing, always with mode 0600 and the process's
/// owner.
///
/// # Errors
///
/// Any I/O error, as [`write_atomic`].
pub fn write_private(path: &Path, text: &str) -> io::Result<()> {
    let folder = path.parent().filter(|f| !f.as_os_str().is_empty());
    let folder = fs::canonicalize(folder.unwrap_or(Path::new(".")))?;
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "a file path has a file name")
    })?;
    replace(&folder.join(name), text, None)
}

/// Writes `text` to a temporary file beside `target` (given `old`'s mode,
/// owner and group when it replaces a file), then renames it over `target`
/// and syncs the folder.
fn replace(target: &Path, text: &str, old: Option<&fs::Metadata>) -> io::Result<()> {
    let folder = target.parent().unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut temporary = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".kiln.tmp")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(folder)?;
    let file = temporary.as_file();
    if let Some(old) = old {
        keep_owner(file, old)?;
        // After the owner: a chown by a non-root process may clear mode bits.
        file.set_permissions(fs::Permissions::from_mode(old.mode() & 0o7777))?;
    }
    temporary.write_all(text.as_bytes())?;
    temporary.as_file().sync_all()?;
    // On failure the temporary file is removed when the error drops it.
    temporary.persist(target).map_err(|e| e.error)?;
    File::open(folder)?.sync_all().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "the new text is in place but syncing its folder {} failed, so it may not survive a crash: {e}",
                folder.display()
            ),
        )
    })
}

/// Gives `file` the owner and group of `old`: both as root, else the group
/// alone when the process belongs to it, else nothing (the new file keeps
/// the process's own).
fn keep_owner(file: &File, old: &fs::Metadata) -> io::Result<()> {
    let not_permitted = |e: &io::Error| e.kind() == io::ErrorKind::PermissionDenied;
    match std::os::unix::fs::fchown(file, Some(old.uid()), Some(old.gid())) {
        Err(e) if not_permitted(&e) => {
            match std::os::unix::fs::fchown(file, None, Some(old.gid())) {
                Err(e) if not_permitted(&e) => Ok(()),
                other => other,
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_file_is_created_and_replaced_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.fleet-cache.json");
        write_private(&path, "one").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "one");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, "two").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two");
        let mode = fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }

    #[test]
    fn a_link_planted_at_a_temporary_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let config = dir.path().join("deploy.toml");
        fs::write(&config, "a = 1\n").unwrap();
        let victim = outside.path().join("victim");
        fs::write(&victim, "precious\n").unwrap();
        // Links at the names a writer might pick: today's and earlier ones.
        let planted = [
            format!(".deploy.toml.kiln-{}.tmp", std::process::id()),
            ".deploy.toml.tmp".to_owned(),
            "deploy.toml.tmp".to_owned(),
        ];
        for name in &planted {
            std::os::unix::fs::symlink(&victim, dir.path().join(name)).unwrap();
        }

        write_atomic(&config, "a = 2\n").unwrap();

        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
        assert!(
            !fs::symlink_metadata(&config)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read_to_string(&config).unwrap(), "a = 2\n");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 1);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1 + planted.len(),
            "no temporary left"
        );
    }

    #[test]
    fn keeps_owner_and_group() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("deploy.toml");
        fs::write(&config, "a = 1\n").unwrap();
        fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).unwrap();
        let me = fs::metadata(&config).unwrap();
        // As root (the test container) the file goes to another user and
        // group; otherwise it stays the process's own, which is still kept.
        let (uid, gid) = match std::os::unix::fs::chown(&config, Some(4321), Some(8765)) {
            Ok(()) => (4321, 8765),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                eprintln!("not root: checking that the process's own owner is kept");
                (me.uid(), me.gid())
            }
            Err(e) => panic!("chown: {e}"),
        };

        write_atomic(&config, "a = 2\n").unwrap();

        let after = fs::metadata(&config).unwrap();
        assert_eq!((after.uid(), after.gid()), (uid, gid));
        assert_eq!(after.permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_to_string(&config).unwrap(), "a = 2\n");
    }

    #[test]
    fn replaces_text_keeps_permissions_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.toml");
        fs::write(&real, "a = 1\n").unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.path().join("deploy.toml");
        std::os::unix::fs::symlink(&real, &link).unwrap();

        write_atomic(&link, "a = 2\n").unwrap();

        assert_eq!(fs::read_to_string(&real).unwrap(), "a = 2\n");
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let mode = fs::metadata(&real).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no temporary left"
        );
    }
}
