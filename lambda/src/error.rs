//! The protocol's one error type, and which errors a retry can cure.

use std::path::PathBuf;

use lml_kernel::KernelError;

/// Everything that can go wrong in a protocol role.
///
/// Every variant names what was wrong (the event field, the job file, the
/// path) so that a message in a log is actionable. [`ProtocolError::is_retryable`]
/// tells a runtime whether running the same event again can help.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// An event was malformed: unknown field, wrong type, value out of range.
    #[error("bad event: {field}: {reason}")]
    BadEvent { field: String, reason: String },

    /// A job specification was invalid.
    #[error("bad job spec: {field}: {reason}")]
    BadSpec { field: String, reason: String },

    /// A job folder is missing something it must hold, or holds something malformed.
    #[error("bad job folder {}: {reason}", path.display())]
    BadJob { path: PathBuf, reason: String },

    /// A start event for a job id that already exists with a different spec.
    #[error("job {job:?} already exists with a different spec ({}); pick another job id", path.display())]
    JobExists { job: String, path: PathBuf },

    /// A file operation failed (usually transient on shared storage).
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The kernel rejected data or parameters (shapes, `.npy` files, labels).
    #[error(transparent)]
    Kernel(#[from] KernelError),

    /// Invoking a function failed.
    #[error("invoke failed: {0}")]
    Invoke(String),

    /// The progress store failed.
    #[error("progress store: {0}")]
    Progress(String),

    /// A fault injected by a test runtime at a named point.
    #[error("injected crash at {0}")]
    Crashed(&'static str),

    /// The invocation panicked (a bug): the panic's message. The local
    /// runtime catches the panic and treats the invocation as failed, as
    /// Lambda does with a function that dies.
    #[error("invocation panicked: {0}")]
    Panicked(String),

    /// An object store (S3) refused or failed a request about an object.
    #[error("s3://{bucket}/{key}: {reason}")]
    Object { bucket: String, key: String, reason: String, retryable: bool },

    /// An environment variable the runtime reads is malformed.
    #[error("{var}: {reason}")]
    BadEnv { var: &'static str, reason: String },
}

/// Shorthand for results with [`ProtocolError`].
pub type Result<T, E = ProtocolError> = std::result::Result<T, E>;

impl ProtocolError {
    /// Whether running the same event again can succeed: transient I/O,
    /// invoke and store failures, crashes and panics can; a bad event, spec
    /// or job folder, or a missing data file cannot, so a runtime should not
    /// spend retries on them. (Job-folder I/O stays retryable: on shared
    /// storage a concurrent role may have just moved what this one looked for.)
    ///
    /// A full file system (`ENOSPC`, [`std::io::ErrorKind::StorageFull`]) is
    /// retryable: EFS grows with its contents and is never full, a local disk
    /// may be freed meanwhile, and every publication removes its temp files
    /// when it fails, so a retry starts from a clean folder. Should the disk
    /// stay full, the event ends as a dead letter after the retries and the
    /// job can be resumed once there is room.
    ///
    /// A panic is retried as Lambda retries a function that died: most are
    /// deterministic bugs and end as dead letters, but one caused by the
    /// environment (memory, a file that changed) may pass.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProtocolError::Object { retryable, .. } => *retryable,
            ProtocolError::Io { .. }
            | ProtocolError::Invoke(_)
            | ProtocolError::Progress(_)
            | ProtocolError::Crashed(_)
            | ProtocolError::Panicked(_) => true,
            // A data or weight file that is missing or unreadable stays so.
            ProtocolError::Kernel(KernelError::Io { source, .. }) => {
                !matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied)
            }
            ProtocolError::BadEvent { .. }
            | ProtocolError::BadSpec { .. }
            | ProtocolError::BadJob { .. }
            | ProtocolError::JobExists { .. }
            | ProtocolError::BadEnv { .. }
            | ProtocolError::Kernel(_) => false,
        }
    }

    pub(crate) fn event(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ProtocolError::BadEvent { field: field.into(), reason: reason.into() }
    }

    pub(crate) fn spec(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ProtocolError::BadSpec { field: field.into(), reason: reason.into() }
    }

    pub(crate) fn job(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        ProtocolError::BadJob { path: path.into(), reason: reason.into() }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ProtocolError::Io { path: path.into(), source }
    }
}
