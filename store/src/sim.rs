//! [`SimDisk`]: an in-memory [`Storage`] with a power-loss and fault model, so that tests can
//! crash the store at any point and check what recovery finds — something a test on a real
//! file system cannot do on demand. It owns the simulated disk: every directory and file,
//! what a reader sees now, and, apart from that, what would survive a power loss (the writes
//! a successful `fdatasync` covered, the entries a directory `fsync` covered). A crash keeps
//! the durable state and drops, tears or partly keeps everything else, as [`CrashMode`]
//! says; it can also fail syncs (with the `fsyncgate` semantics Linux has: the failed writes
//! are forgotten, not retried), fail writes half-way, run out of space, and fail every
//! operation from a chosen one on (with a crash after, a power cut at that exact point of
//! a multi-step change, such as an advance of the log's base). Modelled on
//! TigerBeetle's `src/testing/storage.zig`. Everything it decides comes from one PRNG seeded
//! by [`SimDisk::new`], and nothing depends on hash order, so the same seed and the same
//! calls give the same bytes — a failing seed replays.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::storage::{Storage, StorageFile};

/// The unit a disk persists atomically: [`CrashMode::KeepSome`] keeps or drops whole sectors.
const SECTOR: u64 = 512;
/// The unit file contents are stored in. Files are sparse — a page never written is zeros
/// and takes no memory — so a preallocated 256 MiB segment costs only what was written.
const PAGE: u64 = 4096;
/// `EIO`, what a failed write or sync gives.
const EIO: i32 = 5;
/// `ENOSPC`, what [`crate::storage::is_disk_full`] recognises.
const ENOSPC: i32 = 28;

/// An in-memory disk with a power-loss and fault model, for deterministic tests. Cheap to
/// clone: clones share the one disk.
///
/// Each file keeps what reads see apart from what is durable; [`StorageFile::sync_data`]
/// makes the writes since the last sync durable, [`Storage::sync_dir`] the directory's
/// entries. [`SimDisk::crash`] is a power loss: the durable state stays, the rest is
/// dropped, torn or partly kept.
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

/// What a crash does with what was not synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Every write not yet synced is lost.
    DropUnsynced,
    /// Unsynced writes persist in order up to a random one, which is torn at a random byte;
    /// the rest are lost. Chosen per file; a file with no unsynced write (only size
    /// changes or allocations) keeps a random prefix of them.
    TornWrite,
    /// Each unsynced write persists or not independently, at 512-byte sector granularity
    /// (a write is split into sectors aligned to file offsets and each sector persists with
    /// probability 1/2); each unsynced size change or allocation persists with probability
    /// 1/2.
    KeepSome,
    /// One of the three, chosen by the disk's PRNG.
    Any,
}

/// How many faults of each class a [`SimDisk`] injected so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Calls to [`SimDisk::crash`].
    pub crashes: u64,
    /// Unsynced operations a crash dropped in whole or in part: file writes, size changes,
    /// allocations, and directory entries (create, rename, remove) not covered by a
    /// directory sync.
    pub lost_writes: u64,
    /// Writes a crash tore ([`CrashMode::TornWrite`]): only a prefix of their bytes persisted.
    pub torn_writes: u64,
    /// `sync_data` calls failed by [`SimDisk::fail_next_syncs`].
    pub failed_syncs: u64,
    /// `write_all_at` calls failed by [`SimDisk::fail_next_writes`].
    pub failed_writes: u64,
    /// Writes and allocations refused for want of space (`ENOSPC`).
    pub disk_full: u64,
    /// Operations refused because [`SimDisk::fail_from`] said every one fails.
    pub failed_ops: u64,
}

impl SimDisk {
    /// An empty disk, unlimited in size, whose every random choice comes from `seed`.
    pub fn new(seed: u64) -> SimDisk {
        SimDisk {
            state: Arc::new(Mutex::new(State {
                rng: Rng(seed),
                capacity: None,
                syncs_to_fail: 0,
                writes_to_fail: 0,
                failing_in: None,
                full_in: None,
                operations: 0,
                faults: FaultCounts::default(),
                generation: 0,
                next_inode: 0,
                inodes: BTreeMap::new(),
                dirs: BTreeMap::new(),
            })),
        }
    }

    /// The directory `name` (created, durably, on first use); stays valid across crashes.
    pub fn dir(&self, name: &str) -> Arc<dyn Storage> {
        self.lock().dirs.entry(name.to_owned()).or_default();
        Arc::new(SimDir {
            disk: self.clone(),
            name: name.to_owned(),
        })
    }

