//! Raft storage under `<data-dir>/raft/`: the log, the vote and the commit index in one
//! redb database (`log.redb`, every write transaction fsynced before it returns), and the
//! state machine in memory with its latest snapshot in `snapshot.bin` (written to a
//! temporary file, fsynced, then renamed over the old one).
//!
//! On restart the state machine starts from the snapshot and openraft re-applies the
//! log entries after it, up to the saved commit index.
//!
//! redb caches the pages it reads and writes in memory, 1 GiB by default: a log that
//! takes every presence change would keep most of what it ever wrote there, on every
//! node that replicates it. The cache is bounded to [`LOG_CACHE_BYTES`]: Raft reads
//! back only recent entries (a follower catching up), and a miss is a read from the
//! operating system's page cache.
//!
//! openraft's own storage test suite (`openraft::testing::Suite`) runs against this
//! store (see the tests below).

use std::fmt::Debug;
use std::io::{Cursor, Write};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, EntryPayload, LogId, LogState, RaftLogReader, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use switchboard_proto::peer::NodeId;

use super::codec::{decode_stored as decode, encode};
use super::snapshot::{restore, snapshot_of};
use super::{Entry, TypeConfig};
use crate::presence::SharedReplica;
use crate::sync::lock;

/// Memory redb may use to cache one Raft log's pages (per group: the control group and
/// each presence shard this node hosts).
pub const LOG_CACHE_BYTES: usize = 4 * 1024 * 1024;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE: &str = "vote";
const PURGED: &str = "purged";
const COMMITTED: &str = "committed";

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

fn any(e: impl std::fmt::Display) -> AnyError {
    AnyError::error(format!("{e:#}"))
}

/// Runs blocking storage work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work).await?
}

