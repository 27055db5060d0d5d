//! Learning that a log's own task has ended for good: after `shutdown`, after a storage error
//! (a log stops rather than diverge), or after a panic in it.
//!
//! A process that serves a replica must not outlive its log: one whose log task ended but whose
//! RPC server and liveness listener stay up looks alive to its peers (they notice it only by
//! its silence) and to its supervisor (which restarts only processes that exit). So the task
//! holds a `Running` and the process waits on [`Stopped`] beside its other work: dropping
//! the `Running` (the task returned, unwound or was aborted) resolves every `Stopped`.

use tokio::sync::watch;

/// Held by a log's task for as long as it runs.
#[derive(Debug)]
pub(crate) struct Running(#[allow(dead_code)] watch::Sender<()>);

/// Resolves once the log task's matching `Running` is gone; cheap to clone.
#[derive(Debug, Clone)]
pub struct Stopped(watch::Receiver<()>);

/// A connected pair.
pub(crate) fn signal() -> (Running, Stopped) {
    let (tx, rx) = watch::channel(());
    (Running(tx), Stopped(rx))
}

impl Stopped {
    /// Waits until the task has ended (at once if it already has).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        while rx.changed().await.is_ok() {}
    }

    /// Whether the task has ended.
    pub fn has_stopped(&self) -> bool {
        self.0.has_changed().is_err()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn stopped_resolves_when_the_task_ends_however_it_ends() {
        // Returning.
        let (running, stopped) = signal();
        assert!(!stopped.has_stopped());
        let task = tokio::spawn(async move {
            let _running = running;
        });
        task.await.expect("task");
        tokio::time::timeout(Duration::from_secs(5), stopped.wait())
            .await
            .expect("resolves after a return");
        assert!(stopped.has_stopped());

        // Panicking.
        let (running, stopped) = signal();
        let task = tokio::spawn(async move {
            let _running = running;
            panic!("a bug in the log's task");
        });
        assert!(task.await.expect_err("it panicked").is_panic());
        tokio::time::timeout(Duration::from_secs(5), stopped.clone().wait())
            .await
            .expect("resolves after a panic");

        // Aborted while waiting; still running before that.
        let (running, stopped) = signal();
        let task = tokio::spawn(async move {
            let _running = running;
            std::future::pending::<()>().await;
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(50), stopped.wait())
                .await
                .is_err(),
            "not before the task ends"
        );
        task.abort();
        tokio::time::timeout(Duration::from_secs(5), stopped.wait())
            .await
            .expect("resolves after an abort");
    }
}
