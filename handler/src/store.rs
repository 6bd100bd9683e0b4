//! Durable state of the node agent in an embedded ACID database (`redb`), one file
//! `<data-dir>/state.redb`.
//!
//! Four tables, all keyed by `namespace/name` ([`VmKey::storage_key`]) and holding JSON:
//!
//! | table | value |
//! |---|---|
//! | `vms` | [`VmRecord`]: the `VirtualMachine` (spec and status) and runtime bookkeeping |
//! | `vmis` | the `VirtualMachineInstance` of the VM, while one exists |
//! | `launchers` | [`LauncherRecord`]: the launcher process and what was made for it |
//! | `events` | the VM's last [`MAX_EVENTS_PER_VM`] [`EventRecord`]s |
//!
//! Every change goes through [`Store::transact`]: one write transaction that commits
//! (with fsync) all of its changes or none, so a `kill -9` at any moment leaves the old
//! or the new state. When the file system is full the commit fails, the transaction is
//! dropped, and [`StoreError::NoSpace`] says so; the database is reopened from the last
//! committed state, so nothing that was committed is lost.

use std::cell::Cell;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use ironvisor_crds::v1alpha1::{InstancetypeSpec, PreferenceSpec, VirtualMachineInstance};
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{debug, warn};

use crate::records::{EventRecord, LauncherRecord, VmKey, VmRecord, MAX_EVENTS_PER_VM};

const VMS: TableDefinition<&str, &[u8]> = TableDefinition::new("vms");
const VMIS: TableDefinition<&str, &[u8]> = TableDefinition::new("vmis");
const LAUNCHERS: TableDefinition<&str, &[u8]> = TableDefinition::new("launchers");
const EVENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("events");
const INSTANCETYPES: TableDefinition<&str, &[u8]> = TableDefinition::new("instancetypes");
const PREFERENCES: TableDefinition<&str, &[u8]> = TableDefinition::new("preferences");
/// Every table, created when the database is opened.
const TABLES: [TableDefinition<&str, &[u8]>; 6] =
    [VMS, VMIS, LAUNCHERS, EVENTS, INSTANCETYPES, PREFERENCES];

/// File name of the database inside the data directory.
pub const DATABASE_FILE: &str = "state.redb";

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file system holding the database is full; the change was not made.
    #[error(
        "state database {path}: no space left on the file system holding it; the change was \
         not made and the stored state is intact (free some space and retry)"
    )]
    NoSpace {
        /// The database file.
        path: PathBuf,
    },
    /// Any other database failure.
    #[error("state database {path}: {operation} failed: {source}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// What was being done ("open", "begin write", "commit", ...).
        operation: &'static str,
        /// The database's error.
        #[source]
        source: Box<redb::Error>,
    },
    /// A stored record could not be decoded.
    #[error("state database {path}: record {table}[{key}] cannot be decoded: {source}")]
    Decode {
        /// The database file.
        path: PathBuf,
        /// The table.
        table: &'static str,
        /// The record key.
        key: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A record could not be encoded.
    #[error("cannot encode record {table}[{key}]: {source}")]
    Encode {
        /// The table.
        table: &'static str,
        /// The record key.
        key: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The database library failed unexpectedly; the handle is dropped and the file
    /// reopened (recovering the last committed state) on next use.
    #[error(
        "state database {path}: unexpected failure ({message}); the last committed state is kept"
    )]
    Panicked {
        /// The database file.
        path: PathBuf,
        /// The panic message.
        message: String,
    },
    /// A blocking store task could not be joined (it panicked or was cancelled).
    #[error("state database task failed: {0}")]
    Task(String),
}

impl StoreError {
    fn database(path: &Path, operation: &'static str, error: impl Into<redb::Error>) -> Self {
        let error = error.into();
        if is_no_space(&error) {
            return Self::NoSpace {
                path: path.to_path_buf(),
            };
        }
        Self::Database {
            path: path.to_path_buf(),
            operation,
            source: Box::new(error),
        }
    }

