//! [`FaultyDisk`]: a [`Disk`] for tests that injects errors (`ENOSPC`, `EIO`, `EMFILE`) at
//! chosen or random operations and simulates a power loss, as Jepsen's LazyFS does.
//!
//! It writes through to real files (so the store, and its reads with `std::fs`, work as
//! usual) and keeps beside them what a power loss would leave: per file, its content as of
//! its last `sync_data`/`sync_all`; per directory entry (created, renamed, deleted), its
//! state as of the last sync of its directory. [`FaultyDisk::power_off`] makes every
//! later operation fail, as if the machine were gone; [`FaultyDisk::power_on`] then puts
//! the directory in the state a power loss leaves: unsynced tails are gone, files created
//! or renamed since their directory's last sync are gone or back under their old name, a
//! deletion not synced is undone.
//!
//! [`FaultyDisk::hold_syncs`] makes file syncs wait, as on a disk that is slow to flush,
//! until [`FaultyDisk::release_syncs`] or the power goes off: what the store wrote
//! meanwhile is written but not durable, for as long as a test likes.
//!
//! Syncs are simulated, not made (no `fsync` reaches the real disk): the model decides
//! what survives, and tests run fast. Not for production: the server uses
//! [`super::disk::OsDisk`].

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::disk::{Disk, DiskFile};

/// A kind of operation a fault can be injected at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsOp {
    /// Creating a file (`create_new`, `create`), or opening one.
    Open,
    /// Writing to a file.
    Write,
    /// `sync_data` or `sync_all` of a file.
    Sync,
    /// Truncating a file.
    SetLen,
    /// Renaming a file.
    Rename,
    /// Deleting a file.
    Remove,
    /// Syncing a directory.
    SyncDir,
}

/// An error to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `ENOSPC`: no space left on device.
    NoSpace,
    /// `EIO`: an I/O error.
    Io,
    /// `EMFILE`: too many open files.
    TooManyFiles,
}

impl Fault {
    fn error(self) -> std::io::Error {
        let errno = match self {
            Fault::NoSpace => rustix::io::Errno::NOSPC,
            Fault::Io => rustix::io::Errno::IO,
            Fault::TooManyFiles => rustix::io::Errno::MFILE,
        };
        std::io::Error::from_raw_os_error(errno.raw_os_error())
    }
}

/// When a rule fires.
#[derive(Debug, Clone, Copy)]
enum When {
    /// Every time, until healed.
    Always,
    /// Once, at the operation after `n` more of its kind.
    After(u64),
    /// Each time with this chance, in thousandths.
    Randomly(u32),
}

#[derive(Debug)]
struct Rule {
    ops: Vec<FsOp>,
    fault: Fault,
    when: When,
}

#[derive(Debug, Default)]
struct State {
    next_inode: u64,
    /// Path → inode, as the running system sees it (the paths this disk has touched).
    current: HashMap<PathBuf, u64>,
    /// Path → inode after a power loss; `None`: the path would not exist.
    durable: HashMap<PathBuf, Option<u64>>,
    /// Inode → its content as of its last sync.
    synced: HashMap<u64, Vec<u8>>,
    rules: Vec<Rule>,
    rng: u64,
    off: bool,
    /// The power goes off when `operations` reaches this.
    off_at: Option<u64>,
    /// File syncs wait (see [`FaultyDisk::hold_syncs`]).
    syncs_held: bool,
    injected: u64,
    operations: u64,
}

impl State {
    fn random(&mut self) -> u64 {
        // xorshift64*: plenty for picking faults, and reproducible from the seed.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn check(&mut self, op: FsOp) -> std::io::Result<()> {
        self.operations += 1;
        if self.off_at.is_some_and(|at| self.operations > at) {
            self.off = true;
            self.off_at = None;
        }
        if self.off {
            return Err(std::io::Error::other("the power is off"));
        }
        let mut fired = None;
        for i in 0..self.rules.len() {
            if !self.rules[i].ops.contains(&op) {
                continue;
            }
            let fault = self.rules[i].fault;
            let fire = match self.rules[i].when {
                When::Always => true,
                When::After(0) => {
                    self.rules[i].when = When::After(u64::MAX);
                    true
                }
                When::After(u64::MAX) => false,
                When::After(n) => {
                    self.rules[i].when = When::After(n - 1);
                    false
                }
                When::Randomly(per_mille) => self.random() % 1000 < u64::from(per_mille),
            };
            if fire && fired.is_none() {
                fired = Some(fault);
            }
        }
        match fired {
            Some(fault) => {
                self.injected += 1;
                Err(fault.error())
            }
            None => Ok(()),
        }
    }

