//! Resource alarms: RabbitMQ's memory and free-disk alarms.
//!
//! [`Alarms`] owns the alarm state and the latest readings; a monitor thread
//! (`minimq-alarms`, started by [`Alarms::start_monitor`]) owns the sampling: the broker's
//! resident memory every [`MEMORY_SAMPLE`], the free space of the data directory's
//! filesystem every [`DISK_SAMPLE`]. It raises an alarm when memory in use goes over the
//! high watermark or free space under the limit, clears it when the reading is back on the
//! right side, and logs both. The disk alarm has a second source: the message store
//! cannot write or sync its log (a full disk the free-space reading has not caught, an
//! I/O error, no file descriptor), followed by [`Alarms::follow_store_faults`]; it is on
//! while either source is.
//!
//! Before the alarm, memory pressure: past [`PAGING_RATIO`] of the watermark the monitor
//! turns the store's [`Pressure`] signal on (given by [`Alarms::page_with`]), and queues
//! page their messages out to the log, so that transient messages are bounded by disk,
//! not by the watermark; under it again, off.
//!
//! Readers: a connection that publishes checks [`Alarms::any`] (one atomic load) and
//! stops reading its socket while it is set, waiting on [`Alarms::subscribe`] for the
//! change; the management API reads [`Alarms::snapshot`] for its health checks, the
//! overview and `/api/nodes`. Nothing here blocks: the thread does the file reads.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Watermark;
use crate::store::Pressure;

/// Queues page out past this fraction of the memory high watermark: RabbitMQ 3.10's
/// `vm_memory_high_watermark_paging_ratio`. The other half is for what paging cannot
/// move: each queued message's 64 octets of index (96 MB for the 1.5 M messages of a
/// 1.5 GB flood of 1 KiB ones under a 200 MiB watermark) and the ready list's growth;
/// the memory paging frees is handed back while under pressure ([`RECLAIM_EVERY`]), so
/// such a flood is blocked for moments, not for good. A quarter paged the in-memory
/// backlog of an ordinary burst on a large machine (2.5 GB of 16-byte messages under
/// a 9.6 GB watermark), writing and reading back what memory could hold.
pub const PAGING_RATIO: f64 = 0.5;

/// How often resident memory is sampled. A read of `/proc/self/statm` costs a few
/// microseconds; at loopback publish rates (a few hundred MB/s) 50 ms lets a flood go at
/// most some ten megabytes past the watermark before publishers stop being read.
pub const MEMORY_SAMPLE: Duration = Duration::from_millis(50);
/// How often free disk space is sampled (one `statvfs`). Disk fills far more slowly than
/// memory: the 50 MB default limit is many seconds of writing away at any rate the log
/// sustains.
pub const DISK_SAMPLE: Duration = Duration::from_millis(500);

/// While memory is under pressure, how often the process is asked to hand the memory it
/// freed back to the operating system ([`set_memory_reclaim`]): often enough that the
/// memory paging frees counts as free within a fraction of a second, and so the alarm it
/// raised clears, seldom enough that the allocator's collection (a walk of its free
/// pages) costs nothing measurable.
pub const RECLAIM_EVERY: Duration = Duration::from_millis(200);

/// How the process hands freed memory back to the operating system (see
/// [`set_memory_reclaim`]).
static RECLAIM: OnceLock<fn()> = OnceLock::new();

/// Sets how the process hands the memory it has freed back to the operating system; the
/// monitor calls it every [`RECLAIM_EVERY`] while memory is under pressure (paging or the
/// memory alarm on), and once when the pressure ends. An allocator keeps freed pages for reuse (mimalloc until the thread
/// that owns them allocates again), so without this the memory that paging frees would
/// stay resident, the reading would stay over the watermark, and the alarm would block
/// publishers for good. The allocator is the process's, so is the hook: set once, by the
/// program that chose the allocator (`minimq-server`); without it nothing is asked.
pub fn set_memory_reclaim(reclaim: fn()) {
    let _ = RECLAIM.set(reclaim);
}

