//! The job folder on shared storage, and the three ways anything is written to it.
//!
//! * **Bundles** (parameters, partial and reduced results): a directory of
//!   `.npy` tensors plus `meta.json`, written into a temp directory, every
//!   file fsynced, then renamed into place. A rename onto an existing
//!   bundle fails, so a bundle is published at most once and never changes;
//!   the loser of a race learns the bundle was already there.
//! * **Claims and markers**: a small file created with `link(2)`, which fails
//!   if the name exists: an atomic create that also tells who got there first.
//! * **Small replaceable records** (`config.json` is written once; progress
//!   records may be replaced whole): temp file, fsync, rename.
//!
//! Existence checks ([`present`]) use `stat` and, when it says no, a
//! directory listing too: on NFS (EFS) opening a directory revalidates it,
//! while a cached negative lookup could hide a sibling's fresh file.
//!
//! A publication that fails (an I/O error such as a full disk, or a panic)
//! removes its temp file or directory on the way out. One that dies with its
//! process leaves a `.NAME.tmp-PID-N` that nothing ever renames into place
//! and every reader skips (names are parsed, temps never match): inside a
//! round folder it goes when the round is pruned, and a job's staging folder
//! (`jobs/.JOB.tmp-*`) is swept when the job is created.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use lml_kernel::npy::{publish_atomic, write_npy_atomic, MappedNpy};
use ndarray::{ArrayD, ArrayViewD};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{ProtocolError, Result};
use crate::event::JobId;
use crate::spec::JobConfig;

/// The folder under the storage root that holds the job folders.
pub const JOBS_DIR: &str = "jobs";

/// Paths of one job under the storage root: `<root>/jobs/<job>/`.
///
/// ```text
/// config.json                      the resolved job (written once, by start)
/// stats/                           feature standardisation (mean, scale), written by start
/// params/000012/                   parameters + momentum after 12 rounds (the checkpoint)
/// rounds/000012/
///     fanout                       marker: round 12's workers were invoked
///     w0003-part-0002/             worker 3's continuation state, 2nd save
///     sum-000000-000001/           worker 0's result; sum-LO-HI reduces workers LO..HI
///     trigger                      claim: who invokes the combine (owner inside)
///     combine-invoked              marker: the combine event was sent
///     combine.lock                 fs2 lock held while the round is applied
/// progress/                        the local progress store's records
/// STOP                             a stop request
/// final.json                       written once when the job ends
/// ```
#[derive(Clone, Debug)]
pub struct JobDir {
    pub job: JobId,
    pub dir: PathBuf,
}

/// `rounds/{k:06}` and `params/{k:06}` width.
fn round_name(k: u64) -> String {
    format!("{k:06}")
}