    /// Whether the error came from the storage layer (I/O), after which the database
    /// must be reopened.
    fn is_io(&self) -> bool {
        match self {
            Self::NoSpace { .. } => true,
            Self::Database { source, .. } => {
                matches!(**source, redb::Error::Io(_) | redb::Error::PreviousIo)
            }
            _ => false,
        }
    }
}

fn is_no_space(error: &redb::Error) -> bool {
    match error {
        redb::Error::Io(e) => {
            e.raw_os_error() == Some(libc::ENOSPC)
                || e.raw_os_error() == Some(libc::EDQUOT)
                || e.kind() == io::ErrorKind::StorageFull
        }
        _ => false,
    }
}

/// One VM with everything stored about it, read in one consistent snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct VmSnapshot {
    /// The VM's key.
    pub key: VmKey,
    /// The VM record.
    pub record: VmRecord,
    /// Its instance, if one exists.
    pub vmi: Option<VirtualMachineInstance>,
    /// Its launcher, if one was started.
    pub launcher: Option<LauncherRecord>,
    /// Its recent events, oldest first.
    pub events: Vec<EventRecord>,
}

/// Free space below which writes are refused up front: redb grows its file in steps of
/// up to about a mebibyte, and is best kept from running into `ENOSPC` mid-commit.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 1024 * 1024;

/// The node agent's database. Every operation holds one lock for its duration: the agent's
/// load is tiny, and it keeps failure handling simple (a failed handle is dropped and the
/// file reopened while nothing else uses it).
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    dir: PathBuf,
    min_free_bytes: u64,
    /// `None` after an I/O failure; reopened on next use.
    db: Mutex<Option<Database>>,
}

