//! The file-system seam: every change the store makes to its files goes through a
//! [`Disk`] — creating, appending, syncing, truncating, renaming and deleting files, and
//! syncing directory entries. [`OsDisk`] is the operating system's (what the server
//! runs on); [`super::faulty::FaultyDisk`] is a test's, which injects errors and
//! simulates a power loss.
//!
//! Reads are not part of the seam: recovery and the reader of paged-out messages read
//! files with `std::fs`. A disk writes through to real files, so a read sees what the
//! operating system would show; only what survives a power loss is the disk's to decide.
//!
//! Cost: the writer calls the disk once per batch (one vectored write) and the syncer
//! once per sync, through an `Arc<dyn Disk>` and `Arc<dyn DiskFile>`: one indirect call
//! beside a system call, never per record.

use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Write};
use std::path::Path;
use std::sync::Arc;

/// A file the store writes, opened through a [`Disk`].
pub trait DiskFile: Send + Sync + std::fmt::Debug {
    /// Writes some of `bufs` at the end of the file; answers how many octets.
    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize>;
    /// `fdatasync`: the data written so far survives a power loss.
    fn sync_data(&self) -> std::io::Result<()>;
    /// `fsync`: the data and the metadata (the length after a truncation).
    fn sync_all(&self) -> std::io::Result<()>;
    /// Truncates (or extends) the file to `len` octets.
    fn set_len(&self, len: u64) -> std::io::Result<()>;

    /// Writes all of `buf`.
    fn write_all(&self, mut buf: &[u8]) -> std::io::Result<()> {
        while !buf.is_empty() {
            match self.write_vectored(&[IoSlice::new(buf)]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Where the store's files live, as far as changing them goes.
pub trait Disk: Send + Sync + std::fmt::Debug {
    /// Creates `path`, which must not exist, for appending.
    fn create_new(&self, path: &Path) -> std::io::Result<Arc<dyn DiskFile>>;
    /// Creates `path`, or empties it if it exists, for writing.
    fn create(&self, path: &Path) -> std::io::Result<Arc<dyn DiskFile>>;
    /// Opens the existing `path` for appending (and truncating).
    fn open_append(&self, path: &Path) -> std::io::Result<Arc<dyn DiskFile>>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()>;
    /// Deletes `path`.
    fn remove_file(&self, path: &Path) -> std::io::Result<()>;
    /// Makes the entries of directory `dir` durable: a file created, renamed or deleted
    /// in it is only sure to stay so once the directory itself is synced.
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()>;
}

/// The operating system's files.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsDisk;

impl DiskFile for File {
    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        let mut f: &File = self;
        Write::write_vectored(&mut f, bufs)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        File::sync_data(self)
    }

    fn sync_all(&self) -> std::io::Result<()> {
        File::sync_all(self)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        File::set_len(self, len)
    }
}

impl Disk for OsDisk {
    fn create_new(&self, path: &Path) -> std::io::Result<Arc<dyn DiskFile>> {
        let f = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)?;
        Ok(Arc::new(f))
    }

    fn create(&self, path: &Path) -> std::io::Result<Arc<dyn DiskFile>> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(path)?;
        Ok(Arc::new(f))
    }

    fn open_append(&self, path: &Path) -> std::io::Result<Arc<dyn DiskFile>> {
        Ok(Arc::new(OpenOptions::new().append(true).open(path)?))
    }

    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        File::open(dir)?.sync_all()
    }
}