impl JobDir {
    /// The folder of `job` under `root`.
    pub fn new(root: &Path, job: &JobId) -> Self {
        JobDir { job: job.clone(), dir: root.join(JOBS_DIR).join(job.as_str()) }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    pub fn params_dir(&self) -> PathBuf {
        self.dir.join("params")
    }
    pub fn params(&self, k: u64) -> PathBuf {
        self.params_dir().join(round_name(k))
    }
    pub fn rounds_dir(&self) -> PathBuf {
        self.dir.join("rounds")
    }
    pub fn round(&self, k: u64) -> PathBuf {
        self.rounds_dir().join(round_name(k))
    }
    /// The sum of workers `lo..hi`'s results in round `k`.
    pub fn sum(&self, k: u64, lo: usize, hi: usize) -> PathBuf {
        self.round(k).join(format!("sum-{lo:06}-{hi:06}"))
    }
    /// Worker `w`'s `seq`-th continuation save in round `k`.
    pub fn partial(&self, k: u64, w: usize, seq: u64) -> PathBuf {
        self.round(k).join(format!("w{w:04}-part-{seq:04}"))
    }
    pub fn fanout(&self, k: u64) -> PathBuf {
        self.round(k).join("fanout")
    }
    pub fn trigger(&self, k: u64) -> PathBuf {
        self.round(k).join("trigger")
    }
    pub fn combine_invoked(&self, k: u64) -> PathBuf {
        self.round(k).join("combine-invoked")
    }
    pub fn combine_lock(&self, k: u64) -> PathBuf {
        self.round(k).join("combine.lock")
    }
    pub fn progress(&self) -> PathBuf {
        self.dir.join("progress")
    }
    pub fn stop(&self) -> PathBuf {
        self.dir.join("STOP")
    }
    pub fn final_json(&self) -> PathBuf {
        self.dir.join("final.json")
    }

    /// Whether the job folder exists.
    pub fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    /// Reads `config.json` as written: the typed [`JobConfig`] of this job,
    /// of [`CONFIG_FORMAT`](crate::spec::CONFIG_FORMAT). Start compares what
    /// it reads with the config it resolved, so it needs no more; every other
    /// reader uses [`read_config`](Self::read_config).
    ///
    /// # Errors
    /// [`ProtocolError::BadJob`] naming the file (and the field) if the job
    /// does not exist or the config is unreadable, malformed, of another
    /// format or job.
    pub fn read_config_as_written(&self) -> Result<JobConfig> {
        let path = self.config();
        if !self.exists() {
            return Err(ProtocolError::job(&self.dir, format!("no such job {:?}", self.job.as_str())));
        }
        let cfg: JobConfig = read_json(&path)?;
        if cfg.format != crate::spec::CONFIG_FORMAT {
            return Err(ProtocolError::job(
                &path,
                format!("format {:?}, expected {:?}", cfg.format, crate::spec::CONFIG_FORMAT),
            ));
        }
        if cfg.job != self.job.as_str() {
            return Err(ProtocolError::job(&path, format!("belongs to job {:?}", cfg.job)));
        }
        Ok(cfg)
    }

    /// Reads `config.json` ([`read_config_as_written`](Self::read_config_as_written))
    /// and checks it as a file from shared storage must be checked: the
    /// counts derived from the spec are what start computes
    /// ([`JobConfig::validate`]), so no size read from the file can overflow
    /// or divide by zero later.
    ///
    /// # Errors
    /// [`ProtocolError::BadJob`] naming the file and what is wrong.
    pub fn read_config(&self) -> Result<JobConfig> {
        let cfg = self.read_config_as_written()?;
        cfg.validate().map_err(|e| ProtocolError::job(self.config(), e.to_string()))?;
        Ok(cfg)
    }

    /// The newest published parameters' round (0 if none can be found).
    ///
    /// # Errors
    /// As [`param_rounds`](Self::param_rounds).
    pub fn latest_params(&self) -> Result<u64> {
        Ok(self.param_rounds()?.last().copied().unwrap_or(0))
    }

    /// Rounds whose parameters are published, ascending.
    ///
    /// # Errors
    /// [`ProtocolError::BadJob`] if `params/` cannot be listed.
    pub fn param_rounds(&self) -> Result<Vec<u64>> {
        let dir = self.params_dir();
        let mut rounds: Vec<u64> = fs::read_dir(&dir)
            .map_err(|e| ProtocolError::job(&dir, format!("cannot list the parameters: {e}")))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect();
        rounds.sort_unstable();
        // A listing can miss a name created meanwhile (see `present`): probe past the newest.
        if let Some(&last) = rounds.last() {
            let mut k = last;
            while present(&self.params(k + 1)) {
                k += 1;
                rounds.push(k);
            }
        }
        Ok(rounds)
    }
}

/// Whether `path` exists: a `stat`, and if that says no, a listing of the
/// parent as well (see the module docs). Each alone can miss a name that
/// exists: on NFS a cached negative lookup can hide a file another client
/// just published, and a directory listing taken while other names in the
/// same directory are created, renamed or removed can skip entries (seen on
/// this machine's tmpfs: a worker listed `params/` while the combine pruned
/// an old round and missed the newest parameters). Both would have to miss.
pub fn present(path: &Path) -> bool {
    if path.symlink_metadata().is_ok() {
        return true;
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return false };
    match fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok()).any(|e| e.file_name() == name),
        Err(_) => false,
    }
}