/// Whether the monitor asks for memory back after its sample number `tick` (see
/// [`set_memory_reclaim`]): every `every`-th sample while memory is under pressure, and
/// once as the pressure ends (`was`: under pressure at the sample before).
fn reclaim_due(tick: u128, every: u128, was: bool, now: bool) -> bool {
    (now && tick.is_multiple_of(every)) || (was && !now)
}

/// A resource that can raise an alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// Resident memory over the high watermark.
    Memory,
    /// Free disk space under the limit.
    Disk,
}

impl Resource {
    /// RabbitMQ's name in health checks and alarm lists: `memory`, `disk space`.
    pub fn name(self) -> &'static str {
        match self {
            Resource::Memory => "memory",
            Resource::Disk => "disk space",
        }
    }

    /// RabbitMQ's `connection.blocked` reason: `low on memory`, `low on disk`.
    pub fn blocked_reason(self) -> &'static str {
        match self {
            Resource::Memory => "low on memory",
            Resource::Disk => "low on disk",
        }
    }
}

/// Which alarms are on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlarmSet {
    /// The memory alarm.
    pub memory: bool,
    /// The disk alarm.
    pub disk: bool,
}

impl AlarmSet {
    /// Any alarm on.
    pub fn any(self) -> bool {
        self.memory || self.disk
    }

    /// The alarms on, memory first (the order RabbitMQ lists them in).
    pub fn resources(self) -> impl Iterator<Item = Resource> {
        [(self.memory, Resource::Memory), (self.disk, Resource::Disk)]
            .into_iter()
            .filter_map(|(on, r)| on.then_some(r))
    }

    /// The `connection.blocked` reason: the first alarm's (RabbitMQ names one).
    pub fn blocked_reason(self) -> Option<&'static str> {
        self.resources().next().map(Resource::blocked_reason)
    }
}

/// The alarms and the readings they come from, as the management API shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Which alarms are on.
    pub alarms: AlarmSet,
    /// Resident memory of the broker process, octets (0 before the first sample or where
    /// it cannot be read).
    pub mem_used: u64,
    /// The memory high watermark, octets (0: no memory alarm).
    pub mem_limit: u64,
    /// Free space on the data directory's filesystem, octets (0 when there is none).
    pub disk_free: u64,
    /// The free disk limit, octets (0: no disk alarm).
    pub disk_free_limit: u64,
}

/// Where readings come from: the real process and filesystem, or a test's numbers.
pub trait Probe: Send + 'static {
    /// Memory the broker uses, octets.
    fn memory_used(&mut self) -> Option<u64>;
    /// Free space available to the broker on the filesystem holding `dir`, octets.
    fn disk_free(&mut self, dir: &Path) -> Option<u64>;
}

/// Readings from `/proc/self/statm` and `statvfs`.
#[derive(Debug, Default)]
pub struct SystemProbe;

impl Probe for SystemProbe {
    fn memory_used(&mut self) -> Option<u64> {
        resident_memory()
    }

    fn disk_free(&mut self, dir: &Path) -> Option<u64> {
        let st = rustix::fs::statvfs(dir).ok()?;
        Some(st.f_bavail.saturating_mul(st.f_frsize))
    }
}

/// Resident memory of this process: the second field of `/proc/self/statm`, in pages.
pub fn resident_memory() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages.saturating_mul(rustix::param::page_size() as u64))
}

/// Memory the broker may count on: the machine's, or its cgroup's limit when lower (a
/// container), as RabbitMQ computes `total_memory`.
pub fn available_memory() -> Option<u64> {
    let machine = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    });
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .filter_map(|s| s.trim().parse::<u64>().ok())
    .min();
    match (machine, cgroup) {
        (Some(m), Some(c)) => Some(m.min(c)),
        (m, c) => m.or(c),
    }
}