    fn new_inode(&mut self) -> u64 {
        self.next_inode += 1;
        self.next_inode
    }

    /// Starts tracking `path` if this disk has not seen it: a file that exists is taken
    /// as durable as it is; one that does not is durably absent.
    fn adopt(&mut self, path: &Path) {
        if self.current.contains_key(path) || self.durable.contains_key(path) {
            return;
        }
        match std::fs::read(path) {
            Ok(content) => {
                let inode = self.new_inode();
                self.synced.insert(inode, content);
                self.current.insert(path.to_path_buf(), inode);
                self.durable.insert(path.to_path_buf(), Some(inode));
            }
            Err(_) => {
                self.durable.insert(path.to_path_buf(), None);
            }
        }
    }
}

/// A [`Disk`] that writes through to real files, injects faults and simulates a power
/// loss (see the module documentation).
#[derive(Debug)]
pub struct FaultyDisk {
    state: Arc<Shared>,
}

/// The state, and the wake-up of syncs that wait while syncs are held.
#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    released: Condvar,
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

impl FaultyDisk {
    /// A disk with no faults; `seed` drives the random ones.
    pub fn new(seed: u64) -> Arc<FaultyDisk> {
        Arc::new(FaultyDisk {
            state: Arc::new(Shared {
                state: Mutex::new(State {
                    // xorshift must not start at zero.
                    rng: seed | 1,
                    ..State::default()
                }),
                released: Condvar::new(),
            }),
        })
    }

    fn add(&self, ops: &[FsOp], fault: Fault, when: When) {
        lock(&self.state).rules.push(Rule {
            ops: ops.to_vec(),
            fault,
            when,
        });
    }

    /// Every operation of the kinds `ops` fails with `fault` until [`FaultyDisk::heal`].
    pub fn fail(&self, ops: &[FsOp], fault: Fault) {
        self.add(ops, fault, When::Always);
    }

    /// The operation of kind `op` after `skip` more of them fails once with `fault`.
    pub fn fail_once(&self, op: FsOp, skip: u64, fault: Fault) {
        self.add(&[op], fault, When::After(skip));
    }

    /// Each operation of the kinds `ops` fails with `fault` with a chance of `per_mille`
    /// in a thousand, until [`FaultyDisk::heal`].
    pub fn fail_randomly(&self, ops: &[FsOp], fault: Fault, per_mille: u32) {
        self.add(ops, fault, When::Randomly(per_mille));
    }

    /// No more faults: every rule is dropped.
    pub fn heal(&self) {
        lock(&self.state).rules.clear();
    }

    /// How many faults were injected so far.
    pub fn injected(&self) -> u64 {
        lock(&self.state).injected
    }

    /// How many operations were asked of this disk so far (to pick a crash point).
    pub fn operations(&self) -> u64 {
        lock(&self.state).operations
    }

    /// The power goes off: every operation from now on fails, as on a machine that is
    /// gone; nothing more becomes durable.
    pub fn power_off(&self) {
        lock(&self.state).off = true;
        // A held sync fails now, as every other operation.
        self.state.released.notify_all();
    }

    /// File syncs (`sync_data`, `sync_all`; not directory syncs) wait from now on until
    /// [`FaultyDisk::release_syncs`], or fail when the power goes off: a disk slow to
    /// flush, so that writes stay unsynced (and their confirms withheld) while a test
    /// goes on.
    pub fn hold_syncs(&self) {
        lock(&self.state).syncs_held = true;
    }

    /// Held syncs go ahead, and later ones no longer wait.
    pub fn release_syncs(&self) {
        lock(&self.state).syncs_held = false;
        self.state.released.notify_all();
    }