impl Store {
    /// Opens (creating if needed) the database in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(data_dir, DEFAULT_MIN_FREE_BYTES)
    }

    /// [`Store::open`], refusing writes when less than `min_free_bytes` are free on the
    /// data directory's file system (0: never refuse up front).
    pub fn open_with(data_dir: &Path, min_free_bytes: u64) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::CreateDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(DATABASE_FILE);
        let db = open_database(&path)?;
        debug!(path = %path.display(), "state database opened");
        Ok(Self {
            path,
            dir: data_dir.to_path_buf(),
            min_free_bytes,
            db: Mutex::new(Some(db)),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in one write transaction and commits it when `f` returns `Ok`; on `Err`
    /// nothing is changed. Commits are durable (fsync) before this returns.
    pub fn transact<T, E>(&self, f: impl FnOnce(&Txn<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let mut guard = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let db = self.ensure_open(&mut guard)?;
        if self
            .free_bytes()
            .is_some_and(|free| free < self.min_free_bytes)
        {
            return Err(self.no_space().into());
        }
        let io_failed = Cell::new(false);
        let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<Result<T, E>, StoreError> {
            let mut txn = db
                .begin_write()
                .map_err(|e| StoreError::database(&self.path, "begin write", e))?;
            txn.set_quick_repair(true);
            let value = f(&Txn {
                txn: &txn,
                path: &self.path,
                io_failed: &io_failed,
            });
            match value {
                Ok(value) => {
                    txn.commit()
                        .map_err(|e| StoreError::database(&self.path, "commit", e))?;
                    Ok(Ok(value))
                }
                Err(e) => {
                    if let Err(abort) = txn.abort() {
                        let error = StoreError::database(&self.path, "abort", abort);
                        warn!(error = %error, "aborting a write transaction failed");
                        if error.is_io() {
                            io_failed.set(true);
                        }
                    }
                    Ok(Err(e))
                }
            }
        }));
        match outcome {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(e))) => {
                if io_failed.get() {
                    self.drop_handle(&mut guard);
                }
                Err(e)
            }
            Ok(Err(error)) => {
                if error.is_io() {
                    self.drop_handle(&mut guard);
                }
                Err(self.explain(error).into())
            }
            Err(panic) => {
                self.drop_handle(&mut guard);
                Err(self.explain(self.panicked(panic)).into())
            }
        }
    }

    /// Everything stored about `key`, or `None` when there is no such VM.
    pub fn get(&self, key: &VmKey) -> Result<Option<VmSnapshot>, StoreError> {
        self.read(|reader| reader.snapshot(key))
    }

    /// Every VM, in key order; only those of `namespace` when given.
    pub fn list(&self, namespace: Option<&str>) -> Result<Vec<VmSnapshot>, StoreError> {
        self.read(|reader| {
            let mut out = Vec::new();
            for key in reader.keys(VMS, "vms")? {
                if namespace.is_some_and(|ns| ns != key.namespace) {
                    continue;
                }
                if let Some(snapshot) = reader.snapshot(&key)? {
                    out.push(snapshot);
                }
            }
            Ok(out)
        })
    }

    /// Keys of every stored VM, in order.
    pub fn keys(&self) -> Result<Vec<VmKey>, StoreError> {
        self.read(|reader| reader.keys(VMS, "vms"))
    }

    /// Keys of every stored launcher record.
    pub fn launcher_keys(&self) -> Result<Vec<VmKey>, StoreError> {
        self.read(|reader| reader.keys(LAUNCHERS, "launchers"))
    }

    /// Runs a blocking store operation on tokio's blocking pool.
    pub async fn call<T, E, F>(self: &Arc<Self>, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&Store) -> Result<T, E> + Send + 'static,
    {
        let store = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Reader<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let db = self.ensure_open(&mut guard)?;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let txn = db
                .begin_read()
                .map_err(|e| StoreError::database(&self.path, "begin read", e))?;
            f(&Reader {
                txn: &txn,
                path: &self.path,
            })
        }));
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                if error.is_io() {
                    self.drop_handle(&mut guard);
                }
                Err(error)
            }
            Err(panic) => {
                self.drop_handle(&mut guard);
                Err(self.panicked(panic))
            }
        }
    }

    /// The open database, reopening the file (which recovers the last committed state)
    /// after a failure dropped the handle.
    fn ensure_open<'g>(
        &self,
        guard: &'g mut MutexGuard<'_, Option<Database>>,
    ) -> Result<&'g Database, StoreError> {
        if guard.is_none() {
            let db = open_database(&self.path).map_err(|e| self.explain(e))?;
            warn!(path = %self.path.display(), "state database reopened after a failure");
            **guard = Some(db);
        }
        guard
            .as_ref()
            .ok_or_else(|| StoreError::Task("database handle missing".into()))
    }

    fn drop_handle(&self, guard: &mut MutexGuard<'_, Option<Database>>) {
        warn!(path = %self.path.display(), "state database handle dropped after a failure; it is reopened on next use");
        **guard = None;
    }

    fn free_bytes(&self) -> Option<u64> {
        let stat = nix::sys::statvfs::statvfs(&self.dir).ok()?;
        Some(stat.blocks_available().saturating_mul(stat.fragment_size()))
    }

    fn no_space(&self) -> StoreError {
        StoreError::NoSpace {
            path: self.path.clone(),
        }
    }

    /// A failure on a (nearly) full file system is reported as such.
    fn explain(&self, error: StoreError) -> StoreError {
        let full = self
            .free_bytes()
            .is_some_and(|free| free < self.min_free_bytes.max(64 * 1024));
        match error {
            StoreError::NoSpace { .. } => error,
            _ if full => self.no_space(),
            other => other,
        }
    }

    fn panicked(&self, panic: Box<dyn std::any::Any + Send>) -> StoreError {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        StoreError::Panicked {
            path: self.path.clone(),
            message,
        }
    }
}

/// The key of a cluster-wide object (no namespace).
fn cluster_key(name: &str) -> VmKey {
    VmKey::new("", name)
}

fn open_database(path: &Path) -> Result<Database, StoreError> {
    let db = Database::create(path).map_err(|e| StoreError::database(path, "open", e))?;
    // Every table must exist so that readers never see a missing one. Check first and
    // write only when needed, so that a database on a full file system still opens.
    let missing = {
        let txn = db
            .begin_read()
            .map_err(|e| StoreError::database(path, "begin read", e))?;
        TABLES.iter().any(|table| txn.open_table(*table).is_err())
    };
    if missing {
        let txn = db
            .begin_write()
            .map_err(|e| StoreError::database(path, "begin write", e))?;
        for table in TABLES {
            txn.open_table(table)
                .map_err(|e| StoreError::database(path, "create table", e))?;
        }
        txn.commit()
            .map_err(|e| StoreError::database(path, "commit", e))?;
    }
    Ok(db)
}

