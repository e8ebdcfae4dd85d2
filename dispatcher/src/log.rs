//! The log seam: what the driver needs of a log, and nothing of how one is kept.
//!
//! Append with a completion, the last durable seq, whether an append would be taken now,
//! restore (a core to start from) and checkpoint, sync, and the reads an attempt makes. The
//! commit stream — every durable group, in log order — is the other half: whoever opens a
//! log hands it a channel to feed. [`Store`] implements this over cb's own segments (sled
//! indexes them); the simulator's `SimLog` implements it in memory, and can fail, stall and
//! lose what it did not sync. No type of a storage engine appears here, so a replicated log
//! can plug in at the same place.

use cb_core::{Checkpoint, Core, Record, Seq, Snapshot};
use cb_store::{Input, Store};
use tracing::warn;

use crate::driver_state::{Patience, Refusal};

/// Called once with the fate of an append: the last seq it got, or why it was refused.
pub type AppendDone = Box<dyn FnOnce(Result<Seq, Refusal>) + Send>;

/// Where the driver starts from.
#[derive(Debug)]
pub struct Start {
    /// The core, having folded every durable record.
    pub core: Core,
    /// The checkpoint it was restored from, if any.
    pub checkpoint: Option<Seq>,
    /// Records folded after it.
    pub tail_records: u64,
}

/// See the module docs.
pub trait Log: Send + Sync + 'static {
    /// Appends `inputs` as one atomic group; `done` hears once they are durable, or why not.
    /// It may be called on any thread, before this returns or after.
    fn append(&self, inputs: Vec<Input>, patience: Patience, done: AppendDone);

    /// The last durable record's seq; `None` for an empty log.
    fn last_seq(&self) -> Option<Seq>;

    /// Whether an append now would be taken (not, for instance, on a full disk).
    fn writable(&self) -> bool;

    /// The newest checkpoint and a fold of the records after it. Blocking.
    fn restore(&self) -> Result<Start, Refusal>;

    /// Keeps `checkpoint`, which describes a durable prefix of this log. Blocking.
    fn checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), Refusal>;

    /// Makes everything appended so far durable. Blocking.
    fn sync(&self) -> Result<(), Refusal>;

    /// The snapshot of version `seq` (a change record); `None` if the log lacks it.
    /// Blocking.
    fn snapshot(&self, seq: Seq) -> Result<Option<Snapshot>, Refusal>;

    /// The record at `seq`; `None` if the log lacks it. Blocking.
    fn record(&self, seq: Seq) -> Result<Option<Record>, Refusal>;
}

/// True for the refusals the log recovers from by itself (space freed, a transient I/O
/// error): the driver keeps what was refused and tries again.
pub fn refusal(e: cb_store::Error) -> Refusal {
    match e {
        cb_store::Error::DiskFull { .. } | cb_store::Error::Io { .. } => {
            Refusal::ForNow(e.to_string())
        }
        e => Refusal::Fatal(e.to_string()),
    }
}

impl Log for Store {
    fn append(&self, inputs: Vec<Input>, patience: Patience, done: AppendDone) {
        let reply = move |r: cb_store::Result<cb_store::Appended>| {
            done(r.map(|a| a.last()).map_err(refusal));
        };
        match patience {
            Patience::Now => self.append_then(inputs, reply),
            Patience::Patient => self.append_patiently_then(inputs, reply),
        }
    }

    fn last_seq(&self) -> Option<Seq> {
        Store::last_seq(self)
    }

    fn writable(&self) -> bool {
        Store::writable(self)
    }

    fn restore(&self) -> Result<Start, Refusal> {
        let restored = Store::restore(self).map_err(refusal)?;
        for damaged in &restored.damaged {
            warn!(path = %damaged.path.display(), reason = %damaged.reason, "skipped a damaged checkpoint");
        }
        Ok(Start {
            core: restored.core,
            checkpoint: restored.checkpoint,
            tail_records: restored.tail_records,
        })
    }

    fn checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), Refusal> {
        self.write_checkpoint(checkpoint)
            .map(|file| tracing::info!(seq = file.seq.0, "checkpoint written"))
            .map_err(refusal)
    }

    fn sync(&self) -> Result<(), Refusal> {
        Store::sync(self).map_err(refusal)
    }

    fn snapshot(&self, seq: Seq) -> Result<Option<Snapshot>, Refusal> {
        Store::snapshot(self, seq).map_err(refusal)
    }

    fn record(&self, seq: Seq) -> Result<Option<Record>, Refusal> {
        Store::record(self, seq).map_err(refusal)
    }
}