    /// Total bytes the disk holds; `None` = unlimited (the default). Lowering it below what
    /// is in use refuses growth from then on; nothing already there is removed. A crash can
    /// also leave more in use than the capacity (it may bring back a file that was removed,
    /// or the size of one that was cut); `free_bytes` is then 0.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.lock().capacity = bytes;
    }

    /// The next `n` [`StorageFile::sync_data`] calls fail (`EIO`), with `fsyncgate`
    /// semantics: the writes the failed sync covered are forgotten — reads still see them,
    /// but no later sync makes them durable and a crash reverts them. Replaces any count
    /// still armed.
    pub fn fail_next_syncs(&self, n: u32) {
        self.lock().syncs_to_fail = n;
    }

    /// The next `n` [`StorageFile::write_all_at`] calls fail (`EIO`) after writing a random
    /// prefix (possibly empty, never all) of their bytes. An armed failure comes before
    /// the space check (its prefix stops where the space does); an empty write neither
    /// fails nor uses one up. The prefix is unsynced, like any write. Replaces any count
    /// still armed.
    pub fn fail_next_writes(&self, n: u32) {
        self.lock().writes_to_fail = n;
    }

    /// From the `after`-th next operation that changes the disk on (0: the very next one),
    /// every such operation fails with `EIO` and changes nothing — a write, a size change,
    /// an allocation, a create, a rename, a remove, a directory sync — and every
    /// `sync_data` fails with `fsyncgate` semantics (see [`SimDisk::fail_next_syncs`]),
    /// until `None` or the next [`SimDisk::crash`]. Reads still work. Followed by a crash,
    /// it is a power cut at an exact point of whatever the store was doing (see
    /// [`SimDisk::operations`] to count the points); without one, a disk that failed for a
    /// while.
    pub fn fail_from(&self, after: Option<u64>) {
        self.lock().failing_in = after;
    }

    /// From the `after`-th next operation that changes the disk on (0: the very next one),
    /// the disk is full: its capacity becomes what is in use then (see
    /// [`SimDisk::set_capacity`], which `None` here does not undo; a crash disarms it). A
    /// full disk at an exact point of a multi-step change: which of its files finds no room.
    pub fn full_from(&self, after: Option<u64>) {
        self.lock().full_in = after;
    }

    /// How many operations that change the disk were made (or refused) so far.
    pub fn operations(&self) -> u64 {
        self.lock().operations
    }

    /// Power loss now: what was synced stays; each file's unsynced operations are dropped,
    /// torn or partly kept as `mode` says, and a random prefix (in order) of each
    /// directory's entry changes since its last sync persists. Afterwards every
    /// [`StorageFile`] opened before fails every operation with an error of kind
    /// [`io::ErrorKind::StaleNetworkFileHandle`] (`ESTALE`) saying it is from before the
    /// crash; [`Storage`] handles from [`SimDisk::dir`] keep working and see the post-crash
    /// state, which is now all durable.
    pub fn crash(&self, mode: CrashMode) {
        let mut guard = self.lock();
        // Split the borrow: the PRNG and the counters are used while files are mutated.
        let st = &mut *guard;
        st.faults.crashes += 1;
        st.failing_in = None;
        st.full_in = None;
        let mode = match mode {
            CrashMode::Any => match st.rng.below(3) {
                0 => CrashMode::DropUnsynced,
                1 => CrashMode::TornWrite,
                _ => CrashMode::KeepSome,
            },
            mode => mode,
        };
        // Directories first: which files exist after the crash decides which survive.
        for dir in st.dirs.values_mut() {
            let pending = std::mem::take(&mut dir.pending);
            let keep = st.rng.below(pending.len() as u64 + 1) as usize;
            let mut entries = std::mem::take(&mut dir.durable);
            for op in &pending[..keep] {
                op.apply(&mut entries);
            }
            st.faults.lost_writes += (pending.len() - keep) as u64;
            dir.current = entries.clone();
            dir.durable = entries;
        }
        // A file no directory names any more is gone for good (its handles die below).
        let reachable: BTreeSet<u64> = st
            .dirs
            .values()
            .flat_map(|d| d.current.values().copied())
            .collect();
        st.inodes.retain(|ino, _| reachable.contains(ino));
        for inode in st.inodes.values_mut() {
            inode.crash(mode, &mut st.rng, &mut st.faults);
        }
        st.generation += 1;
    }

    /// How many faults of each class were injected so far.
    pub fn faults(&self) -> FaultCounts {
        self.lock().faults
    }

    /// Bytes in use: the sum, over the files the directories name, of the larger of size and
    /// allocated space. A removed file's space is free at once, even while a handle to it
    /// is still open.
    pub fn used_bytes(&self) -> u64 {
        self.lock().used()
    }

    /// The disk's state. A panic elsewhere while it was held leaves it consistent enough
    /// (every mutation is complete before anything can fail), so poisoning is ignored
    /// rather than turned into a second panic.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("SimDisk")
            .field("dirs", &st.dirs.keys().collect::<Vec<_>>())
            .field("capacity", &st.capacity)
            .field("faults", &st.faults)
            .finish_non_exhaustive()
    }
}

/// Everything a [`SimDisk`] holds, under its one mutex.
struct State {
    rng: Rng,
    capacity: Option<u64>,
    syncs_to_fail: u32,
    writes_to_fail: u32,
    /// Operations left before every one fails ([`SimDisk::fail_from`]).
    failing_in: Option<u64>,
    /// Operations left before the disk is full ([`SimDisk::full_from`]).
    full_in: Option<u64>,
    /// Operations that change the disk, so far.
    operations: u64,
    faults: FaultCounts,
    /// Bumped by every crash; a file handle is valid only in the generation it was opened in.
    generation: u64,
    next_inode: u64,
    /// Every file, named or not; the ones no directory names (removed, or replaced by a
    /// rename) stay until a crash because a crash may bring their name back.
    inodes: BTreeMap<u64, Inode>,
    dirs: BTreeMap<String, Dir>,
}

impl State {
    fn used(&self) -> u64 {
        self.dirs
            .values()
            .flat_map(|d| d.current.values())
            .filter_map(|ino| self.inodes.get(ino))
            .fold(0u64, |sum, inode| {
                sum.saturating_add(inode.current.footprint())
            })
    }

    /// Counts an operation that changes the disk; `Err` (`EIO`) if [`SimDisk::fail_from`]
    /// says it fails, in which case it must change nothing.
    fn operation(&mut self) -> io::Result<()> {
        self.operations += 1;
        match &mut self.full_in {
            Some(0) => {
                self.capacity = Some(self.used());
                self.full_in = None;
            }
            Some(n) => *n -= 1,
            None => {}
        }
        match &mut self.failing_in {
            Some(0) => {
                self.faults.failed_ops += 1;
                Err(io::Error::from_raw_os_error(EIO))
            }
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Bytes that may still be taken.
    fn room(&self) -> u64 {
        match self.capacity {
            Some(capacity) => capacity.saturating_sub(self.used()),
            None => u64::MAX,
        }
    }

    /// The file behind `handle`, if the handle is from this side of the last crash.
    fn inode(&mut self, handle: &SimFile) -> io::Result<&mut Inode> {
        if handle.generation != self.generation {
            return Err(io::Error::new(
                io::ErrorKind::StaleNetworkFileHandle,
                format!(
                    "sim:{}/{}: this handle was opened before a simulated crash",
                    handle.dir, handle.name
                ),
            ));
        }
        // Inodes are only dropped at a crash, which also retired the handle: not reached.
        self.inodes.get_mut(&handle.inode).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("sim:{}/{}: the file is gone", handle.dir, handle.name),
            )
        })
    }
}

/// One file.
#[derive(Default)]
struct Inode {
    /// What reads see.
    current: FileState,
    /// What a crash keeps for sure: the replay of the operations a successful sync covered.
    /// Not a copy of `current` taken at a sync, because after a failed sync (`fsyncgate`)
    /// `current` holds writes that will never be durable.
    durable: FileState,
    /// The operations since the last sync, in order; a crash keeps some of them.
    pending: Vec<Op>,
}

