//! The dynamic batcher: an actor thread that owns the model. Handlers send it [`Job`]s over a
//! channel and await a oneshot reply; it groups queued jobs up to a token budget or a short
//! wait, and runs them as padded forward passes of similar lengths.
//!
//! Images are decoded here, on the batcher's thread, as their request is taken: never on the
//! async runtime, one image at a time, and only for the requests of the next passes (at
//! most a token budget's worth, each image counting its positions), so a full queue holds
//! encoded bytes, not pixels. A bad image fails its own request, not the pass.
//!
//! Admission is a semaphore of `queue_capacity` places. A request holds its place until the
//! batcher takes it or its caller goes away, so a cancelled request frees its place at once,
//! even while the batcher is busy with a long forward pass.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tch::Tensor;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, oneshot};

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::scoring::{Prepared, Scorer, SeqInput, SeqScores};

/// Scores the sequences of one forward pass: the [`Scorer`] in the server, a stand-in in tests.
pub trait ScoreBatch: Send + 'static {
    /// Decodes the images of a request's sequence `index` before it joins a pass (an error
    /// fails that request only). Default: a scorer that reads no images.
    fn prepare(&self, index: usize, seq: &SeqInput) -> Result<Option<Tensor>> {
        let _ = (index, seq);
        Ok(None)
    }

    fn score(&self, seqs: &[Prepared<'_>]) -> Result<Vec<SeqScores>>;
}

impl ScoreBatch for Scorer {
    fn prepare(&self, index: usize, seq: &SeqInput) -> Result<Option<Tensor>> {
        Scorer::prepare(self, index, seq)
    }

    fn score(&self, seqs: &[Prepared<'_>]) -> Result<Vec<SeqScores>> {
        Scorer::score_prepared(self, seqs)
    }
}

/// How the batcher groups work.
#[derive(Debug, Clone, Copy)]
pub struct BatcherConfig {
    /// Requests waiting beyond this get [`Error::QueueFull`].
    pub queue_capacity: usize,
    /// Most tokens (padded rows x length) in one forward pass.
    pub batch_tokens: usize,
    /// How long the first job of a batch waits for company.
    pub max_wait: Duration,
    /// libtorch intra-op threads of the batcher thread (it runs every forward pass); 0
    /// keeps the process-wide count.
    pub threads: usize,
}

/// An admitted request's place in the queue; freeing it lowers the queue-depth gauge.
struct Place {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.metrics.queue_depth.dec();
    }
}

/// A queued request's sequences and place.
struct Waiting {
    seqs: Vec<SeqInput>,
    _place: Place,
}

/// Shared by the caller and the queue: whichever comes first, the batcher taking the job or
/// the caller going away, takes the contents (and so frees the place exactly once).
type Slot = Arc<Mutex<Option<Waiting>>>;

fn take(slot: &Slot) -> Option<Waiting> {
    slot.lock().unwrap_or_else(PoisonError::into_inner).take()
}

/// Frees a request's place (and drops its sequences) if its caller goes away while it waits.
struct FreeOnDrop(Slot);

impl Drop for FreeOnDrop {
    fn drop(&mut self) {
        drop(take(&self.0));
    }
}

/// One request in the queue; empty once its caller has gone away.
struct Job {
    slot: Slot,
    /// Tokens fed to the model for this job.
    tokens: usize,
    reply: oneshot::Sender<Result<Vec<SeqScores>>>,
}

/// A job the batcher has taken: its place is free again and its sequences are the batcher's.
struct Taken {
    seqs: Vec<SeqInput>,
    tokens: usize,
    reply: oneshot::Sender<Result<Vec<SeqScores>>>,
}

/// A taken job whose images are decoded: `pixels[s]` for sequence `s`.
struct Ready {
    seqs: Vec<SeqInput>,
    pixels: Vec<Option<Tensor>>,
    reply: oneshot::Sender<Result<Vec<SeqScores>>>,
}

impl Job {
    /// Takes the job off the queue; `None` (counted as cancelled) if its caller went away.
    fn take(self, metrics: &Metrics) -> Option<Taken> {
        let Some(waiting) = take(&self.slot) else {
            metrics.cancelled.inc();
            return None;
        };
        Some(Taken {
            seqs: waiting.seqs,
            tokens: self.tokens,
            reply: self.reply,
        })
    }
}

/// The handlers' side of the actor. Dropping every clone stops the thread once the queue is
/// drained.
#[derive(Clone)]
pub struct Batcher {
    tx: Sender<Job>,
    places: Arc<Semaphore>,
    capacity: usize,
    metrics: Arc<Metrics>,
}

impl Batcher {
    /// Starts the actor thread; it owns `scorer` until every [`Batcher`] clone is dropped.
    pub fn start(
        scorer: impl ScoreBatch,
        config: BatcherConfig,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, JoinHandle<()>)> {
        // Unbounded: admission is the semaphore; a cancelled job left in the channel is a
        // few words (its sequences are dropped with its place).
        let (tx, rx) = std::sync::mpsc::channel();
        let worker_metrics = metrics.clone();
        let handle = std::thread::Builder::new()
            .name("edkd-teacher-batcher".into())
            .spawn(move || run(scorer, rx, config, &worker_metrics))
            .map_err(Error::io("starting the batcher thread"))?;
        let batcher = Self {
            tx,
            places: Arc::new(Semaphore::new(config.queue_capacity)),
            capacity: config.queue_capacity,
            metrics,
        };
        Ok((batcher, handle))
    }

    /// Queues `seqs` and waits for their scores. Dropping the future (a cancelled RPC) frees
    /// the request's place at once and lets the batcher skip it.
    pub async fn score(&self, seqs: Vec<SeqInput>) -> Result<Vec<SeqScores>> {
        let permit = match self.places.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => {
                return Err(Error::QueueFull {
                    capacity: self.capacity,
                });
            }
            Err(TryAcquireError::Closed) => return Err(Error::ShuttingDown),
        };
        self.metrics.queue_depth.inc();
        let tokens = seqs.iter().map(SeqInput::input_len).sum();
        let place = Place {
            _permit: permit,
            metrics: self.metrics.clone(),
        };
        let slot: Slot = Arc::new(Mutex::new(Some(Waiting {
            seqs,
            _place: place,
        })));
        let _free = FreeOnDrop(slot.clone());
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job {
                slot,
                tokens,
                reply,
            })
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }
}