    /// The power goes off after `n` more operations (the `n + 1`th fails): a crash at a
    /// point of the store's work a test does not choose itself.
    pub fn power_off_after(&self, n: u64) {
        let mut s = lock(&self.state);
        s.off_at = Some(s.operations + n);
    }

    /// The power comes back: the files are put in the state the power loss left (see the
    /// module documentation), and operations work again (the fault rules stay).
    pub fn power_on(&self) -> std::io::Result<()> {
        let mut s = lock(&self.state);
        let paths: HashSet<PathBuf> = s.durable.keys().chain(s.current.keys()).cloned().collect();
        let mut current = HashMap::new();
        for path in paths {
            match s.durable.get(&path).copied().flatten() {
                Some(inode) => {
                    let content = s.synced.get(&inode).cloned().unwrap_or_default();
                    std::fs::write(&path, content)?;
                    current.insert(path, inode);
                }
                None => match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                },
            }
        }
        s.current = current;
        s.off = false;
        s.off_at = None;
        Ok(())
    }

    fn open(
        &self,
        path: &Path,
        how: &OpenOptions,
        fresh: bool,
    ) -> std::io::Result<Arc<dyn DiskFile>> {
        let mut s = lock(&self.state);
        s.check(FsOp::Open)?;
        s.adopt(path);
        let file = how.open(path)?;
        let inode = match s.current.get(path) {
            Some(&inode) if !fresh => inode,
            _ => {
                let inode = s.new_inode();
                s.synced.insert(inode, Vec::new());
                s.current.insert(path.to_path_buf(), inode);
                inode
            }
        };
        Ok(Arc::new(FaultyFile {
            file,
            inode,
            state: self.state.clone(),
        }))
    }
}

impl Disk for FaultyDisk {
    fn create_new(&self, path: &Path) -> std::io::Result<Arc<dyn DiskFile>> {
        let mut how = OpenOptions::new();
        how.create_new(true).read(true).append(true);
        self.open(path, &how, true)
    }

    fn create(&self, path: &Path) -> std::io::Result<Arc<dyn DiskFile>> {
        let mut how = OpenOptions::new();
        how.create(true).truncate(true).read(true).write(true);
        // An existing file keeps its inode: its synced content stays until a sync.
        self.open(path, &how, false)
    }

    fn open_append(&self, path: &Path) -> std::io::Result<Arc<dyn DiskFile>> {
        let mut how = OpenOptions::new();
        how.read(true).append(true);
        self.open(path, &how, false)
    }

    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        let mut s = lock(&self.state);
        s.check(FsOp::Rename)?;
        s.adopt(from);
        s.adopt(to);
        std::fs::rename(from, to)?;
        if let Some(inode) = s.current.remove(from) {
            s.current.insert(to.to_path_buf(), inode);
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        let mut s = lock(&self.state);
        s.check(FsOp::Remove)?;
        s.adopt(path);
        std::fs::remove_file(path)?;
        s.current.remove(path);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        let mut s = lock(&self.state);
        s.check(FsOp::SyncDir)?;
        let paths: Vec<PathBuf> = s
            .durable
            .keys()
            .chain(s.current.keys())
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect();
        for path in paths {
            let inode = s.current.get(&path).copied();
            s.durable.insert(path, inode);
        }
        Ok(())
    }
}

/// A file opened through a [`FaultyDisk`].
#[derive(Debug)]
struct FaultyFile {
    file: File,
    inode: u64,
    state: Arc<Shared>,
}

impl FaultyFile {
    fn sync(&self) -> std::io::Result<()> {
        let mut s = lock(&self.state);
        while s.syncs_held && !s.off {
            s = self
                .state
                .released
                .wait(s)
                .unwrap_or_else(|e| e.into_inner());
        }
        s.check(FsOp::Sync)?;
        let len = self.file.metadata()?.len();
        let mut content = vec![0; usize::try_from(len).map_err(std::io::Error::other)?];
        self.file.read_exact_at(&mut content, 0)?;
        s.synced.insert(self.inode, content);
        Ok(())
    }
}