impl Inode {
    /// Applies `op` to what reads see and remembers it for the next sync or crash.
    fn record(&mut self, op: Op) {
        self.current.apply(&op);
        self.pending.push(op);
    }

    /// Replaces both states with what a crash in `mode` leaves.
    fn crash(&mut self, mode: CrashMode, rng: &mut Rng, faults: &mut FaultCounts) {
        let pending = std::mem::take(&mut self.pending);
        let after = &mut self.durable;
        match mode {
            // `Any` was resolved to one of the others by `SimDisk::crash`.
            CrashMode::DropUnsynced | CrashMode::Any => {
                faults.lost_writes += pending.len() as u64;
            }
            CrashMode::TornWrite => {
                let writes: Vec<usize> = (0..pending.len())
                    .filter(|&i| matches!(pending[i], Op::Write { .. }))
                    .collect();
                if writes.is_empty() {
                    // Only size changes: nothing to tear, a prefix of them persists.
                    let keep = rng.below(pending.len() as u64 + 1) as usize;
                    pending[..keep].iter().for_each(|op| after.apply(op));
                    faults.lost_writes += (pending.len() - keep) as u64;
                } else {
                    let torn = writes[rng.below(writes.len() as u64) as usize];
                    pending[..torn].iter().for_each(|op| after.apply(op));
                    if let Op::Write { offset, bytes } = &pending[torn] {
                        // Never the whole write (it would not be torn); writes are never
                        // empty, so `below` has a range.
                        let n = rng.below(bytes.len() as u64) as usize;
                        after.data.write(&bytes[..n], *offset);
                    }
                    faults.torn_writes += 1;
                    faults.lost_writes += (pending.len() - torn - 1) as u64;
                }
            }
            CrashMode::KeepSome => {
                for op in &pending {
                    let lost = match op {
                        Op::Write { offset, bytes } => {
                            let mut lost = false;
                            let mut at = *offset;
                            let end = offset + bytes.len() as u64;
                            while at < end {
                                let sector_end = (at / SECTOR + 1).saturating_mul(SECTOR).min(end);
                                if rng.coin() {
                                    let from = (at - offset) as usize;
                                    let to = (sector_end - offset) as usize;
                                    after.data.write(&bytes[from..to], at);
                                } else {
                                    lost = true;
                                }
                                at = sector_end;
                            }
                            lost
                        }
                        Op::SetLen(_) | Op::Allocate(_) => {
                            let keep = rng.coin();
                            if keep {
                                after.apply(op);
                            }
                            !keep
                        }
                    };
                    faults.lost_writes += u64::from(lost);
                }
            }
        }
        self.current = self.durable.clone();
    }
}

/// A change to a file's contents, size or allocation, as recorded between syncs.
enum Op {
    /// Bytes written at an offset (never empty).
    Write { offset: u64, bytes: Vec<u8> },
    /// The size set (cut or extended with zeros).
    SetLen(u64),
    /// Space reserved for the first bytes (`fallocate` mode 0).
    Allocate(u64),
}

/// A file's contents, size and allocation, as reads see them or as they are durable.
#[derive(Clone, Default)]
struct FileState {
    data: Sparse,
    /// The high-water mark of `fallocate`: the first `allocated` bytes have space reserved.
    allocated: u64,
}

impl FileState {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Write { offset, bytes } => self.data.write(bytes, *offset),
            Op::SetLen(len) => {
                self.data.set_len(*len);
                // Linux frees the blocks past a truncation, preallocated or not.
                self.allocated = self.allocated.min(*len);
            }
            Op::Allocate(len) => {
                self.allocated = self.allocated.max(*len);
                if self.data.len < *len {
                    self.data.set_len(*len);
                }
            }
        }
    }

    /// The space the file takes: a file is counted as fully allocated up to its size (holes
    /// included), which is conservative and keeps the model simple.
    fn footprint(&self) -> u64 {
        self.data.len.max(self.allocated)
    }
}

/// File contents: a size and the pages ever written; a missing page reads as zeros.
/// Invariant: every byte at or past `len` in a stored page is zero, so growing the file
/// needs no zeroing.
#[derive(Clone, Default)]
struct Sparse {
    len: u64,
    pages: BTreeMap<u64, Box<[u8]>>,
}

impl Sparse {
    /// Copies `buf.len()` bytes from `offset`; the caller checked they are inside the file.
    fn read(&self, buf: &mut [u8], offset: u64) {
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let within = (at % PAGE) as usize;
            let n = (PAGE as usize - within).min(buf.len() - done);
            let dst = &mut buf[done..done + n];
            match self.pages.get(&(at / PAGE)) {
                Some(page) => dst.copy_from_slice(&page[within..within + n]),
                None => dst.fill(0),
            }
            done += n;
        }
    }

    /// Writes `bytes` at `offset`, growing the file if they reach past its end (an empty
    /// write changes nothing, as with `pwrite`). The caller checked the end fits in a u64.
    fn write(&mut self, bytes: &[u8], offset: u64) {
        if bytes.is_empty() {
            return;
        }
        let mut done = 0;
        while done < bytes.len() {
            let at = offset + done as u64;
            let within = (at % PAGE) as usize;
            let n = (PAGE as usize - within).min(bytes.len() - done);
            let page = self
                .pages
                .entry(at / PAGE)
                .or_insert_with(|| vec![0; PAGE as usize].into_boxed_slice());
            page[within..within + n].copy_from_slice(&bytes[done..done + n]);
            done += n;
        }
        self.len = self.len.max(offset + bytes.len() as u64);
    }

    fn set_len(&mut self, len: u64) {
        if len < self.len {
            // Keep the invariant: drop the pages wholly past the end, zero the cut one's tail.
            self.pages.split_off(&len.div_ceil(PAGE));
            if let Some(page) = self.pages.get_mut(&(len / PAGE)) {
                page[(len % PAGE) as usize..].fill(0);
            }
        }
        self.len = len;
    }
}

/// One directory.
#[derive(Default)]
struct Dir {
    /// Name → inode, as `list` and `open` see it.
    current: BTreeMap<String, u64>,
    /// Name → inode as of the last `sync_dir` (or crash).
    durable: BTreeMap<String, u64>,
    /// The entry changes since then, in order; a crash keeps a prefix of them.
    pending: Vec<DirOp>,
}

