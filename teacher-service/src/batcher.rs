//! The dynamic batcher: an actor thread that owns the model. Handlers send it [`Job`]s over a
//! bounded channel and await a oneshot reply; it groups queued jobs up to a token budget or
//! a short wait, and runs them as padded forward passes of similar lengths.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::scoring::{Scorer, SeqInput, SeqScores};

/// One request's sequences, waiting for the model.
pub struct Job {
    pub seqs: Vec<SeqInput>,
    /// Tokens fed to the model for this job.
    pub tokens: usize,
    pub reply: oneshot::Sender<Result<Vec<SeqScores>>>,
}

/// How the batcher groups work.
#[derive(Debug, Clone, Copy)]
pub struct BatcherConfig {
    /// Jobs waiting beyond this get [`Error::QueueFull`].
    pub queue_capacity: usize,
    /// Most tokens (padded rows x length) in one forward pass.
    pub batch_tokens: usize,
    /// How long the first job of a batch waits for company.
    pub max_wait: Duration,
}

/// The handlers' side of the actor. Dropping every clone stops the thread once the queue is
/// drained.
#[derive(Clone)]
pub struct Batcher {
    tx: SyncSender<Job>,
    capacity: usize,
    metrics: Arc<Metrics>,
}

impl Batcher {
    /// Starts the actor thread; it owns `scorer` until every [`Batcher`] clone is dropped.
    pub fn start(
        scorer: Scorer,
        config: BatcherConfig,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, JoinHandle<()>)> {
        let (tx, rx) = std::sync::mpsc::sync_channel(config.queue_capacity);
        let worker_metrics = metrics.clone();
        let handle = std::thread::Builder::new()
            .name("edkd-teacher-batcher".into())
            .spawn(move || run(scorer, rx, config, &worker_metrics))
            .map_err(Error::io("starting the batcher thread"))?;
        let batcher = Self {
            tx,
            capacity: config.queue_capacity,
            metrics,
        };
        Ok((batcher, handle))
    }

    /// Queues `seqs` and waits for their scores. Dropping the future (a cancelled RPC) lets
    /// the batcher skip the job.
    pub async fn score(&self, seqs: Vec<SeqInput>) -> Result<Vec<SeqScores>> {
        let (reply, rx) = oneshot::channel();
        let tokens = seqs.iter().map(SeqInput::input_len).sum();
        self.metrics.queue_depth.inc();
        match self.tx.try_send(Job {
            seqs,
            tokens,
            reply,
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.metrics.queue_depth.dec();
                return Err(Error::QueueFull {
                    capacity: self.capacity,
                });
            }
            Err(TrySendError::Disconnected(_)) => {
                self.metrics.queue_depth.dec();
                return Err(Error::ShuttingDown);
            }
        }
        rx.await.map_err(|_| Error::ShuttingDown)?
    }
}

fn run(scorer: Scorer, rx: Receiver<Job>, config: BatcherConfig, metrics: &Metrics) {
    let mut carry: Option<Job> = None;
    loop {
        let first = match carry.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => {
                    metrics.queue_depth.dec();
                    job
                }
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
                    metrics.queue_depth.dec();
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

/// Scores `jobs` (skipping cancelled ones) in forward passes of similar lengths within the
/// token budget, and replies to each.
fn run_jobs(scorer: &Scorer, jobs: Vec<Job>, budget: usize, metrics: &Metrics) {
    let jobs: Vec<Job> = jobs
        .into_iter()
        .filter(|j| {
            let live = !j.reply.is_closed();
            if !live {
                metrics.cancelled.inc();
            }
            live
        })
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
        let seqs: Vec<&SeqInput> = part.iter().map(|&(j, s)| &jobs[j].seqs[s]).collect();
        let padded = part.len() * seqs.last().map_or(0, |s| s.input_len());
        metrics.batch_tokens.observe(padded as f64);
        let began = Instant::now();
        match scorer.score(&seqs) {
            Ok(scores) => {
                let targets: usize = seqs.iter().map(|s| s.target.len()).sum();
                metrics.scored_tokens.inc_by(targets as u64);
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