/// The log, vote and commit index. Cheap to clone: clones share the database.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    /// Opens (or creates) `<dir>/log.redb`.
    pub fn open(dir: &Path) -> anyhow::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("log.redb");
        let db = Database::builder()
            .set_cache_size(LOG_CACHE_BYTES)
            .create(&path)
            .map_err(|e| anyhow::anyhow!("cannot open the Raft log {}: {e}", path.display()))?;
        let txn = db.begin_write()?;
        txn.open_table(LOG)?;
        txn.open_table(META)?;
        txn.commit()?;
        Ok(LogStore { db: Arc::new(db) })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> anyhow::Result<Option<T>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(META)?;
        match table.get(key)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    async fn put_meta<T: serde::Serialize>(
        &self,
        key: &'static str,
        value: &T,
    ) -> anyhow::Result<()> {
        let bytes = encode(value)?;
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_write()?;
            txn.open_table(META)?.insert(key, bytes.as_slice())?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    fn last_entry(&self) -> anyhow::Result<Option<Entry>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOG)?;
        match table.last()? {
            Some((_, v)) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    fn entries(&self, start: Bound<u64>, end: Bound<u64>) -> anyhow::Result<Vec<Entry>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOG)?;
        let mut out = Vec::new();
        for item in table.range::<u64>((start, end))? {
            let (_, v) = item?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    /// Deletes the entries whose index is in `range`.
    async fn delete(&self, range: (Bound<u64>, Bound<u64>)) -> anyhow::Result<()> {
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_write()?;
            txn.open_table(LOG)?
                .retain_in::<u64, _>(range, |_, _| false)?;
            txn.commit()?;
            Ok(())
        })
        .await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>> {
        self.entries(range.start_bound().cloned(), range.end_bound().cloned())
            .map_err(|e| StorageIOError::read_logs(any(e)).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let purged: Option<LogId<NodeId>> = self
            .get_meta(PURGED)
            .map_err(|e| StorageIOError::read_logs(any(e)))?;
        let last = self
            .last_entry()
            .map_err(|e| StorageIOError::read_logs(any(e)))?
            .map(|e| e.log_id)
            .or(purged);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        self.put_meta(VOTE, vote)
            .await
            .map_err(|e| StorageIOError::write_vote(any(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        self.get_meta(VOTE)
            .map_err(|e| StorageIOError::read_vote(any(e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        self.put_meta(COMMITTED, &committed)
            .await
            .map_err(|e| StorageIOError::write(any(e)).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        Ok(self
            .get_meta::<Option<LogId<NodeId>>>(COMMITTED)
            .map_err(|e| StorageIOError::read(any(e)))?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut rows = Vec::new();
        for entry in entries {
            rows.push((
                entry.log_id.index,
                encode(&entry).map_err(|e| StorageIOError::write_logs(any(e)))?,
            ));
        }
        let db = self.db.clone();
        let written = blocking(move || {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(LOG)?;
                for (index, bytes) in &rows {
                    table.insert(*index, bytes.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
        .await;
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(format!("{e:#}"))));
                Err(StorageIOError::write_logs(any(e)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        self.delete((Bound::Included(log_id.index), Bound::Unbounded))
            .await
            .map_err(|e| StorageIOError::write_logs(any(e)).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        self.put_meta(PURGED, &log_id)
            .await
            .map_err(|e| StorageIOError::write_logs(any(e)))?;
        self.delete((Bound::Unbounded, Bound::Included(log_id.index)))
            .await
            .map_err(|e| StorageIOError::write_logs(any(e)).into())
    }
}

/// A snapshot as kept on disk and sent to peers.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    data: Vec<u8>,
}

#[derive(Debug, Default)]
struct Applied {
    last: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    snapshot: Option<StoredSnapshot>,
    snapshots_built: u64,
}

/// The state machine: the [`Replica`] the rest of the node reads (shared), and what
/// Raft needs to know of it. Cheap to clone: clones share everything.
#[derive(Debug, Clone)]
pub struct StateMachine {
    replica: Arc<SharedReplica>,
    applied: Arc<Mutex<Applied>>,
    path: PathBuf,
}

impl StateMachine {
    /// A state machine over `replica`, restored from `<dir>/snapshot.bin` if present.
    pub fn open(dir: &Path, replica: Arc<SharedReplica>) -> anyhow::Result<StateMachine> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("snapshot.bin");
        let mut applied = Applied::default();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let stored: StoredSnapshot = decode(&bytes).map_err(|e| {
                    anyhow::anyhow!("the Raft snapshot {} is unreadable: {e:#}", path.display())
                })?;
                let mut state = replica.write();
                *state = restore(&stored.data)?;
                replica.restart_events_at(stored.meta.last_log_id.map_or(0, |l| l.index));
                drop(state);
                applied.last = stored.meta.last_log_id;
                applied.membership = stored.meta.last_membership.clone();
                applied.snapshot = Some(stored);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        Ok(StateMachine {
            replica,
            applied: Arc::new(Mutex::new(applied)),
            path,
        })
    }

    fn persist(&self, stored: &StoredSnapshot) -> anyhow::Result<()> {
        let bytes = encode(stored)?;
        let tmp = self.path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let (data, meta) = {
            let replica = self.replica.read();
            let mut applied = lock(&self.applied);
            applied.snapshots_built += 1;
            let data =
                snapshot_of(&replica).map_err(|e| StorageIOError::write_snapshot(None, any(e)))?;
            let meta = SnapshotMeta {
                last_log_id: applied.last,
                last_membership: applied.membership.clone(),
                snapshot_id: format!(
                    "{}-{}",
                    applied.last.map_or(0, |l| l.index),
                    applied.snapshots_built
                ),
            };
            (data, meta)
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        let this = self.clone();
        let kept = stored.clone();
        blocking(move || this.persist(&kept))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), any(e)))?;
        lock(&self.applied).snapshot = Some(stored);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(
        Option<LogId<NodeId>>,
        StoredMembership<NodeId, openraft::BasicNode>,
    )> {
        let applied = lock(&self.applied);
        Ok((applied.last, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<u64>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut replies = Vec::new();
        let mut events = Vec::new();
        let mut replica = self.replica.write();
        let mut applied = lock(&self.applied);
        for entry in entries {
            applied.last = Some(entry.log_id);
            replies.push(match entry.payload {
                EntryPayload::Blank => 0,
                EntryPayload::Normal(command) => {
                    replica.apply_noting(command, entry.log_id.index, &mut events)
                }
                EntryPayload::Membership(m) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), m);
                    0
                }
            });
        }
        // Recorded while the replica is still locked: readers see both at one point.
        self.replica.record(events);
        drop(replica);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        let data = snapshot.into_inner();
        let restored = restore(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), any(e)))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let this = self.clone();
        let kept = stored.clone();
        blocking(move || this.persist(&kept))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), any(e)))?;
        let mut state = self.replica.write();
        *state = restored;
        self.replica
            .restart_events_at(meta.last_log_id.map_or(0, |l| l.index));
        drop(state);
        let mut applied = lock(&self.applied);
        applied.last = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        applied.snapshot = Some(stored);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        Ok(lock(&self.applied).snapshot.clone().map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{StoreBuilder, Suite};

    /// Removes a test store's directory when dropped.
    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn temp_dir(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "switchboard-store-{}-{tag}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
        async fn build(&self) -> Result<(TempDir, LogStore, StateMachine)> {
            let dir = temp_dir("suite");
            let fail = |e: anyhow::Error| StorageError::from(StorageIOError::write(any(e)));
            let log = LogStore::open(&dir.0).map_err(fail)?;
            let sm =
                StateMachine::open(&dir.0, Arc::new(SharedReplica::default())).map_err(fail)?;
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn openraft_storage_suite_passes() {
        Suite::test_all(Builder).expect("openraft's storage suite");
    }
}