fn decode<T: DeserializeOwned>(
    path: &Path,
    table: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
        path: path.to_path_buf(),
        table,
        key: key.to_string(),
        source,
    })
}

fn encode<T: Serialize>(table: &'static str, key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode {
        table,
        key: key.to_string(),
        source,
    })
}

struct Reader<'a> {
    txn: &'a redb::ReadTransaction,
    path: &'a Path,
}

impl Reader<'_> {
    fn get<T: DeserializeOwned>(
        &self,
        def: TableDefinition<&str, &[u8]>,
        table: &'static str,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let t = self
            .txn
            .open_table(def)
            .map_err(|e| StoreError::database(self.path, "open table", e))?;
        let value = t
            .get(key)
            .map_err(|e| StoreError::database(self.path, "read", e))?;
        value
            .map(|v| decode(self.path, table, key, v.value()))
            .transpose()
    }

    fn keys(
        &self,
        def: TableDefinition<&str, &[u8]>,
        table: &'static str,
    ) -> Result<Vec<VmKey>, StoreError> {
        let t = self
            .txn
            .open_table(def)
            .map_err(|e| StoreError::database(self.path, "open table", e))?;
        let mut keys = Vec::new();
        for entry in t
            .iter()
            .map_err(|e| StoreError::database(self.path, "scan", e))?
        {
            let (k, _) = entry.map_err(|e| StoreError::database(self.path, "scan", e))?;
            match VmKey::from_storage_key(k.value()) {
                Some(key) => keys.push(key),
                None => warn!(table, key = k.value(), "ignoring a malformed key"),
            }
        }
        Ok(keys)
    }

    fn snapshot(&self, key: &VmKey) -> Result<Option<VmSnapshot>, StoreError> {
        let k = key.storage_key();
        let Some(record) = self.get::<VmRecord>(VMS, "vms", &k)? else {
            return Ok(None);
        };
        Ok(Some(VmSnapshot {
            key: key.clone(),
            record,
            vmi: self.get(VMIS, "vmis", &k)?,
            launcher: self.get(LAUNCHERS, "launchers", &k)?,
            events: self.get(EVENTS, "events", &k)?.unwrap_or_default(),
        }))
    }
}

/// The operations of one write transaction (see [`Store::transact`]).
pub struct Txn<'a> {
    txn: &'a WriteTransaction,
    path: &'a Path,
    io_failed: &'a Cell<bool>,
}