/// A temp file or directory that is removed when this guard drops: after a
/// successful rename there is nothing left to remove; after an error or a
/// panic the half-written temp goes.
pub(crate) struct TempGuard(PathBuf);

impl TempGuard {
    pub(crate) fn new(path: PathBuf) -> Self {
        TempGuard(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        match fs::symlink_metadata(&self.0) {
            Ok(m) if m.is_dir() => {
                let _ = fs::remove_dir_all(&self.0);
            }
            Ok(_) => {
                let _ = fs::remove_file(&self.0);
            }
            Err(_) => {}
        }
    }
}

impl JobDir {
    /// Creates the job folder whole: `fill` writes its contents into a
    /// staging folder under a temp name, which is then renamed into place.
    /// The staging folder goes whatever happens (an error, a full disk, a
    /// panic); one left by a process that died is swept once the job exists.
    /// A concurrent start that created the job first is not an error (the
    /// caller compares the config it finds next).
    pub(crate) fn create_whole(&self, fill: impl FnOnce(&JobDir) -> Result<()>) -> Result<()> {
        let jobs = self.dir.parent().expect("jobs/<id>");
        fs::create_dir_all(jobs).map_err(|e| ProtocolError::io(jobs, e))?;
        let staging = TempGuard::new(temp_beside(&self.dir));
        let staged = JobDir { job: self.job.clone(), dir: staging.path().to_path_buf() };
        let result = fill(&staged)
            .and_then(|()| fs::rename(&staged.dir, &self.dir).map_err(|e| ProtocolError::io(&self.dir, e)));
        match result {
            // A concurrent start created the job, or swept this staging
            // folder as stale after creating it.
            Err(_) if self.exists() => {}
            r => r?,
        }
        drop(staging);
        remove_stale_temps(jobs, self.job.as_str());
        Ok(())
    }
}

/// Removes every temp of `name` in `dir` (see [`temp_beside`]): stale
/// staging left by a process that died. Only sound once `dir/name` exists,
/// for then no temp of it can ever be renamed into place; a writer still
/// filling one fails, and learns that `name` exists.
pub(crate) fn remove_stale_temps(dir: &Path, name: &str) {
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.filter_map(|e| e.ok()) {
        if entry.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)) {
            drop(TempGuard(entry.path()));
        }
    }
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A temp name beside `path`: `.NAME.tmp-PID-N`.
pub(crate) fn temp_beside(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", unique_suffix()))
}

/// A published bundle read back: tensors by name, and the metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Bundle {
    pub tensors: BTreeMap<String, ArrayD<f32>>,
    pub meta: Value,
}

impl Bundle {
    /// Tensor `name`.
    ///
    /// # Errors
    /// [`ProtocolError::BadJob`] naming the bundle if it has no such tensor.
    pub fn tensor(&self, path: &Path, name: &str) -> Result<&ArrayD<f32>> {
        self.tensors.get(name).ok_or_else(|| ProtocolError::job(path, format!("bundle has no tensor {name}")))
    }

    /// The metadata as its typed struct (see [`crate::meta`]).
    ///
    /// # Errors
    /// [`ProtocolError::BadJob`] naming `path`'s `meta.json` and the field
    /// that is missing, unknown or of the wrong type.
    pub fn typed_meta<T: DeserializeOwned>(&self, path: &Path) -> Result<T> {
        crate::json::from_value(&self.meta).map_err(|e| ProtocolError::job(path.join("meta.json"), e.to_string()))
    }
}