/// The memory alarm's limit for `watermark`: a fraction of [`available_memory`], or as
/// given. 0 (no memory alarm) when the fraction has nothing to apply to.
pub fn memory_limit(watermark: Watermark) -> u64 {
    match watermark {
        Watermark::Absolute(n) => n,
        Watermark::Fraction(f) => available_memory().map_or(0, |total| (total as f64 * f) as u64),
    }
}

/// The alarm state, shared by the monitor thread, the connections and the API.
#[derive(Debug)]
pub struct Alarms {
    /// Any alarm on: what a publishing connection checks, one load per read.
    any: AtomicBool,
    memory: AtomicBool,
    /// Free space is under the limit.
    disk_low: AtomicBool,
    /// The message store cannot write or sync.
    store_fault: AtomicBool,
    mem_used: AtomicU64,
    mem_limit: AtomicU64,
    disk_free: AtomicU64,
    disk_free_limit: AtomicU64,
    /// A memory reading has been taken (`mem_used` is one).
    mem_sampled: AtomicBool,
    /// A free-space reading has been taken (`disk_free` is one).
    disk_sampled: AtomicBool,
    /// Changes, for connections waiting on an alarm to clear.
    changes: watch::Sender<AlarmSet>,
    /// Set by [`Alarms::stop_monitor`]: the thread exits at its next sample.
    stopped: AtomicBool,
    /// The store's paging signal, when there is a store ([`Alarms::page_with`]).
    pressure: std::sync::OnceLock<Arc<Pressure>>,
}

impl Alarms {
    /// No alarm on, with the given limits (octets; 0 disables that alarm).
    pub fn new(mem_limit: u64, disk_free_limit: u64) -> Alarms {
        Alarms {
            any: AtomicBool::new(false),
            memory: AtomicBool::new(false),
            disk_low: AtomicBool::new(false),
            store_fault: AtomicBool::new(false),
            mem_used: AtomicU64::new(0),
            mem_limit: AtomicU64::new(mem_limit),
            disk_free: AtomicU64::new(0),
            disk_free_limit: AtomicU64::new(disk_free_limit),
            mem_sampled: AtomicBool::new(false),
            disk_sampled: AtomicBool::new(false),
            changes: watch::channel(AlarmSet::default()).0,
            stopped: AtomicBool::new(false),
            pressure: std::sync::OnceLock::new(),
        }
    }

