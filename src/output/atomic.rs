//! Files that appear whole or not at all: the SQL file of `-o` and the
//! automatic tool's `--metrics-file`.
//!
//! The content goes to a temporary file beside the target (same directory,
//! so the same filesystem), which is flushed, `fsync`ed and renamed over
//! the target only once complete; the directory is `fsync`ed after, so
//! the rename survives a crash. Until then the target is untouched: a run
//! that fails (unknown room, refused connection, full disk) or is stopped
//! by a signal leaves an earlier file of that name exactly as it was, and
//! dropping an unfinished [`AtomicFile`] removes its temporary file. A
//! reader (an admin's `psql`, node_exporter's textfile collector) sees
//! either the old file or the new one, never a part.
//!
//! The one leftover possible is a temporary file of a process killed
//! outright (SIGKILL, a second Ctrl-C) while it writes: its name,
//! `.<target>.tmp-<pid>`, says whose it was.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::tool::failpoint;

/// A file being written beside `target`, renamed over it by
/// [`AtomicFile::commit`]; removed if dropped before that.
pub struct AtomicFile {
    target: PathBuf,
    temp: PathBuf,
    /// `None` once committed.
    out: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Starts writing a new version of `target`: creates its temporary file
    /// (with the old file's permissions, if there is one).
    pub fn create(target: &Path) -> io::Result<AtomicFile> {
        // A symbolic link is written through, as `File::create` would:
        // the file it points to is replaced, the link stays.
        let resolved;
        let target = match fs::symlink_metadata(target) {
            Ok(meta) if meta.file_type().is_symlink() => {
                resolved = fs::canonicalize(target)?;
                resolved.as_path()
            }
            _ => target,
        };
        let temp = temp_path(target)?;
        // A stale temporary file of a killed process of the same pid.
        let _ = fs::remove_file(&temp);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        let atomic = AtomicFile {
            target: target.to_owned(),
            temp,
            out: Some(BufWriter::new(file)),
        };
        if let Ok(old) = fs::metadata(target) {
            if old.is_dir() {
                // Dropping `atomic` removes the temporary file.
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    "it is a directory",
                ));
            }
            if let Some(out) = atomic.out.as_ref() {
                out.get_ref().set_permissions(old.permissions())?;
            }
        }
        Ok(atomic)
    }

    /// Checks that `target` can be written as [`AtomicFile::create`] will
    /// (its directory writable, the target not a directory nor a read-only
    /// file), leaving nothing behind: lets a run fail on a bad path before
    /// any work.
    pub fn check_writable(target: &Path) -> io::Result<()> {
        if let Ok(old) = fs::metadata(target) {
            if old.permissions().readonly() && !old.is_dir() {
                // Refused as `File::create` refuses it, though a rename
                // would replace it: the operator protected it.
                OpenOptions::new().append(true).open(target)?;
            }
        }
        AtomicFile::create(target).map(drop)
    }

    /// Flushes, `fsync`s and renames the file over its target, then
    /// `fsync`s the directory.
    pub fn commit(mut self) -> io::Result<()> {
        let out = self.out.take().expect("committed once");
        let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        drop(file);
        if let Err(e) = fs::rename(&self.temp, &self.target) {
            let _ = fs::remove_file(&self.temp);
            return Err(e);
        }
        // The rename is in the directory: make it durable too. Some
        // filesystems cannot sync a directory; the file itself is.
        if let Ok(dir) = File::open(parent(&self.target)) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if failpoint::triggered("output::disk-full") {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "No space left on device (fault injection)",
            ));
        }
        self.out.as_mut().expect("not committed").write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.as_mut().expect("not committed").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// The directory `target` is in (`.` for a bare file name).
fn parent(target: &Path) -> &Path {
    match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// `.<name>.tmp-<pid>` beside `target`.
fn temp_path(target: &Path) -> io::Result<PathBuf> {
    let name = target
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "it does not name a file"))?;
    let mut temp = std::ffi::OsString::from(".");
    temp.push(name);
    temp.push(format!(".tmp-{}", std::process::id()));
    Ok(parent(target).join(temp))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("atomic-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// How many files `dir` holds.
    fn files(dir: &Path) -> usize {
        fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn the_target_changes_only_on_commit() {
        let dir = dir("commit");
        let target = dir.join("keep.sql");
        fs::write(&target, "reviewed\n").unwrap();
        let mut file = AtomicFile::create(&target).unwrap();
        file.write_all(b"new\n").unwrap();
        file.flush().unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "reviewed\n");
        assert_eq!(files(&dir), 2);
        file.commit().unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "new\n");
        assert_eq!(files(&dir), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_link_is_written_through() {
        let dir = dir("link");
        let real = dir.join("real.sql");
        let link = dir.join("link.sql");
        fs::write(&real, "old\n").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let mut file = AtomicFile::create(&link).unwrap();
        file.write_all(b"new\n").unwrap();
        file.commit().unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_to_string(&real).unwrap(), "new\n");
        assert_eq!(files(&dir), 2);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_dropped_file_leaves_the_target_and_no_temporary_file() {
        let dir = dir("drop");
        let target = dir.join("keep.sql");
        fs::write(&target, "reviewed\n").unwrap();
        let mut file = AtomicFile::create(&target).unwrap();
        file.write_all(b"half a statem").unwrap();
        drop(file);
        assert_eq!(fs::read_to_string(&target).unwrap(), "reviewed\n");
        assert_eq!(files(&dir), 1);
        AtomicFile::check_writable(&target).unwrap();
        assert_eq!(files(&dir), 1);
        assert!(AtomicFile::check_writable(&dir).is_err());
        assert!(AtomicFile::check_writable(&dir.join("no/such/dir/f")).is_err());
        assert_eq!(files(&dir), 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