impl Txn<'_> {
    fn error(&self, operation: &'static str, error: impl Into<redb::Error>) -> StoreError {
        let error = StoreError::database(self.path, operation, error);
        if error.is_io() {
            self.io_failed.set(true);
        }
        error
    }

    fn get<T: DeserializeOwned>(
        &self,
        def: TableDefinition<&str, &[u8]>,
        table: &'static str,
        key: &VmKey,
    ) -> Result<Option<T>, StoreError> {
        let k = key.storage_key();
        let t = self
            .txn
            .open_table(def)
            .map_err(|e| self.error("open table", e))?;
        let value = t.get(k.as_str()).map_err(|e| self.error("read", e))?;
        value
            .map(|v| decode(self.path, table, &k, v.value()))
            .transpose()
    }

    fn put<T: Serialize>(
        &self,
        def: TableDefinition<&str, &[u8]>,
        table: &'static str,
        key: &VmKey,
        value: &T,
    ) -> Result<(), StoreError> {
        let k = key.storage_key();
        let bytes = encode(table, &k, value)?;
        let mut t = self
            .txn
            .open_table(def)
            .map_err(|e| self.error("open table", e))?;
        t.insert(k.as_str(), bytes.as_slice())
            .map_err(|e| self.error("write", e))?;
        Ok(())
    }

    fn remove(&self, def: TableDefinition<&str, &[u8]>, key: &VmKey) -> Result<bool, StoreError> {
        let k = key.storage_key();
        let mut t = self
            .txn
            .open_table(def)
            .map_err(|e| self.error("open table", e))?;
        let removed = t.remove(k.as_str()).map_err(|e| self.error("delete", e))?;
        Ok(removed.is_some())
    }

    /// Every launcher record, with its key.
    pub fn launchers(&self) -> Result<Vec<(VmKey, LauncherRecord)>, StoreError> {
        let t = self
            .txn
            .open_table(LAUNCHERS)
            .map_err(|e| self.error("open table", e))?;
        let mut records = Vec::new();
        for entry in t.iter().map_err(|e| self.error("scan", e))? {
            let (k, v) = entry.map_err(|e| self.error("scan", e))?;
            match VmKey::from_storage_key(k.value()) {
                Some(key) => {
                    let record = decode(self.path, "launchers", k.value(), v.value())?;
                    records.push((key, record));
                }
                None => warn!(
                    table = "launchers",
                    key = k.value(),
                    "ignoring a malformed key"
                ),
            }
        }
        Ok(records)
    }

    /// The VM record of `key`.
    pub fn vm(&self, key: &VmKey) -> Result<Option<VmRecord>, StoreError> {
        self.get(VMS, "vms", key)
    }

    /// Writes the VM record of `key`.
    pub fn put_vm(&self, key: &VmKey, record: &VmRecord) -> Result<(), StoreError> {
        self.put(VMS, "vms", key, record)
    }

    /// The instance of `key`.
    pub fn vmi(&self, key: &VmKey) -> Result<Option<VirtualMachineInstance>, StoreError> {
        self.get(VMIS, "vmis", key)
    }

    /// The `VirtualMachineClusterInstancetype` named `name`.
    pub fn instancetype(&self, name: &str) -> Result<Option<InstancetypeSpec>, StoreError> {
        self.get(INSTANCETYPES, "instancetypes", &cluster_key(name))
    }

    /// Writes the `VirtualMachineClusterInstancetype` named `name`.
    pub fn put_instancetype(&self, name: &str, spec: &InstancetypeSpec) -> Result<(), StoreError> {
        self.put(INSTANCETYPES, "instancetypes", &cluster_key(name), spec)
    }

    /// The `VirtualMachineClusterPreference` named `name`.
    pub fn preference(&self, name: &str) -> Result<Option<PreferenceSpec>, StoreError> {
        self.get(PREFERENCES, "preferences", &cluster_key(name))
    }

    /// Writes the `VirtualMachineClusterPreference` named `name`.
    pub fn put_preference(&self, name: &str, spec: &PreferenceSpec) -> Result<(), StoreError> {
        self.put(PREFERENCES, "preferences", &cluster_key(name), spec)
    }

    /// Writes the instance of `key`.
    pub fn put_vmi(&self, key: &VmKey, vmi: &VirtualMachineInstance) -> Result<(), StoreError> {
        self.put(VMIS, "vmis", key, vmi)
    }

    /// Removes the instance of `key`; true if there was one.
    pub fn delete_vmi(&self, key: &VmKey) -> Result<bool, StoreError> {
        self.remove(VMIS, key)
    }

    /// The launcher record of `key`.
    pub fn launcher(&self, key: &VmKey) -> Result<Option<LauncherRecord>, StoreError> {
        self.get(LAUNCHERS, "launchers", key)
    }

    /// Writes the launcher record of `key`.
    pub fn put_launcher(&self, key: &VmKey, record: &LauncherRecord) -> Result<(), StoreError> {
        self.put(LAUNCHERS, "launchers", key, record)
    }

    /// Removes the launcher record of `key`; true if there was one.
    pub fn delete_launcher(&self, key: &VmKey) -> Result<bool, StoreError> {
        self.remove(LAUNCHERS, key)
    }

    /// Appends an event to `key`'s list, dropping the oldest beyond
    /// [`MAX_EVENTS_PER_VM`].
    pub fn push_event(&self, key: &VmKey, event: EventRecord) -> Result<(), StoreError> {
        let mut events: Vec<EventRecord> = self.get(EVENTS, "events", key)?.unwrap_or_default();
        events.push(event);
        if events.len() > MAX_EVENTS_PER_VM {
            let excess = events.len() - MAX_EVENTS_PER_VM;
            events.drain(..excess);
        }
        self.put(EVENTS, "events", key, &events)
    }

    /// Removes the VM and everything stored about it; true if it existed.
    pub fn delete_all(&self, key: &VmKey) -> Result<bool, StoreError> {
        let existed = self.remove(VMS, key)?;
        self.remove(VMIS, key)?;
        self.remove(LAUNCHERS, key)?;
        self.remove(EVENTS, key)?;
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{EventType, VmRuntime};
    use ironvisor_crds::v1alpha1::VirtualMachine;

    fn record(name: &str) -> VmRecord {
        let mut vm = VirtualMachine::new(name, Default::default());
        vm.metadata.namespace = Some("default".into());
        VmRecord {
            vm,
            runtime: VmRuntime::default(),
        }
    }

    #[derive(Debug, thiserror::Error)]
    enum TestError {
        #[error(transparent)]
        Store(#[from] StoreError),
        #[error("refused")]
        Refused,
    }

    #[test]
    fn committed_changes_persist_across_reopen_and_failed_ones_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let a = VmKey::new("default", "a");
        let b = VmKey::new("default", "b");
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .transact(|t| -> Result<(), StoreError> {
                    t.put_vm(&a, &record("a"))?;
                    t.push_event(
                        &a,
                        EventRecord {
                            time_unix: 1,
                            type_: EventType::Normal,
                            reason: "Created".into(),
                            message: "m".into(),
                        },
                    )
                })
                .unwrap();
            let failed = store.transact(|t| -> Result<(), TestError> {
                t.put_vm(&b, &record("b"))?;
                Err(TestError::Refused)
            });
            assert!(matches!(failed, Err(TestError::Refused)));
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.keys().unwrap(), vec![a.clone()]);
        let snapshot = store.get(&a).unwrap().unwrap();
        assert_eq!(snapshot.record, record("a"));
        assert_eq!(snapshot.events.len(), 1);
        assert!(store.get(&b).unwrap().is_none());
        assert!(store.transact(|t| t.delete_all(&a)).unwrap());
        assert!(store.list(None).unwrap().is_empty());
    }

    #[test]
    fn events_are_bounded_and_list_filters_by_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = VmKey::new("one", "a");
        let b = VmKey::new("two", "b");
        store
            .transact(|t| -> Result<(), StoreError> {
                t.put_vm(&a, &record("a"))?;
                t.put_vm(&b, &record("b"))?;
                for i in 0..(MAX_EVENTS_PER_VM as i64 + 10) {
                    t.push_event(
                        &a,
                        EventRecord {
                            time_unix: i,
                            type_: EventType::Normal,
                            reason: "Tick".into(),
                            message: i.to_string(),
                        },
                    )?;
                }
                Ok(())
            })
            .unwrap();
        let snapshot = store.get(&a).unwrap().unwrap();
        assert_eq!(snapshot.events.len(), MAX_EVENTS_PER_VM);
        assert_eq!(snapshot.events[0].time_unix, 10);
        let two = store.list(Some("two")).unwrap();
        assert_eq!(two.len(), 1);
        assert_eq!(two[0].key, b);
        assert_eq!(store.list(None).unwrap().len(), 2);
    }

    #[test]
    fn no_space_maps_to_a_clear_error() {
        let error = StoreError::database(
            Path::new("/data/state.redb"),
            "commit",
            redb::Error::Io(io::Error::from_raw_os_error(libc::ENOSPC)),
        );
        assert!(matches!(error, StoreError::NoSpace { .. }));
        assert!(error.to_string().contains("no space left"));
        assert!(error.to_string().contains("/data/state.redb"));
    }
}