    /// Any alarm on. One relaxed load: cheap enough for every read of a publisher.
    #[inline]
    pub fn any(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    /// Which alarms are on.
    pub fn current(&self) -> AlarmSet {
        AlarmSet {
            memory: self.memory.load(Ordering::Relaxed),
            disk: self.disk_low.load(Ordering::Relaxed) || self.store_fault.load(Ordering::Relaxed),
        }
    }

    /// Alarms and readings.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            alarms: self.current(),
            mem_used: self.mem_used.load(Ordering::Relaxed),
            mem_limit: self.mem_limit.load(Ordering::Relaxed),
            disk_free: self.disk_free.load(Ordering::Relaxed),
            disk_free_limit: self.disk_free_limit.load(Ordering::Relaxed),
        }
    }

    /// A receiver that sees every change of the alarm set.
    pub fn subscribe(&self) -> watch::Receiver<AlarmSet> {
        self.changes.subscribe()
    }

    /// Sets the memory high watermark, octets (0: no memory alarm). The alarm follows at
    /// once against the last reading (as `rabbitmqctl set_vm_memory_high_watermark`
    /// re-checks at once), and at every sample after.
    pub fn set_memory_limit(&self, octets: u64) {
        self.mem_limit.store(octets, Ordering::Relaxed);
        if self.mem_sampled.load(Ordering::Relaxed) {
            let used = self.mem_used.load(Ordering::Relaxed);
            self.set(Resource::Memory, octets > 0 && used > octets);
        }
        self.follow_paging();
    }

    /// Sets the free disk limit, octets (0: no disk alarm). The alarm follows at once
    /// against the last reading (as `rabbitmqctl set_disk_free_limit` re-checks at once),
    /// and at every sample after.
    pub fn set_disk_free_limit(&self, octets: u64) {
        self.disk_free_limit.store(octets, Ordering::Relaxed);
        if self.disk_sampled.load(Ordering::Relaxed) {
            let free = self.disk_free.load(Ordering::Relaxed);
            self.set(Resource::Disk, octets > 0 && free < octets);
        }
    }

    /// Drives `pressure` from the memory readings from now on (see the module docs).
    pub fn page_with(&self, pressure: Arc<Pressure>) {
        let _ = self.pressure.set(pressure);
        self.follow_paging();
    }

    /// Turns the paging signal on while memory in use is over [`PAGING_RATIO`] of the
    /// watermark (never without a memory watermark or a reading).
    fn follow_paging(&self) {
        let Some(pressure) = self.pressure.get() else {
            return;
        };
        let limit = self.mem_limit.load(Ordering::Relaxed);
        let used = self.mem_used.load(Ordering::Relaxed);
        let sampled = self.mem_sampled.load(Ordering::Relaxed);
        pressure.set(sampled && limit > 0 && used as f64 > limit as f64 * PAGING_RATIO);
    }

    /// Whether memory is under pressure: the paging signal is on (memory over
    /// [`PAGING_RATIO`] of the watermark) or the memory alarm is.
    fn under_pressure(&self) -> bool {
        self.pressure.get().is_some_and(|p| p.on()) || self.memory.load(Ordering::Relaxed)
    }

    /// Raises or clears `resource`'s alarm, logging and announcing a change.
    pub fn set(&self, resource: Resource, on: bool) {
        let flag = match resource {
            Resource::Memory => &self.memory,
            Resource::Disk => &self.disk_low,
        };
        if flag.swap(on, Ordering::Relaxed) == on {
            return;
        }
        let snap = self.snapshot();
        match (resource, on) {
            (Resource::Memory, true) => tracing::warn!(
                used = snap.mem_used,
                limit = snap.mem_limit,
                "memory alarm set: memory in use is over the high watermark; publishers are blocked"
            ),
            (Resource::Memory, false) => tracing::info!(
                used = snap.mem_used,
                limit = snap.mem_limit,
                "memory alarm cleared"
            ),
            (Resource::Disk, true) => tracing::warn!(
                free = snap.disk_free,
                limit = snap.disk_free_limit,
                "disk alarm set: free disk space is under the limit; publishers are blocked"
            ),
            (Resource::Disk, false) => tracing::info!(
                free = snap.disk_free,
                limit = snap.disk_free_limit,
                "disk alarm cleared"
            ),
        }
        self.announce();
    }

    /// Raises or clears the disk alarm's second source: the message store cannot write
    /// or sync its log.
    pub fn set_store_fault(&self, on: bool) {
        if self.store_fault.swap(on, Ordering::Relaxed) == on {
            return;
        }
        if on {
            tracing::warn!("disk alarm set: the message store cannot write or sync its log; publishers are blocked");
        } else {
            tracing::info!("the message store writes again: its disk alarm source is cleared");
        }
        self.announce();
    }

    /// Publishes the alarm set after a change of one of its sources.
    fn announce(&self) {
        let set = self.current();
        self.any.store(set.any(), Ordering::Relaxed);
        self.changes
            .send_if_modified(|old| std::mem::replace(old, set) != set);
    }

    /// Keeps the store-fault source in step with `faults` (the store's
    /// [`crate::store::Store::faults`]) from a task of its own, which ends with the store.
    pub fn follow_store_faults(self: &Arc<Self>, mut faults: watch::Receiver<bool>) {
        self.set_store_fault(*faults.borrow_and_update());
        let alarms = Arc::downgrade(self);
        tokio::spawn(async move {
            while faults.changed().await.is_ok() {
                let on = *faults.borrow_and_update();
                let Some(alarms) = alarms.upgrade() else {
                    return;
                };
                alarms.set_store_fault(on);
            }
        });
    }

    /// One round of checks with `probe`: memory always, disk when `disk_dir` is given.
    pub fn sample(&self, probe: &mut dyn Probe, disk_dir: Option<&Path>) {
        if let Some(used) = probe.memory_used() {
            self.mem_used.store(used, Ordering::Relaxed);
            self.mem_sampled.store(true, Ordering::Relaxed);
            let limit = self.mem_limit.load(Ordering::Relaxed);
            self.set(Resource::Memory, limit > 0 && used > limit);
            self.follow_paging();
        }
        if let Some(dir) = disk_dir {
            if let Some(free) = probe.disk_free(dir) {
                self.disk_free.store(free, Ordering::Relaxed);
                self.disk_sampled.store(true, Ordering::Relaxed);
                let limit = self.disk_free_limit.load(Ordering::Relaxed);
                self.set(Resource::Disk, limit > 0 && free < limit);
            }
        }
    }

    /// Samples once at once (so a broker that starts out of memory or disk is blocked
    /// from its first publish), then starts the `minimq-alarms` thread, which samples
    /// until [`Alarms::stop_monitor`] or until the alarms are dropped. `data_dir`: where
    /// free space is measured; `None` (an in-memory broker) has no disk alarm.
    pub fn start_monitor(
        self: &Arc<Self>,
        mut probe: Box<dyn Probe>,
        data_dir: Option<PathBuf>,
    ) -> std::io::Result<()> {
        self.sample(probe.as_mut(), data_dir.as_deref());
        let weak: Weak<Alarms> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("minimq-alarms".into())
            .spawn(move || {
                let disk_every = (DISK_SAMPLE.as_millis() / MEMORY_SAMPLE.as_millis()).max(1);
                let reclaim_every = (RECLAIM_EVERY.as_millis() / MEMORY_SAMPLE.as_millis()).max(1);
                let mut tick: u128 = 0;
                let mut paging = false;
                loop {
                    std::thread::sleep(MEMORY_SAMPLE);
                    let Some(alarms) = weak.upgrade() else { return };
                    if alarms.stopped.load(Ordering::Relaxed) {
                        return;
                    }
                    tick += 1;
                    let dir = data_dir
                        .as_deref()
                        .filter(|_| tick.is_multiple_of(disk_every));
                    alarms.sample(probe.as_mut(), dir);
                    let now = alarms.under_pressure();
                    if reclaim_due(tick, reclaim_every, paging, now) {
                        if let Some(reclaim) = RECLAIM.get() {
                            reclaim();
                        }
                    }
                    paging = now;
                }
            })
            .map(drop)
    }

    /// Stops the monitor thread (at its next sample).
    pub fn stop_monitor(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Readings a test sets.
    #[derive(Clone, Default)]
    struct Fixed(Arc<Mutex<(Option<u64>, Option<u64>)>>);

    impl Probe for Fixed {
        fn memory_used(&mut self) -> Option<u64> {
            self.0.lock().unwrap().0
        }
        fn disk_free(&mut self, _: &Path) -> Option<u64> {
            self.0.lock().unwrap().1
        }
    }

    /// A limit set at run time is checked against the last reading at once, as
    /// `rabbitmqctl set_disk_free_limit` does: a publish made right after is blocked. Before
    /// any reading there is nothing to compare (no data directory: no disk reading at all).
    #[test]
    fn a_limit_set_at_run_time_applies_to_the_last_reading_at_once() {
        let alarms = Alarms::new(0, 0);
        alarms.set_disk_free_limit(u64::MAX);
        alarms.set_memory_limit(1);
        assert!(!alarms.any(), "no reading yet");
        let mut probe = Fixed::default();
        *probe.0.lock().unwrap() = (Some(5000), Some(1000));
        alarms.sample(&mut probe, Some(Path::new("/")));
        assert!(alarms.current().disk && alarms.current().memory);
        alarms.set_disk_free_limit(500);
        assert!(!alarms.current().disk, "1000 free is over a limit of 500");
        alarms.set_disk_free_limit(2000);
        assert!(alarms.current().disk);
        alarms.set_memory_limit(10_000);
        assert!(!alarms.current().memory, "5000 used is under 10000");
        alarms.set_memory_limit(0);
        assert!(!alarms.current().memory, "0 disables");
    }

    #[test]
    fn memory_over_the_watermark_raises_the_alarm_and_under_clears_it() {
        let alarms = Alarms::new(1000, 0);
        let mut probe = Fixed::default();
        let mut rx = alarms.subscribe();
        probe.0.lock().unwrap().0 = Some(999);
        alarms.sample(&mut probe, None);
        assert!(!alarms.any());
        probe.0.lock().unwrap().0 = Some(1001);
        alarms.sample(&mut probe, None);
        assert!(alarms.any());
        assert!(rx.has_changed().unwrap());
        assert_eq!(
            *rx.borrow_and_update(),
            AlarmSet {
                memory: true,
                disk: false
            }
        );
        assert_eq!(alarms.snapshot().mem_used, 1001);
        probe.0.lock().unwrap().0 = Some(10);
        alarms.sample(&mut probe, None);
        assert!(!alarms.any());
        assert!(!rx.borrow_and_update().memory);
    }

    #[test]
    fn free_disk_under_the_limit_raises_the_disk_alarm_only_with_a_directory() {
        let alarms = Alarms::new(0, 50);
        let mut probe = Fixed::default();
        probe.0.lock().unwrap().1 = Some(49);
        alarms.sample(&mut probe, None);
        assert!(!alarms.any(), "no directory: no disk reading");
        alarms.sample(&mut probe, Some(Path::new("/")));
        assert_eq!(
            alarms.current(),
            AlarmSet {
                memory: false,
                disk: true
            }
        );
        assert_eq!(alarms.current().blocked_reason(), Some("low on disk"));
        probe.0.lock().unwrap().1 = Some(50);
        alarms.sample(&mut probe, Some(Path::new("/")));
        assert!(!alarms.any());
    }

    /// The store's fault is the disk alarm's second source: the alarm is on while either
    /// the free space is low or the store cannot write, and clears only when both are over.
    #[test]
    fn a_store_fault_raises_the_disk_alarm_beside_the_free_space_reading() {
        let alarms = Alarms::new(0, 50);
        let mut rx = alarms.subscribe();
        alarms.set_store_fault(true);
        assert_eq!(alarms.current().blocked_reason(), Some("low on disk"));
        assert!(rx.borrow_and_update().disk);
        let mut probe = Fixed::default();
        probe.0.lock().unwrap().1 = Some(10);
        alarms.sample(&mut probe, Some(Path::new("/")));
        alarms.set_store_fault(false);
        assert!(alarms.current().disk, "free space is still low");
        probe.0.lock().unwrap().1 = Some(100);
        alarms.sample(&mut probe, Some(Path::new("/")));
        assert!(!alarms.any());
        assert!(!rx.borrow_and_update().disk);
    }

    #[test]
    fn a_zero_limit_disables_the_alarm_and_a_new_limit_applies_at_the_next_sample() {
        let alarms = Alarms::new(0, 0);
        let mut probe = Fixed::default();
        *probe.0.lock().unwrap() = (Some(u64::MAX), Some(0));
        alarms.sample(&mut probe, Some(Path::new("/")));
        assert!(!alarms.any());
        alarms.set_memory_limit(1);
        alarms.sample(&mut probe, None);
        assert_eq!(alarms.current().blocked_reason(), Some("low on memory"));
        alarms.set_disk_free_limit(1);
        alarms.sample(&mut probe, Some(Path::new("/")));
        let names: Vec<_> = alarms.current().resources().map(Resource::name).collect();
        assert_eq!(names, ["memory", "disk space"]);
    }

    #[test]
    fn the_system_probe_reads_this_process_and_this_filesystem() {
        let mut probe = SystemProbe;
        let rss = probe.memory_used().expect("resident memory readable");
        assert!(
            rss > 1024 * 1024,
            "a test process uses more than 1 MiB: {rss}"
        );
        let free = probe
            .disk_free(&std::env::temp_dir())
            .expect("free space readable");
        assert!(free > 0);
        let total = available_memory().expect("total memory readable");
        assert!(total > rss);
        assert_eq!(memory_limit(Watermark::Absolute(7)), 7);
        assert!(memory_limit(Watermark::Fraction(0.5)) <= total / 2 + 1);
    }

    #[test]
    fn the_monitor_thread_raises_the_alarm_and_stops() {
        let alarms = Arc::new(Alarms::new(1, 0));
        let mut rx = alarms.subscribe();
        alarms
            .start_monitor(Box::new(SystemProbe), None)
            .expect("thread starts");
        // The first sample is taken before start_monitor returns.
        assert!(alarms.any());
        assert!(rx.borrow_and_update().memory);
        alarms.set_memory_limit(u64::MAX);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), rx.changed())
                .await
                .expect("the monitor clears the alarm at its next sample")
                .unwrap();
        });
        assert!(!alarms.any());
        alarms.stop_monitor();
    }

    /// Paging starts past half the watermark, before the alarm, and stops under it.
    #[test]
    fn memory_past_half_the_watermark_turns_paging_on_and_under_it_off() {
        let alarms = Alarms::new(1000, 0);
        let pressure = Arc::new(Pressure::default());
        alarms.page_with(pressure.clone());
        let mut probe = Fixed::default();
        probe.0.lock().unwrap().0 = Some(500);
        alarms.sample(&mut probe, None);
        assert!(!pressure.on(), "half is not past half");
        probe.0.lock().unwrap().0 = Some(501);
        alarms.sample(&mut probe, None);
        assert!(pressure.on());
        assert!(!alarms.any(), "paging comes before the alarm");
        probe.0.lock().unwrap().0 = Some(400);
        alarms.sample(&mut probe, None);
        assert!(!pressure.on());
    }

    /// Memory is under pressure while paging or the memory alarm is on.
    #[test]
    fn memory_is_under_pressure_while_paging_or_the_alarm_is_on() {
        let alarms = Alarms::new(1000, 0);
        let mut probe = Fixed::default();
        probe.0.lock().unwrap().0 = Some(2000);
        alarms.sample(&mut probe, None);
        assert!(alarms.under_pressure(), "the alarm, with no paging signal");
        let alarms = Alarms::new(1000, 0);
        alarms.page_with(Arc::new(Pressure::default()));
        probe.0.lock().unwrap().0 = Some(600);
        alarms.sample(&mut probe, None);
        assert!(alarms.under_pressure(), "paging, before the alarm");
        probe.0.lock().unwrap().0 = Some(100);
        alarms.sample(&mut probe, None);
        assert!(!alarms.under_pressure());
    }

    /// Under pressure the monitor asks for memory back every few samples, again and again
    /// (the memory paging frees must count as free for the alarm to clear), once more as
    /// the pressure ends, and never without pressure.
    #[test]
    fn memory_is_asked_back_every_few_samples_under_pressure_and_once_at_its_end() {
        let every = 4;
        let pressure = [
            false, false, true, true, true, true, true, true, true, true, false, false, false,
            false, false,
        ];
        let mut was = false;
        let mut asked = Vec::new();
        for (tick, &now) in pressure.iter().enumerate() {
            let tick = tick as u128 + 1;
            if reclaim_due(tick, every, was, now) {
                asked.push(tick);
            }
            was = now;
        }
        assert_eq!(asked, [4, 8, 11]);
    }
}