/// A change to a directory's entries.
enum DirOp {
    Create { name: String, inode: u64 },
    Rename { from: String, to: String },
    Remove { name: String },
}

impl DirOp {
    /// Replays the change. Each was valid on the entries it was made on, and a crash replays
    /// a prefix on the durable entries, which are those same entries.
    fn apply(&self, entries: &mut BTreeMap<String, u64>) {
        match self {
            DirOp::Create { name, inode } => {
                entries.insert(name.clone(), *inode);
            }
            DirOp::Rename { from, to } => {
                if let Some(inode) = entries.remove(from) {
                    entries.insert(to.clone(), inode);
                }
            }
            DirOp::Remove { name } => {
                entries.remove(name);
            }
        }
    }
}

/// A [`Storage`] handle on one directory of a [`SimDisk`]; it survives crashes.
struct SimDir {
    disk: SimDisk,
    name: String,
}

impl SimDir {
    /// Runs `f` on the state and this directory (which `SimDisk::dir` created and nothing
    /// removes).
    fn with<T>(&self, f: impl FnOnce(&mut State, &mut Dir) -> io::Result<T>) -> io::Result<T> {
        let mut guard = self.disk.lock();
        let st = &mut *guard;
        // Take the directory out so `f` can touch both it and the inodes.
        let Some(mut dir) = st.dirs.remove(&self.name) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: no such directory", self.describe()),
            ));
        };
        let out = f(st, &mut dir);
        st.dirs.insert(self.name.clone(), dir);
        out
    }

    /// Refuses what is not a plain file name, as [`crate::storage::FsStorage`] does.
    fn check_name(&self, name: &str) -> io::Result<()> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not a plain file name"),
            ));
        }
        Ok(())
    }

    fn not_found(&self, name: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{}/{name}: no such file", self.describe()),
        )
    }

    fn handle(&self, st: &State, inode: u64, name: &str) -> Arc<dyn StorageFile> {
        Arc::new(SimFile {
            disk: self.disk.clone(),
            inode,
            generation: st.generation,
            dir: self.name.clone(),
            name: name.to_owned(),
        })
    }
}

impl Storage for SimDir {
    fn open(&self, name: &str) -> io::Result<Arc<dyn StorageFile>> {
        self.check_name(name)?;
        self.with(|st, dir| match dir.current.get(name) {
            Some(&inode) => Ok(self.handle(st, inode, name)),
            None => Err(self.not_found(name)),
        })
    }

    fn create(&self, name: &str) -> io::Result<Arc<dyn StorageFile>> {
        self.check_name(name)?;
        self.with(|st, dir| {
            st.operation()?;
            let inode = match dir.current.get(name) {
                Some(&inode) => {
                    // O_TRUNC: the same file, emptied — a size change, durable with the
                    // file's next sync, not with the directory's.
                    if let Some(file) = st.inodes.get_mut(&inode) {
                        if file.current.footprint() > 0 {
                            file.record(Op::SetLen(0));
                        }
                    }
                    inode
                }
                None => {
                    let inode = st.next_inode;
                    st.next_inode += 1;
                    st.inodes.insert(inode, Inode::default());
                    dir.current.insert(name.to_owned(), inode);
                    dir.pending.push(DirOp::Create {
                        name: name.to_owned(),
                        inode,
                    });
                    inode
                }
            };
            Ok(self.handle(st, inode, name))
        })
    }

    fn list(&self) -> io::Result<Vec<String>> {
        self.with(|_, dir| Ok(dir.current.keys().cloned().collect()))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.check_name(name)?;
        self.with(|st, dir| {
            st.operation()?;
            if dir.current.remove(name).is_none() {
                return Err(self.not_found(name));
            }
            dir.pending.push(DirOp::Remove {
                name: name.to_owned(),
            });
            Ok(())
        })
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.check_name(from)?;
        self.check_name(to)?;
        self.with(|st, dir| {
            st.operation()?;
            let Some(&inode) = dir.current.get(from) else {
                return Err(self.not_found(from));
            };
            // rename(2) of a name onto itself does nothing.
            if from != to {
                dir.current.remove(from);
                dir.current.insert(to.to_owned(), inode);
                dir.pending.push(DirOp::Rename {
                    from: from.to_owned(),
                    to: to.to_owned(),
                });
            }
            Ok(())
        })
    }

    fn sync_dir(&self) -> io::Result<()> {
        self.with(|st, dir| {
            st.operation()?;
            dir.durable = dir.current.clone();
            dir.pending.clear();
            Ok(())
        })
    }

    fn free_bytes(&self) -> io::Result<u64> {
        let st = self.disk.lock();
        Ok(match st.capacity {
            Some(_) => st.room(),
            // Unlimited, but leave callers room to add to it without overflow.
            None => u64::MAX / 2,
        })
    }

    fn describe(&self) -> String {
        format!("sim:{}", self.name)
    }
}

/// A [`StorageFile`] handle on one file of a [`SimDisk`], valid until the next crash.
struct SimFile {
    disk: SimDisk,
    inode: u64,
    /// The crash generation it was opened in.
    generation: u64,
    /// Where it was opened, for messages.
    dir: String,
    name: String,
}

/// The end of `len` bytes at `offset`, or `InvalidInput` when it would not fit in a u64.
fn end_of(offset: u64, len: usize) -> io::Result<u64> {
    offset.checked_add(len as u64).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{len} bytes at offset {offset} end past the largest offset"),
        )
    })
}