impl DiskFile for FaultyFile {
    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        let mut s = lock(&self.state);
        if let Err(e) = s.check(FsOp::Write) {
            // A full disk often takes part of a write before it refuses the rest: half of
            // the first slice goes in, so the store sees a torn write as well as an error.
            if let Some(first) = bufs.first().filter(|_| !s.off) {
                let _ = (&self.file).write(&first[..first.len() / 2]);
            }
            return Err(e);
        }
        drop(s);
        Write::write_vectored(&mut &self.file, bufs)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.sync()
    }

    fn sync_all(&self) -> std::io::Result<()> {
        self.sync()
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        lock(&self.state).check(FsOp::SetLen)?;
        self.file.set_len(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("minimq-faulty-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_power_loss_drops_unsynced_tails_and_unsynced_directory_entries() {
        let d = dir("power");
        let disk = FaultyDisk::new(1);
        let a = disk.create_new(&d.join("a")).unwrap();
        a.write_all(b"synced").unwrap();
        a.sync_data().unwrap();
        disk.sync_dir(&d).unwrap();
        a.write_all(b" and not").unwrap();
        let c = disk.create_new(&d.join("c")).unwrap();
        c.sync_data().unwrap();
        disk.sync_dir(&d).unwrap();
        let b = disk.create_new(&d.join("b")).unwrap();
        b.write_all(b"never in the directory").unwrap();
        b.sync_data().unwrap();
        disk.remove_file(&d.join("c")).unwrap();
        disk.rename(&d.join("a"), &d.join("a2")).unwrap();
        assert_eq!(std::fs::read(d.join("a2")).unwrap(), b"synced and not");
        disk.power_off();
        assert!(
            disk.sync_dir(&d).is_err(),
            "nothing works with the power off"
        );
        disk.power_on().unwrap();
        assert_eq!(std::fs::read(d.join("a")).unwrap(), b"synced");
        assert!(!d.join("a2").exists(), "the rename was not synced");
        assert!(!d.join("b").exists(), "b's entry was not synced");
        assert!(d.join("c").exists(), "the deletion was not synced");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_held_sync_waits_until_released_and_fails_at_a_power_loss() {
        let d = dir("held");
        let disk = FaultyDisk::new(4);
        let f = disk.create_new(&d.join("f")).unwrap();
        disk.sync_dir(&d).unwrap();
        let sync_in_thread = |f: &Arc<dyn DiskFile>| {
            let f = f.clone();
            std::thread::spawn(move || f.sync_data())
        };
        f.write_all(b"one").unwrap();
        disk.hold_syncs();
        let syncer = sync_in_thread(&f);
        disk.release_syncs();
        syncer.join().unwrap().unwrap();
        f.write_all(b" two").unwrap();
        disk.hold_syncs();
        let syncer = sync_in_thread(&f);
        // Held: the sync has not happened, whenever the thread got to it.
        disk.power_off();
        assert!(syncer.join().unwrap().is_err(), "the power went off");
        disk.power_on().unwrap();
        assert_eq!(std::fs::read(d.join("f")).unwrap(), b"one");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn faults_fire_as_asked_and_heal() {
        let d = dir("faults");
        let disk = FaultyDisk::new(2);
        let f = disk.create_new(&d.join("f")).unwrap();
        disk.fail_once(FsOp::Sync, 1, Fault::Io);
        assert!(f.sync_data().is_ok());
        let e = f.sync_data().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(rustix::io::Errno::IO.raw_os_error()));
        assert!(f.sync_data().is_ok(), "once only");
        disk.fail(&[FsOp::Write], Fault::NoSpace);
        let e = f.write_all(b"0123456789").unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(rustix::io::Errno::NOSPC.raw_os_error())
        );
        assert_eq!(
            std::fs::read(d.join("f")).unwrap(),
            b"01234",
            "a torn write"
        );
        disk.fail(&[FsOp::Open], Fault::TooManyFiles);
        assert!(disk.create_new(&d.join("g")).is_err());
        disk.heal();
        f.write_all(b"!").unwrap();
        assert!(disk.create_new(&d.join("g")).is_ok());
        assert_eq!(disk.injected(), 3);
        let _ = std::fs::remove_dir_all(&d);
    }
}