/// Publishes a bundle at `path` (a directory): every tensor as `NAME.npy` and
/// `meta` as `meta.json`, all fsynced, then one rename. Returns `true` if this
/// call published it, `false` if a bundle was already there (which is kept;
/// every bundle is a deterministic function of its inputs, so the two agree).
/// The parent directory must exist: a missing round folder is an error, never
/// silently recreated.
///
/// # Errors
/// [`ProtocolError::Io`] naming the path; the temp directory is removed
/// (on a panic too).
pub fn publish_bundle(
    path: &Path,
    tensors: &[(&str, ArrayViewD<'_, f32>)],
    meta: &impl serde::Serialize,
) -> Result<bool> {
    if present(path) {
        return Ok(false);
    }
    let guard = TempGuard::new(temp_beside(path));
    let tmp = guard.path();
    fs::create_dir(tmp).map_err(|e| ProtocolError::io(tmp, e))?;
    for (name, t) in tensors {
        write_npy_atomic(tmp.join(format!("{name}.npy")), t)?;
    }
    let text = serde_json::to_vec_pretty(meta).map_err(|e| ProtocolError::job(path, e.to_string()))?;
    publish_atomic(&tmp.join("meta.json"), |w| w.write_all(&text))?;
    faults::before_publish(path).map_err(|e| ProtocolError::io(path, e))?;
    fs::File::open(tmp).and_then(|d| d.sync_all()).map_err(|e| ProtocolError::io(tmp, e))?;
    match fs::rename(tmp, path) {
        Ok(()) => {
            sync_parent(path);
            Ok(true)
        }
        // Lost a race: rename onto a non-empty directory fails (ENOTEMPTY/EEXIST).
        Err(_) if path.is_dir() => Ok(false),
        Err(e) => Err(ProtocolError::io(path, e)),
    }
}

/// Reads a published bundle.
///
/// # Errors
/// [`ProtocolError::BadJob`] naming the bundle if it is missing or its
/// `meta.json` is malformed; kernel errors naming the `.npy` that is bad.
pub fn read_bundle(path: &Path) -> Result<Bundle> {
    let entries = fs::read_dir(path).map_err(|e| ProtocolError::job(path, format!("cannot read bundle: {e}")))?;
    let mut tensors = BTreeMap::new();
    let mut meta = None;
    for entry in entries {
        let entry = entry.map_err(|e| ProtocolError::io(path, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "meta.json" {
            let text = fs::read(entry.path()).map_err(|e| ProtocolError::io(entry.path(), e))?;
            meta = Some(
                serde_json::from_slice::<Value>(&text)
                    .map_err(|e| ProtocolError::job(entry.path(), format!("malformed: {e}")))?,
            );
        } else if let Some(tensor) = name.strip_suffix(".npy") {
            let mapped = MappedNpy::open(entry.path())?;
            tensors.insert(tensor.to_string(), mapped.view::<f32>()?.to_owned());
        }
    }
    let meta = meta.ok_or_else(|| ProtocolError::job(path, "bundle has no meta.json"))?;
    Ok(Bundle { tensors, meta })
}

/// Who holds a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This call created it.
    Won,
    /// It already existed, created by `owner`.
    Held(String),
}

impl Claim {
    /// Whether `me` holds the claim (won it now, or had won it before).
    pub fn is_mine(&self, me: &str) -> bool {
        match self {
            Claim::Won => true,
            Claim::Held(owner) => owner == me,
        }
    }
}

/// Atomically creates `path` holding `owner`, unless it exists: `link(2)` of
/// a fsynced temp file fails with `EEXIST` when another caller got there first.
///
/// # Errors
/// [`ProtocolError::Io`] naming the path.
pub fn claim(path: &Path, owner: &str) -> Result<Claim> {
    let guard = TempGuard::new(temp_beside(path));
    let tmp = guard.path();
    let result = (|| {
        let mut f = fs::File::create(tmp)?;
        f.write_all(owner.as_bytes())?;
        faults::before_publish(path)?;
        f.sync_all()?;
        match fs::hard_link(tmp, path) {
            Ok(()) => {
                sync_parent(path);
                Ok(Claim::Won)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Claim::Held(fs::read_to_string(path)?)),
            Err(e) => Err(e),
        }
    })();
    result.map_err(|e| ProtocolError::io(path, e))
}

/// Runs `f` holding an exclusive `fs2` lock on `lock_path` (created if
/// missing). The lock is released when `f` returns, and by the OS if the
/// process dies, so a crashed holder never blocks the job.
///
/// # Errors
/// [`ProtocolError::Io`] if the lock file cannot be opened or locked; `f`'s error.
pub fn with_lock<T>(lock_path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    use fs2::FileExt;
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path)
        .map_err(|e| ProtocolError::io(lock_path, e))?;
    FileExt::lock_exclusive(&lock).map_err(|e| ProtocolError::io(lock_path, e))?;
    let result = f();
    let _ = FileExt::unlock(&lock);
    result
}

/// Reads a small JSON file of the job folder as its typed struct.
///
/// # Errors
/// [`ProtocolError::BadJob`] naming the file: unreadable, not JSON (with the
/// line and column), or the field that is missing, unknown or of the wrong type.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).map_err(|e| ProtocolError::job(path, format!("cannot read: {e}")))?;
    crate::json::from_slice(&bytes).map_err(|e| ProtocolError::job(path, format!("malformed: {e}")))
}

/// Writes a small file whole by temp + fsync + rename (replacing any old one).
///
/// # Errors
/// [`ProtocolError::Io`] / kernel I/O error naming the path.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| ProtocolError::job(path, e.to_string()))?;
    publish_atomic(path, |w| {
        w.write_all(&text)?;
        faults::before_publish(path)
    })?;
    Ok(())
}