impl StorageFile for SimFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut st = self.disk.lock();
        let file = st.inode(self)?;
        match end_of(offset, buf.len()) {
            Ok(end) if end <= file.current.data.len => {
                file.current.data.read(buf, offset);
                Ok(())
            }
            // The message FileExt::read_exact_at gives.
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "failed to fill whole buffer",
            )),
        }
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut guard = self.disk.lock();
        let st = &mut *guard;
        st.inode(self)?;
        let end = end_of(offset, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        st.operation()?;
        // The furthest a write may reach: growth past the file's footprint takes space,
        // writes inside it (its size or its allocation) never fail for want of it.
        let room = st.room();
        let limit = st.inode(self)?.current.footprint().saturating_add(room);
        if st.writes_to_fail > 0 {
            st.writes_to_fail -= 1;
            st.faults.failed_writes += 1;
            // A short write; on a nearly full disk it also stops where the space does.
            let n = st
                .rng
                .below(buf.len() as u64)
                .min(limit.saturating_sub(offset)) as usize;
            if n > 0 {
                st.inode(self)?.record(Op::Write {
                    offset,
                    bytes: buf[..n].to_vec(),
                });
            }
            return Err(io::Error::from_raw_os_error(EIO));
        }
        if end > limit {
            st.faults.disk_full += 1;
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        st.inode(self)?.record(Op::Write {
            offset,
            bytes: buf.to_vec(),
        });
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.disk.lock().inode(self)?.current.data.len)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.disk.lock();
        st.inode(self)?;
        st.operation()?;
        let file = st.inode(self)?;
        // Extending makes a hole, which takes no space on a real file system, so it is never
        // refused for space (the model still counts it in `used_bytes`).
        // Recorded only if it changes something (size, or allocation a cut releases), so
        // that a no-op is not counted as lost at a crash.
        if len != file.current.data.len || len < file.current.allocated {
            file.record(Op::SetLen(len));
        }
        Ok(())
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        let mut guard = self.disk.lock();
        let st = &mut *guard;
        st.inode(self)?;
        st.operation()?;
        let room = st.room();
        let file = st.inode(self)?;
        let footprint = file.current.footprint();
        if len > footprint && len - footprint > room {
            st.faults.disk_full += 1;
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        let file = st.inode(self)?;
        if len > file.current.allocated || len > file.current.data.len {
            file.record(Op::Allocate(len));
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut guard = self.disk.lock();
        let st = &mut *guard;
        st.inode(self)?;
        // Refused by `fail_from`, or an armed failure: the same fsyncgate either way.
        let refused = st.operation().is_err();
        if refused || st.syncs_to_fail > 0 {
            if !refused {
                st.syncs_to_fail -= 1;
                st.faults.failed_syncs += 1;
            }
            // fsyncgate: the kernel marks the failed pages clean and reports the error once;
            // the writes stay readable but a retried sync no longer covers them.
            st.inode(self)?.pending.clear();
            return Err(io::Error::from_raw_os_error(EIO));
        }
        let file = st.inode(self)?;
        for op in std::mem::take(&mut file.pending) {
            file.durable.apply(&op);
        }
        Ok(())
    }
}

/// splitmix64: tiny, fast, and good enough to pick crash outcomes; its whole state is the
/// seed, so a run replays from it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-enough in `0..n` (0 when `n` is 0), by multiply-shift: no modulo bias worth
    /// the name for the small ranges used here.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    fn coin(&mut self) -> bool {
        self.next() >> 63 == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::is_disk_full;

    const MODES: [CrashMode; 4] = [
        CrashMode::DropUnsynced,
        CrashMode::TornWrite,
        CrashMode::KeepSome,
        CrashMode::Any,
    ];

    fn read_all(f: &dyn StorageFile) -> Vec<u8> {
        let mut buf = vec![0; f.len().unwrap() as usize];
        f.read_exact_at(&mut buf, 0).unwrap();
        buf
    }

    fn contents(dir: &dyn Storage, name: &str) -> Option<Vec<u8>> {
        match dir.open(name) {
            Ok(f) => Some(read_all(&*f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => panic!("open {name}: {e}"),
        }
    }

    /// Each directory's name and its files' names and contents, sorted.
    type Snapshot = Vec<(String, Vec<(String, Vec<u8>)>)>;

    /// Every file of every directory, in order: the whole visible state.
    fn snapshot(dirs: &[&Arc<dyn Storage>]) -> Snapshot {
        dirs.iter()
            .map(|d| {
                let mut names = d.list().unwrap();
                names.sort();
                let files = names
                    .into_iter()
                    .map(|n| {
                        let bytes = contents(&***d, &n).unwrap();
                        (n, bytes)
                    })
                    .collect();
                (d.describe(), files)
            })
            .collect()
    }

    /// A file `name` holding `bytes`, synced and named durably.
    fn durable_file(dir: &dyn Storage, name: &str, bytes: &[u8]) -> Arc<dyn StorageFile> {
        let f = dir.create(name).unwrap();
        f.write_all_at(bytes, 0).unwrap();
        f.sync_data().unwrap();
        dir.sync_dir().unwrap();
        f
    }

    #[test]
    fn files_read_write_list_rename_remove() {
        let disk = SimDisk::new(1);
        let d = disk.dir("d");
        assert_eq!(d.describe(), "sim:d");
        let f = d.create("a").unwrap();
        f.allocate(4096).unwrap();
        assert_eq!(f.len().unwrap(), 4096);
        f.write_all_at(b"hello", 10).unwrap();
        f.sync_data().unwrap();
        let mut buf = [0u8; 5];
        f.read_exact_at(&mut buf, 10).unwrap();
        assert_eq!(&buf, b"hello");
        let err = f.read_exact_at(&mut buf, 4094).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let err = f.read_exact_at(&mut buf, u64::MAX).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let err = f.write_all_at(b"x", u64::MAX).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        // A write past the end leaves zeros between.
        f.write_all_at(b"z", 5000).unwrap();
        assert_eq!(f.len().unwrap(), 5001);
        let mut gap = [1u8; 904];
        f.read_exact_at(&mut gap, 4096).unwrap();
        assert!(gap.iter().all(|&b| b == 0));

        d.rename("a", "b").unwrap();
        d.sync_dir().unwrap();
        assert_eq!(d.list().unwrap(), vec!["b".to_string()]);
        assert!(d.free_bytes().unwrap() > 0);
        assert_eq!(d.open("a").err().unwrap().kind(), io::ErrorKind::NotFound);
        for bad in ["../x", "x/y", "", ".", ".."] {
            assert_eq!(
                d.open(bad).err().unwrap().kind(),
                io::ErrorKind::InvalidInput
            );
            assert_eq!(
                d.create(bad).err().unwrap().kind(),
                io::ErrorKind::InvalidInput
            );
        }
        // The handle follows the file through the rename, as an fd does.
        f.write_all_at(b"H", 10).unwrap();
        assert_eq!(&contents(&*d, "b").unwrap()[10..15], b"Hello");

        // Rename replaces the target; create of an existing name empties it.
        durable_file(&*d, "c", b"cccc");
        d.rename("c", "b").unwrap();
        assert_eq!(d.list().unwrap(), vec!["b".to_string()]);
        assert_eq!(contents(&*d, "b").unwrap(), b"cccc");
        let again = d.create("b").unwrap();
        assert_eq!(again.len().unwrap(), 0);
        assert_eq!(contents(&*d, "b").unwrap(), b"");
        d.remove("b").unwrap();
        assert!(d.list().unwrap().is_empty());
        assert_eq!(d.remove("b").unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(
            d.rename("b", "e").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );

        // Directories are separate namespaces, and `dir` twice is the same directory.
        disk.dir("other").create("x").unwrap();
        assert_eq!(disk.dir("other").list().unwrap(), vec!["x".to_string()]);
        assert!(d.list().unwrap().is_empty());
    }

    #[test]
    fn synced_data_survives_every_crash_mode() {
        for mode in MODES {
            for seed in 0..32 {
                let disk = SimDisk::new(seed);
                let d = disk.dir("d");
                let f = durable_file(&*d, "a", b"synced bytes");
                f.allocate(8192).unwrap();
                f.write_all_at(b"more", 100).unwrap();
                f.sync_data().unwrap();
                // A second, unsynced file in an unsynced directory state must not disturb it.
                d.create("b").unwrap().write_all_at(b"x", 0).unwrap();
                disk.crash(mode);
                let after = contents(&*d, "a").unwrap();
                assert_eq!(after.len(), 8192, "{mode:?} seed {seed}");
                assert_eq!(&after[..12], b"synced bytes");
                assert_eq!(&after[100..104], b"more");
                // Crashing again changes nothing: all of it is durable now.
                let before = snapshot(&[&d]);
                disk.crash(mode);
                assert_eq!(snapshot(&[&d]), before, "{mode:?} seed {seed}");
            }
        }
    }

    #[test]
    fn drop_unsynced_loses_every_unsynced_operation() {
        let disk = SimDisk::new(7);
        let d = disk.dir("d");
        let f = durable_file(&*d, "a", b"aaaa");
        f.write_all_at(b"bbbbbb", 2).unwrap();
        f.set_len(3).unwrap();
        f.allocate(100).unwrap();
        assert_eq!(f.len().unwrap(), 100);
        disk.crash(CrashMode::DropUnsynced);
        assert_eq!(contents(&*d, "a").unwrap(), b"aaaa");
        let faults = disk.faults();
        assert_eq!(faults.crashes, 1);
        assert_eq!(faults.lost_writes, 3);
    }

    #[test]
    fn torn_write_keeps_a_prefix() {
        let whole: Vec<u8> = [vec![1u8; 100], vec![2; 300], vec![3; 50]].concat();
        let mut lengths = BTreeSet::new();
        for seed in 0..64 {
            let disk = SimDisk::new(seed);
            let d = disk.dir("d");
            let f = durable_file(&*d, "log", b"");
            f.write_all_at(&whole[..100], 0).unwrap();
            f.write_all_at(&whole[100..400], 100).unwrap();
            f.write_all_at(&whole[400..], 400).unwrap();
            disk.crash(CrashMode::TornWrite);
            let after = contents(&*d, "log").unwrap();
            assert!(after.len() < whole.len(), "seed {seed}: nothing torn");
            assert_eq!(after, whole[..after.len()], "seed {seed}");
            let faults = disk.faults();
            assert_eq!(faults.torn_writes, 1);
            lengths.insert(after.len());
        }
        // The tear lands in each of the three writes, at various bytes.
        assert!(lengths.iter().any(|&l| l < 100));
        assert!(lengths.iter().any(|&l| (100..400).contains(&l)));
        assert!(lengths.iter().any(|&l| l >= 400));
        assert!(lengths.len() > 20, "{lengths:?}");
    }

    #[test]
    fn keep_some_keeps_whole_sectors() {
        // One unaligned write over a durable, preallocated file: it spans the sector
        // pieces [100,512) [512,1024) [1024,1536) [1536,1600).
        let pieces = [(100, 512), (512, 1024), (1024, 1536), (1536, 1600)];
        let mut outcomes = BTreeSet::new();
        for seed in 0..64 {
            let disk = SimDisk::new(seed);
            let d = disk.dir("d");
            let f = durable_file(&*d, "a", b"");
            f.allocate(2048).unwrap();
            f.sync_data().unwrap();
            f.write_all_at(&[0xAB; 1500], 100).unwrap();
            disk.crash(CrashMode::KeepSome);
            let after = contents(&*d, "a").unwrap();
            assert_eq!(after.len(), 2048);
            assert!(after[..100].iter().chain(&after[1600..]).all(|&b| b == 0));
            let kept: Vec<bool> = pieces
                .iter()
                .map(|&(from, to)| {
                    let piece = &after[from..to];
                    let all = |v| piece.iter().all(|&b| b == v);
                    assert!(all(0xAB) || all(0), "seed {seed}: sector {from} torn");
                    all(0xAB)
                })
                .collect();
            let lost = u64::from(kept.contains(&false));
            assert_eq!(disk.faults().lost_writes, lost, "seed {seed}");
            outcomes.insert(kept);
        }
        // Sectors persist independently: all, none and mixtures are seen.
        assert!(outcomes.contains(&vec![true; 4]));
        assert!(outcomes.contains(&vec![false; 4]));
        assert!(outcomes.len() > 8, "{outcomes:?}");
    }

    #[test]
    fn crash_invalidates_old_handles_but_not_directories() {
        let disk = SimDisk::new(3);
        let d = disk.dir("d");
        let f = durable_file(&*d, "a", b"abc");
        disk.crash(CrashMode::Any);
        let stale = |e: io::Error| {
            assert_eq!(e.kind(), io::ErrorKind::StaleNetworkFileHandle);
            assert!(e.to_string().contains("before a simulated crash"), "{e}");
        };
        stale(f.read_exact_at(&mut [0; 1], 0).unwrap_err());
        stale(f.write_all_at(b"x", 0).unwrap_err());
        stale(f.len().unwrap_err());
        stale(f.set_len(0).unwrap_err());
        stale(f.allocate(10).unwrap_err());
        stale(f.sync_data().unwrap_err());
        // The directory handle works and a new file handle does.
        assert_eq!(d.list().unwrap(), vec!["a".to_string()]);
        let g = d.open("a").unwrap();
        assert_eq!(read_all(&*g), b"abc");
        g.write_all_at(b"d", 3).unwrap();
        assert_eq!(read_all(&*g), b"abcd");
    }

    /// Whether a file created and synced, but not named durably, is there after a crash.
    fn created_file_survives(seed: u64) -> bool {
        let disk = SimDisk::new(seed);
        let d = disk.dir("d");
        let f = d.create("new").unwrap();
        f.write_all_at(b"data", 0).unwrap();
        f.sync_data().unwrap();
        disk.crash(CrashMode::DropUnsynced);
        match contents(&*d, "new") {
            Some(bytes) => {
                assert_eq!(bytes, b"data");
                true
            }
            None => {
                assert_eq!(disk.faults().lost_writes, 1);
                false
            }
        }
    }

    /// Seeds where a created, synced but not dir-synced file vanishes / stays at a crash:
    /// found by trying seeds, fixed here so the test needs no search.
    const VANISHES: u64 = 3;
    const STAYS: u64 = 0;

    #[test]
    fn a_file_not_named_durably_may_vanish() {
        assert!(!created_file_survives(VANISHES));
        assert!(created_file_survives(STAYS));
        // And the same seed always decides the same way.
        for seed in 0..16 {
            assert_eq!(created_file_survives(seed), created_file_survives(seed));
        }
        // With the directory synced it always stays.
        for seed in 0..16 {
            let disk = SimDisk::new(seed);
            let d = disk.dir("d");
            durable_file(&*d, "new", b"data");
            disk.crash(CrashMode::Any);
            assert_eq!(contents(&*d, "new").unwrap(), b"data");
        }
    }

    #[test]
    fn unsynced_rename_and_remove_persist_or_not_but_never_half() {
        let mut seen = BTreeSet::new();
        for seed in 0..32 {
            let disk = SimDisk::new(seed);
            let d = disk.dir("d");
            durable_file(&*d, "tmp", b"new");
            durable_file(&*d, "cur", b"old");
            durable_file(&*d, "gone", b"x");
            // The atomic-replace idiom without its directory sync, then a remove.
            d.rename("tmp", "cur").unwrap();
            d.remove("gone").unwrap();
            disk.crash(CrashMode::DropUnsynced);
            let state = snapshot(&[&d]).remove(0).1;
            let renamed = vec![("cur".to_string(), b"new".to_vec())];
            let not_renamed = vec![
                ("cur".to_string(), b"old".to_vec()),
                ("tmp".to_string(), b"new".to_vec()),
            ];
            let gone = ("gone".to_string(), b"x".to_vec());
            // Directory changes persist as a prefix: the remove only after the rename.
            let with_gone = |mut v: Vec<(String, Vec<u8>)>| {
                v.push(gone.clone());
                v.sort();
                v
            };
            let allowed = [
                with_gone(not_renamed.clone()),
                with_gone(renamed.clone()),
                renamed,
            ];
            let i = allowed.iter().position(|s| *s == state);
            seen.insert(i.unwrap_or_else(|| panic!("seed {seed}: {state:?}")));
        }
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn fsyncgate_a_failed_sync_forgets_its_writes() {
        for mode in MODES {
            let disk = SimDisk::new(11);
            let d = disk.dir("d");
            let f = durable_file(&*d, "a", b"aaaa");
            f.write_all_at(b"bbbb", 0).unwrap();
            disk.fail_next_syncs(1);
            let err = f.sync_data().unwrap_err();
            assert_eq!(err.raw_os_error(), Some(EIO));
            // Reads still see the write the failed sync dropped…
            assert_eq!(read_all(&*f), b"bbbb");
            f.write_all_at(b"cccc", 4).unwrap();
            // …and the retried sync succeeds, but covers only what came after the failure.
            f.sync_data().unwrap();
            assert_eq!(read_all(&*f), b"bbbbcccc");
            disk.crash(mode);
            assert_eq!(contents(&*d, "a").unwrap(), b"aaaacccc", "{mode:?}");
            assert_eq!(disk.faults().failed_syncs, 1);
        }
    }

    #[test]
    fn a_failed_write_writes_a_prefix() {
        let mut lengths = BTreeSet::new();
        for seed in 0..16 {
            let disk = SimDisk::new(seed);
            let d = disk.dir("d");
            let f = durable_file(&*d, "a", b"");
            disk.fail_next_writes(1);
            let err = f.write_all_at(&[7; 1000], 0).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(EIO));
            let got = read_all(&*f);
            assert!(got.len() < 1000 && got.iter().all(|&b| b == 7));
            lengths.insert(got.len());
            // Only the armed write fails.
            f.write_all_at(b"ok", 2000).unwrap();
            assert_eq!(disk.faults().failed_writes, 1);
            // What it wrote was never synced.
            disk.crash(CrashMode::DropUnsynced);
            assert_eq!(contents(&*d, "a").unwrap(), b"");
        }
        assert!(lengths.len() > 8);
    }

    #[test]
    fn fail_from_refuses_every_change_from_the_nth_on_until_a_crash() {
        let disk = SimDisk::new(9);
        let d = disk.dir("d");
        let f = durable_file(&*d, "a", b"aaaa");
        let before = disk.operations();
        // Two operations still pass: a write and a sync.
        disk.fail_from(Some(2));
        f.write_all_at(b"bb", 4).unwrap();
        f.sync_data().unwrap();
        assert_eq!(disk.operations(), before + 2);
        // From the third on, every change is refused and changes nothing…
        f.write_all_at(b"cc", 6).unwrap_err();
        assert_eq!(read_all(&*f), b"aaaabb");
        assert!(d.create("b").is_err());
        d.rename("a", "c").unwrap_err();
        d.remove("a").unwrap_err();
        d.sync_dir().unwrap_err();
        f.set_len(1).unwrap_err();
        f.allocate(100).unwrap_err();
        assert_eq!(d.list().unwrap(), vec!["a".to_string()]);
        assert_eq!(read_all(&*f), b"aaaabb");
        assert_eq!(disk.operations(), before + 9);
        assert_eq!(disk.faults().failed_ops, 7);
        // …and a sync fails as with fsyncgate: what it covered is forgotten.
        disk.fail_from(None);
        f.write_all_at(b"dd", 6).unwrap();
        disk.fail_from(Some(0));
        assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(EIO));
        // A crash ends it: the durable state is what the two passing operations left.
        disk.crash(CrashMode::KeepSome);
        let f = d.open("a").unwrap();
        assert_eq!(read_all(&*f), b"aaaabb");
        f.write_all_at(b"ee", 6).unwrap();
        assert_eq!(disk.faults().failed_ops, 8);
    }

    #[test]
    fn full_from_fills_the_disk_at_the_nth_operation() {
        let disk = SimDisk::new(4);
        let d = disk.dir("d");
        let f = durable_file(&*d, "a", b"aaaa");
        disk.full_from(Some(1));
        f.write_all_at(b"bb", 4).unwrap();
        // The second operation finds the disk full: growth is refused from then on.
        assert!(is_disk_full(&f.write_all_at(b"cc", 6).unwrap_err()));
        assert!(is_disk_full(
            &d.create("b").unwrap().allocate(1).unwrap_err()
        ));
        f.write_all_at(b"AB", 0).unwrap();
        assert_eq!(read_all(&*f), b"ABaabb");
        disk.set_capacity(None);
        f.write_all_at(b"cc", 6).unwrap();
    }

    #[test]
    fn capacity_refuses_growth_but_not_writes_into_allocated_space() {
        assert_eq!(
            io::Error::from_raw_os_error(ENOSPC).kind(),
            io::ErrorKind::StorageFull
        );
        let disk = SimDisk::new(5);
        let d = disk.dir("d");
        assert_eq!(d.free_bytes().unwrap(), u64::MAX / 2);
        disk.set_capacity(Some(8192));
        let f = d.create("a").unwrap();
        f.allocate(4096).unwrap();
        assert_eq!((disk.used_bytes(), d.free_bytes().unwrap()), (4096, 4096));

        let g = d.create("b").unwrap();
        let err = g.allocate(8192).unwrap_err();
        assert!(is_disk_full(&err));
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(g.len().unwrap(), 0);
        // Exactly what is left fits.
        g.write_all_at(&[1; 4096], 0).unwrap();
        assert_eq!((disk.used_bytes(), d.free_bytes().unwrap()), (8192, 0));

        // Full, yet writes inside a file's allocated space succeed…
        f.write_all_at(&[2; 4096], 0).unwrap();
        // …while growth is refused and writes nothing.
        let err = f.write_all_at(&[3; 2], 4095).unwrap_err();
        assert!(is_disk_full(&err));
        assert_eq!(read_all(&*f), vec![2; 4096]);
        assert!(is_disk_full(
            &d.create("c").unwrap().allocate(1).unwrap_err()
        ));
        assert_eq!(disk.faults().disk_full, 3);

        // A cut releases allocated space too; removing a file releases all of it.
        f.set_len(1024).unwrap();
        assert_eq!(d.free_bytes().unwrap(), 3072);
        f.allocate(4096).unwrap();
        d.remove("b").unwrap();
        assert_eq!(disk.used_bytes(), 4096);
        disk.set_capacity(None);
        assert_eq!(d.free_bytes().unwrap(), u64::MAX / 2);
    }

    #[test]
    fn large_preallocation_is_cheap() {
        // A 256 MiB segment, preallocated and synced, costs only the pages written.
        let disk = SimDisk::new(0);
        let d = disk.dir("d");
        let f = d.create("seg").unwrap();
        f.allocate(256 << 20).unwrap();
        f.write_all_at(b"tail", (256 << 20) - 4).unwrap();
        f.sync_data().unwrap();
        d.sync_dir().unwrap();
        disk.crash(CrashMode::Any);
        let f = d.open("seg").unwrap();
        let mut buf = [0; 8];
        f.read_exact_at(&mut buf, (256 << 20) - 8).unwrap();
        assert_eq!(&buf, b"\0\0\0\0tail");
        assert_eq!(disk.used_bytes(), 256 << 20);
    }

    /// A workload touching every fault, with crashes in between; returns what is left.
    type Outcome = (Snapshot, FaultCounts);

    fn workload(seed: u64) -> Outcome {
        let disk = SimDisk::new(seed);
        let (a, b) = (disk.dir("a"), disk.dir("b"));
        for round in 0u8..4 {
            for (i, dir) in [&a, &b].into_iter().enumerate() {
                let name = format!("f{}", (usize::from(round) + i) % 3);
                let f = match dir.open(&name) {
                    Ok(f) => f,
                    Err(_) => dir.create(&name).unwrap(),
                };
                let len = f.len().unwrap();
                for k in 0..5u8 {
                    let bytes = vec![round * 16 + k; 300 + usize::from(k) * 200];
                    f.write_all_at(&bytes, len + u64::from(k) * 700).unwrap();
                    if k == 2 {
                        f.sync_data().unwrap();
                    }
                }
                if round == 1 {
                    disk.fail_next_writes(1);
                    let _ = f.write_all_at(&[0xEE; 2000], 100);
                    disk.fail_next_syncs(1);
                    let _ = f.sync_data();
                }
                if round == 2 {
                    f.set_len(len / 2).unwrap();
                    dir.rename(&name, "renamed").unwrap();
                }
                if (round + u8::try_from(i).unwrap()) % 2 == 0 {
                    dir.sync_dir().unwrap();
                }
            }
            disk.crash(CrashMode::Any);
        }
        (snapshot(&[&a, &b]), disk.faults())
    }

    #[test]
    fn the_same_seed_gives_the_same_bytes() {
        let outcomes: Vec<Outcome> = (0..8).map(workload).collect();
        for (seed, outcome) in outcomes.iter().enumerate() {
            assert_eq!(*outcome, workload(seed as u64), "seed {seed}");
        }
        // And the seed matters.
        assert!(outcomes.iter().any(|o| *o != outcomes[0]));
        let faults = outcomes[0].1;
        assert_eq!(
            (faults.crashes, faults.failed_writes, faults.failed_syncs),
            (4, 2, 2)
        );
    }
}
