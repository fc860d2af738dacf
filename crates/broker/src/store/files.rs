//! Files and directory entries of the data directory: creating a segment, and making
//! entries (a file created, renamed or deleted) durable by syncing their directory.
//!
//! Plain functions any part of the store may call (the writer, recovery, the metadata
//! log); they hold no state. Every change goes through the store's [`Disk`].

use std::sync::Arc;

use super::disk::{Disk, DiskFile};
use super::format::{file_header, segment_name, SEGMENT_MAGIC};

/// Creates segment `n` with its header, and syncs the directory entry. On failure the
/// file is deleted again where possible, so a later attempt can create it.
pub fn create_segment(
    disk: &dyn Disk,
    dir: &std::path::Path,
    n: u64,
) -> std::io::Result<Arc<dyn DiskFile>> {
    let path = dir.join(segment_name(n));
    let f = disk.create_new(&path)?;
    let written = f
        .write_all(&file_header(SEGMENT_MAGIC))
        .and_then(|()| f.sync_data())
        .and_then(|()| sync_dir(disk, dir));
    if let Err(e) = written {
        // Gone again, so a later attempt can create it (a failure here changes
        // nothing: that attempt fails the same way).
        let _ = disk.remove_file(&path);
        return Err(e);
    }
    Ok(f)
}

/// Makes the entries of directory `dir` durable: a file created, renamed or deleted in
/// it is only sure to stay so once the directory itself is synced.
pub fn sync_dir(disk: &dyn Disk, dir: &std::path::Path) -> std::io::Result<()> {
    disk.sync_dir(dir)?;
    #[cfg(test)]
    dir_events::note(dir, "sync");
    Ok(())
}

/// Test record of what happened to the entries of each directory, in order.
#[cfg(test)]
pub(crate) mod dir_events {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    static EVENTS: Mutex<Vec<(PathBuf, &'static str)>> = Mutex::new(Vec::new());

    pub(crate) fn note(dir: &Path, what: &'static str) {
        EVENTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((dir.to_path_buf(), what));
    }

    /// What happened in `dir`, in order.
    pub(crate) fn of(dir: &Path) -> Vec<&'static str> {
        EVENTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(d, _)| d == dir)
            .map(|(_, w)| *w)
            .collect()
    }
}
