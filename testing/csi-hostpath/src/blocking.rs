//! Running the driver's file-system and mount work off the async runtime, one operation
//! at a time.
//!
//! Creates, deletes, publishes and unpublishes all read and change the data directory,
//! the mount table and the loop devices; taking them one at a time keeps every check
//! (is it mounted? which loop device?) true until the change that depends on it is
//! made. They take milliseconds, so a test driver loses nothing by it.

use std::sync::{Arc, Mutex};

use tonic::Status;

/// The lock every changing operation takes.
#[derive(Debug, Clone, Default)]
pub struct OperationLock(Arc<Mutex<()>>);

impl OperationLock {
    /// Runs `work` on a blocking thread while holding the lock.
    pub async fn run<T, F>(&self, work: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, Status> + Send + 'static,
    {
        let lock = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || {
            // A panic in an earlier operation poisons the lock but leaves no state
            // behind it to repair: every operation starts from the file system.
            let _guard = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            work()
        })
        .await
        .map_err(|e| Status::internal(format!("the operation ended abnormally: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_the_work_and_passes_its_result() {
        let lock = OperationLock::default();
        assert_eq!(lock.run(|| Ok(7)).await.unwrap(), 7);
        let e = lock
            .run(|| Err::<(), _>(Status::not_found("x")))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
    }
}