fn run(scorer: impl ScoreBatch, rx: Receiver<Job>, config: BatcherConfig, metrics: &Metrics) {
    edkd_models::device::set_thread_intra_op_threads(config.threads);
    let mut carry: Option<Taken> = None;
    loop {
        let first = match carry.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => match job.take(metrics) {
                    Some(job) => job,
                    None => continue,
                },
                Err(_) => break,
            },
        };
        let mut tokens = first.tokens;
        let mut jobs = vec![first];
        let deadline = Instant::now() + config.max_wait;
        while tokens < config.batch_tokens {
            let wait = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(job) => {
                    let Some(job) = job.take(metrics) else {
                        continue;
                    };
                    if tokens + job.tokens > config.batch_tokens {
                        carry = Some(job);
                        break;
                    }
                    tokens += job.tokens;
                    jobs.push(job);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        run_jobs(&scorer, jobs, config.batch_tokens, metrics);
    }
}

/// Decodes the images of a job; a bad one answers the job with its error (naming the
/// sequence and image) and drops it.
fn prepare(scorer: &impl ScoreBatch, job: Taken) -> Option<Ready> {
    let pixels: Result<Vec<Option<Tensor>>> = job
        .seqs
        .iter()
        .enumerate()
        .map(|(i, s)| scorer.prepare(i, s))
        .collect();
    match pixels {
        Ok(pixels) => Some(Ready {
            seqs: job.seqs,
            pixels,
            reply: job.reply,
        }),
        Err(e) => {
            let _ = job.reply.send(Err(e));
            None
        }
    }
}

