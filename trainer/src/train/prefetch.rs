//! The data/teacher prefetcher: a background thread that reads the next batches and asks
//! the teacher about them while the current step computes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use edkd_data::{Batch, Cursor, Reader};

use crate::error::{Error, Result};
use crate::source::{TeacherOut, TeacherSource};

/// A teacher source shared by the prefetch thread, on-policy scoring and evaluation.
pub(crate) type SharedSource = Arc<Mutex<Box<dyn TeacherSource>>>;

/// Locks a shared source; a poisoned lock (a panic elsewhere) still yields the source.
pub(crate) fn lock(s: &SharedSource) -> std::sync::MutexGuard<'_, Box<dyn TeacherSource>> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// A batch with its teacher answer and the reader's cursor after it.
pub(crate) struct Fetched {
    pub batch: Batch,
    pub teacher: Option<Result<TeacherOut>>,
    pub cursor: Cursor,
}

/// Reads batches and asks the teacher about them ahead of the training step.
pub(crate) struct Prefetcher {
    rx: Receiver<Result<Fetched>>,
    /// With depth 0: one message per batch the step asks for (the thread waits for it).
    demand: Option<SyncSender<()>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Prefetcher {
    /// Starts the thread; at most `depth` scored batches wait for the step. With depth 0
    /// the thread reads and scores a batch only when [`Prefetcher::next`] asks for it.
    pub fn start(mut reader: Reader, teacher: Option<SharedSource>, depth: usize) -> Self {
        let (tx, rx) = sync_channel(depth.max(1));
        let (demand, demand_rx) = if depth == 0 {
            let (d, r) = sync_channel::<()>(1);
            (Some(d), Some(r))
        } else {
            (None, None)
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("edkd-prefetch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    if let Some(d) = &demand_rx
                        && d.recv().is_err()
                    {
                        break;
                    }
                    let batch = loop {
                        match reader.try_next_batch() {
                            Ok(Some(b)) => break Ok(b),
                            // Epoch boundary: the next call starts one.
                            Ok(None) if !flag.load(Ordering::Relaxed) => continue,
                            Ok(None) => return,
                            Err(e) => break Err(e),
                        }
                    };
                    let batch = match batch {
                        Ok(b) => b,
                        Err(e) => {
                            // A bad shard (ids out of range, a corrupt row): the step reports
                            // it, naming file and row.
                            let _ = tx.send(Err(e.into()));
                            break;
                        }
                    };
                    let cursor = reader.cursor().clone();
                    let teacher = teacher
                        .as_ref()
                        .filter(|_| batch.rows > 0)
                        .map(|t| lock(t).score(&batch));
                    let item = Fetched {
                        batch,
                        teacher,
                        cursor,
                    };
                    if tx.send(Ok(item)).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn prefetch thread");
        Self {
            rx,
            demand,
            stop,
            handle: Some(handle),
        }
    }

    /// The next batch, waiting for the thread if it is behind.
    pub fn next(&self) -> Result<Fetched> {
        if let Some(d) = &self.demand {
            d.send(())
                .map_err(|_| Error::Source("the data/teacher prefetch thread stopped".into()))?;
        }
        self.rx
            .recv()
            .map_err(|_| Error::Source("the data/teacher prefetch thread stopped".into()))?
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // A thread waiting for demand sees the channel close.
        self.demand = None;
        // Unblock a send waiting for room.
        while self.rx.try_recv().is_ok() {}
        if let Some(h) = self.handle.take() {
            while !h.is_finished() {
                while self.rx.try_recv().is_ok() {}
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = h.join();
        }
    }
}
