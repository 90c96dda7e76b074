//! The thread-per-core model TURN and the SFU share: each worker is a named OS thread with its
//! own current-thread tokio runtime and a `LocalSet`, so a worker's state needs no locks and
//! may be `!Send` (`Rc<RefCell<_>>`, `spawn_local`). Workers share nothing on the data path;
//! what they must share (quotas, placement) is behind an `Arc` the caller hands in.

use std::future::Future;
use std::thread::JoinHandle;

/// Starts worker thread `name` running the future `make` builds (on that thread) to completion.
/// A runtime that fails to start is logged and the thread ends.
///
/// Errors: the OS refused a new thread.
pub fn spawn_worker<F, Fut>(name: String, make: F) -> std::io::Result<JoinHandle<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(worker = %name, error = %e, "worker runtime failed to start");
                    return;
                }
            };
            tokio::task::LocalSet::new().block_on(&rt, make());
        })
}

/// The number of workers to start by default: one per CPU the process may run on.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn a_worker_runs_local_tasks_to_completion() {
        let (tx, rx) = std::sync::mpsc::channel();
        let h = spawn_worker("test-worker".into(), move || async move {
            // !Send state and spawn_local work on a worker.
            let shared = Rc::new(41);
            let s = shared.clone();
            let got = tokio::task::spawn_local(async move { *s + 1 })
                .await
                .unwrap();
            tx.send((got, std::thread::current().name().map(String::from)))
                .unwrap();
        })
        .unwrap();
        h.join().unwrap();
        assert_eq!(rx.recv().unwrap(), (42, Some("test-worker".to_string())));
        assert!(default_workers() >= 1);
    }
}