/// Scores `jobs` (skipping those whose caller has gone away) in forward passes of similar
/// lengths within the token budget, and replies to each.
fn run_jobs(scorer: &impl ScoreBatch, jobs: Vec<Taken>, budget: usize, metrics: &Metrics) {
    let jobs: Vec<Ready> = jobs
        .into_iter()
        .filter(|j| {
            let live = !j.reply.is_closed();
            if !live {
                metrics.cancelled.inc();
            }
            live
        })
        .filter_map(|j| prepare(scorer, j))
        .collect();
    // (job, sequence) sorted by length, so each pass pads little.
    let mut order: Vec<(usize, usize)> = jobs
        .iter()
        .enumerate()
        .flat_map(|(j, job)| (0..job.seqs.len()).map(move |s| (j, s)))
        .collect();
    order.sort_by_key(|&(j, s)| jobs[j].seqs[s].input_len());
    let mut results: Vec<Vec<Option<SeqScores>>> =
        jobs.iter().map(|j| vec![None; j.seqs.len()]).collect();
    let mut failed: Vec<Option<String>> = vec![None; jobs.len()];

    let mut start = 0;
    while start < order.len() {
        // Longest prefix whose padded size (rows x longest) fits the budget; at least one row.
        let mut end = start + 1;
        while end < order.len() {
            let (j, s) = order[end];
            let longest = jobs[j].seqs[s].input_len();
            if (end + 1 - start) * longest > budget {
                break;
            }
            end += 1;
        }
        let part = &order[start..end];
        let seqs: Vec<Prepared<'_>> = part
            .iter()
            .map(|&(j, s)| Prepared {
                seq: &jobs[j].seqs[s],
                pixels: jobs[j].pixels[s].as_ref(),
            })
            .collect();
        let padded = part.len() * seqs.last().map_or(0, |s| s.seq.input_len());
        metrics.batch_tokens.observe(padded as f64);
        let began = Instant::now();
        match scorer.score(&seqs) {
            Ok(scores) => {
                let targets: usize = seqs.iter().map(|s| s.seq.target.len()).sum();
                let images: usize = seqs.iter().map(|s| s.seq.images.len()).sum();
                metrics.scored_tokens.inc_by(targets as u64);
                metrics.scored_images.inc_by(images as u64);
                metrics
                    .forward_seconds
                    .observe(began.elapsed().as_secs_f64());
                for (&(j, s), score) in part.iter().zip(scores) {
                    results[j][s] = Some(score);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, rows = part.len(), "batch failed");
                for &(j, _) in part {
                    failed[j] = Some(e.to_string());
                }
            }
        }
        start = end;
    }

    for ((job, scores), failure) in jobs.into_iter().zip(results).zip(failed) {
        let reply = match failure {
            Some(message) => Err(Error::Model(message)),
            None => Ok(scores.into_iter().map(Option::unwrap_or_default).collect()),
        };
        // The handler may have gone away meanwhile; nothing to do then.
        let _ = job.reply.send(reply);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    /// Blocks in every forward pass until released (or until its gate is dropped).
    struct Gated {
        entered: mpsc::Sender<()>,
        gate: mpsc::Receiver<()>,
        scored: Arc<AtomicUsize>,
    }

    impl ScoreBatch for Gated {
        fn score(&self, seqs: &[Prepared<'_>]) -> Result<Vec<SeqScores>> {
            let _ = self.entered.send(());
            let _ = self.gate.recv();
            self.scored.fetch_add(seqs.len(), Ordering::SeqCst);
            Ok(seqs
                .iter()
                .map(|s| SeqScores {
                    k: s.seq.k,
                    ..SeqScores::default()
                })
                .collect())
        }
    }

    fn seqs() -> Vec<SeqInput> {
        vec![SeqInput {
            prompt: vec![1, 2],
            target: vec![3],
            k: 1,
            temperature: 1.0,
            ..SeqInput::default()
        }]
    }

    async fn until(what: &str, cond: impl Fn() -> bool) {
        let started = Instant::now();
        while !cond() {
            assert!(started.elapsed() < WAIT, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_request_frees_its_place_while_the_batcher_is_busy() {
        const CAPACITY: usize = 2;
        let metrics = Arc::new(Metrics::new().unwrap());
        let (entered_tx, entered) = mpsc::channel();
        let (release, gate) = mpsc::channel();
        let scored = Arc::new(AtomicUsize::new(0));
        let scorer = Gated {
            entered: entered_tx,
            gate,
            scored: scored.clone(),
        };
        let config = BatcherConfig {
            queue_capacity: CAPACITY,
            batch_tokens: 1024,
            max_wait: Duration::ZERO,
            threads: 0,
        };
        let (batcher, worker) = Batcher::start(scorer, config, metrics.clone()).unwrap();
        let submit = |batcher: &Batcher| {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.score(seqs()).await })
        };

        // The batcher takes the first request and stays in its forward pass.
        let busy = submit(&batcher);
        tokio::task::spawn_blocking(move || entered.recv_timeout(WAIT))
            .await
            .unwrap()
            .expect("the batcher starts a forward pass");
        // Fill the queue behind it: the next request is refused.
        let waiting: Vec<_> = (0..CAPACITY).map(|_| submit(&batcher)).collect();
        until("the queue is full", || {
            metrics.queue_depth.get() == CAPACITY as i64
        })
        .await;
        assert!(matches!(
            batcher.score(seqs()).await,
            Err(Error::QueueFull { capacity: CAPACITY })
        ));

        // Cancelling the waiting requests frees their places although the batcher is busy.
        for task in &waiting {
            task.abort();
        }
        for task in waiting {
            assert!(task.await.unwrap_err().is_cancelled());
        }
        assert_eq!(metrics.queue_depth.get(), 0);
        let fresh: Vec<_> = (0..CAPACITY).map(|_| submit(&batcher)).collect();
        until("the fresh requests are queued", || {
            metrics.queue_depth.get() == CAPACITY as i64 || fresh.iter().any(|t| t.is_finished())
        })
        .await;

        drop(release);
        assert_eq!(busy.await.unwrap().unwrap().len(), 1);
        for task in fresh {
            assert_eq!(task.await.unwrap().expect("admitted and scored").len(), 1);
        }
        assert_eq!(metrics.queue_depth.get(), 0);
        // The batcher skipped the cancelled requests instead of scoring them.
        assert_eq!(metrics.cancelled.get(), CAPACITY as u64);
        assert_eq!(scored.load(Ordering::SeqCst), 1 + CAPACITY);
        drop(batcher);
        worker.join().unwrap();
    }
}