fn sync_parent(path: &Path) {
    if let Some(d) = path.parent().and_then(|p| fs::File::open(p).ok()) {
        let _ = d.sync_all();
    }
}

/// Faults injected into publications, for tests: a hook registered for a
/// storage root is called by every bundle, claim and record published under
/// it, after some bytes are written and before they become visible; an error
/// it returns (e.g. `ENOSPC`) fails that publication as the real error would.
///
/// Production pays one relaxed atomic load per publication: with no hook
/// registered anywhere in the process, nothing else runs.
pub mod faults {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use crate::services::lock;

    /// Decides whether a publication fails.
    pub trait PublishFaults: Send + Sync + 'static {
        /// Called while `path` is being published; an error fails the publication.
        ///
        /// # Errors
        /// The error to inject.
        fn before_publish(&self, path: &Path) -> std::io::Result<()>;
    }

    type Hooks = Vec<(u64, PathBuf, Arc<dyn PublishFaults>)>;

    static INSTALLED: AtomicUsize = AtomicUsize::new(0);
    static NEXT_ID: AtomicU64 = AtomicU64::new(0);
    static HOOKS: Mutex<Hooks> = Mutex::new(Vec::new());

    /// Keeps a hook registered; dropping it unregisters the hook.
    #[must_use = "the hook is unregistered when the guard drops"]
    pub struct Registered(u64);

    impl Drop for Registered {
        fn drop(&mut self) {
            let mut hooks = lock(&HOOKS);
            hooks.retain(|(id, _, _)| *id != self.0);
            INSTALLED.store(hooks.len(), Ordering::Relaxed);
        }
    }

    /// Calls `hook` for every publication under `root` (compared lexically:
    /// pass the root the roles' paths are built from) until the guard drops.
    pub fn register(root: &Path, hook: Arc<dyn PublishFaults>) -> Registered {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let mut hooks = lock(&HOOKS);
        hooks.push((id, root.to_path_buf(), hook));
        INSTALLED.store(hooks.len(), Ordering::Relaxed);
        Registered(id)
    }

    /// Runs the hooks registered for a root above `path`.
    pub(crate) fn before_publish(path: &Path) -> std::io::Result<()> {
        if INSTALLED.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let hooks: Vec<_> =
            lock(&HOOKS).iter().filter(|(_, root, _)| path.starts_with(root)).map(|(_, _, h)| h.clone()).collect();
        hooks.iter().try_for_each(|h| h.before_publish(path))
    }
}
