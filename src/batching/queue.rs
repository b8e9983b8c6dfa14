//! The one queue between everything and the device worker.
//!
//! Two lanes: online requests and job lines. A device batch is filled from the online lane
//! first, so an online request never waits behind job lines that are still queued; job lines
//! fill what is left of the token budget, so the device never idles while a job has lines.
//!
//! An entry whose caller has gone (its reply receiver dropped: the client disconnected, or
//! another input of its request failed first) is dropped before it reaches the device, and
//! its admission slot with it. Every path that changes a lane updates the depth gauges.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::admission::AdmissionGuard;
use super::select;
use crate::metrics::Metrics;
use crate::model::{Output, Want};
use crate::priority::Priority;
use crate::tokenize::Encoded;

/// Why an accepted input got no embedding. Every accepted input ends with a vector or one of
/// these: nothing is dropped silently.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum InferError {
    #[error("the input waited {0:?} in the queue, longer than --max-queue-time")]
    QueueTimeout(Duration),
    #[error("the server is shutting down and the drain deadline passed; retry on another replica")]
    DrainDeadline,
    #[error("the model failed on this batch: {0}")]
    Backend(String),
    #[error(
        "the model produced a non-finite value (NaN or infinity) for this input, usually a \
         float16 overflow: restart with --dtype bfloat16 (or float32)"
    )]
    NonFinite,
    #[error("the device worker has stopped")]
    WorkerStopped,
}

/// One input's result and where its time went.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub output: Output,
    /// From submission to the start of its device batch.
    pub queue_time: Duration,
    /// Its device batch's compute time.
    pub compute_time: Duration,
    /// Its share of that time, by its tokens: what it cost the device (job cost accounting).
    pub device_share: Duration,
    /// The device batch that carried it (tracing).
    pub batch: BatchInfo,
}

/// A device batch as its inputs' answers report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchInfo {
    /// Distinct per batch within the process.
    pub id: u64,
    /// Inputs and real tokens in the batch.
    pub size: usize,
    pub tokens: usize,
}

pub type Reply = oneshot::Sender<Result<Answer, InferError>>;

pub struct Entry {
    pub encoded: Encoded,
    /// The outputs this input asks for.
    pub want: Want,
    pub enqueued: Instant,
    pub reply: Reply,
    /// This input's slot of `--max-concurrent-requests` (online inputs), released as it is
    /// answered or dropped.
    pub admitted: Option<AdmissionGuard>,
}

impl Entry {
    /// Sends the result. The slot is released first, so a client that sends its next request
    /// as soon as this one is answered finds it free.
    pub fn answer(self, result: Result<Answer, InferError>) {
        let Entry {
            reply, admitted, ..
        } = self;
        drop(admitted);
        let _ = reply.send(result);
    }

    /// Nobody waits for this input's result any more.
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

/// A device batch: inputs taken off the queue to run together.
pub struct DeviceBatch {
    pub entries: Vec<Entry>,
    /// What the batch costs the backend: `inputs x longest` where it pads, else the sum.
    pub tokens: usize,
    /// How many of the entries came from the online lane (the rest are job lines).
    pub online: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_batch_tokens: usize,
    pub max_batch_requests: usize,
    pub max_queue_time: Duration,
    /// Target compute time of a device batch that carries job lines: job lines fill a batch
    /// only up to the tokens this allows at the measured speed, so an online request arriving
    /// while job work computes waits at most about this long.
    pub job_slice: Duration,
}

/// Fewest tokens a batch may carry for job lines, however slow the device.
const MIN_JOB_TOKENS: usize = 64;

struct Lanes {
    online: VecDeque<Entry>,
    jobs: VecDeque<Entry>,
    closed: bool,
    /// A batch is on the device.
    computing: bool,
}

pub struct Queue {
    /// `limits.max_batch_tokens`, adjusted once the model is loaded (its longest input, the
    /// memory a GPU leaves free).
    token_budget: std::sync::atomic::AtomicUsize,
    /// Exponentially weighted seconds per batch token, as f64 bits (0 = not measured yet).
    secs_per_token: std::sync::atomic::AtomicU64,
    /// Group similar lengths (the backend pads to the longest) or take inputs first come.
    length_aware: std::sync::atomic::AtomicBool,
    lanes: Mutex<Lanes>,
    ready: Condvar,
    limits: BatchLimits,
    metrics: Arc<Metrics>,
}

impl Queue {
    pub fn new(limits: BatchLimits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            token_budget: std::sync::atomic::AtomicUsize::new(limits.max_batch_tokens),
            secs_per_token: std::sync::atomic::AtomicU64::new(0),
            length_aware: std::sync::atomic::AtomicBool::new(true),
            lanes: Mutex::new(Lanes {
                online: VecDeque::new(),
                jobs: VecDeque::new(),
                closed: false,
                computing: false,
            }),
            ready: Condvar::new(),
            limits,
            metrics,
        })
    }

    /// The limits in force (the token budget as adjusted).
    pub fn limits(&self) -> BatchLimits {
        BatchLimits {
            max_batch_tokens: self.token_budget(),
            ..self.limits
        }
    }

    pub fn token_budget(&self) -> usize {
        self.token_budget.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets the token budget of a device batch (at start, before traffic).
    pub fn set_token_budget(&self, tokens: usize) {
        self.token_budget
            .store(tokens.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Lowers the token budget (never raises it): the worker's cap to what fits the GPU.
    pub fn cap_max_batch_tokens(&self, tokens: usize) {
        self.token_budget
            .fetch_min(tokens.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Set by the worker from the loaded model (`ModelSummary::pads_to_longest`).
    pub fn set_length_aware(&self, on: bool) {
        self.length_aware
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, Lanes> {
        // A panic while holding the lock cannot leave the lanes inconsistent (every mutation is
        // a single push/pop), so a poisoned lock is still usable.
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enqueues inputs; returns receivers in input order. Each input takes one slot of
    /// `admitted` onto its entry. After `close` the entries are answered with `DrainDeadline`
    /// at once.
    pub fn submit(
        &self,
        inputs: Vec<Encoded>,
        want: Want,
        priority: Priority,
        mut admitted: Option<AdmissionGuard>,
    ) -> Vec<oneshot::Receiver<Result<Answer, InferError>>> {
        let now = Instant::now();
        let mut rxs = Vec::with_capacity(inputs.len());
        let mut lanes = self.lock();
        for encoded in inputs {
            let (reply, rx) = oneshot::channel();
            rxs.push(rx);
            let entry = Entry {
                encoded,
                want,
                enqueued: now,
                reply,
                admitted: admitted.as_mut().and_then(AdmissionGuard::take_one),
            };
            if lanes.closed {
                entry.answer(Err(InferError::DrainDeadline));
                continue;
            }
            match priority {
                Priority::Online => lanes.online.push_back(entry),
                Priority::Job => lanes.jobs.push_back(entry),
            }
        }
        self.update_depth(&lanes);
        drop(lanes);
        self.ready.notify_one();
        rxs
    }

    fn update_depth(&self, lanes: &Lanes) {
        self.metrics.queue_depth.set(lanes.online.len() as i64);
        self.metrics.tei.queue_size.set(lanes.online.len() as i64);
    }

    /// Drops the entries nobody waits for, then answers those past their deadline, and sets
    /// the gauges to what is left.
    fn settle(&self, lanes: &mut Lanes) {
        self.drop_abandoned_in(lanes);
        self.expire(lanes);
        self.update_depth(lanes);
    }

    /// Drops queued entries whose caller has gone, releasing their admission slots; returns
    /// how many. Also called when admission is refused, so slots held by vanished clients are
    /// free before a live request is turned away.
    pub fn drop_abandoned(&self) -> usize {
        let mut lanes = self.lock();
        let n = self.drop_abandoned_in(&mut lanes);
        if n > 0 {
            self.update_depth(&lanes);
        }
        n
    }

    fn drop_abandoned_in(&self, lanes: &mut Lanes) -> usize {
        let before = lanes.online.len() + lanes.jobs.len();
        lanes.online.retain(|e| !e.abandoned());
        lanes.jobs.retain(|e| !e.abandoned());
        let n = before - lanes.online.len() - lanes.jobs.len();
        self.metrics.queue_abandoned.inc_by(n as u64);
        n
    }

    /// Blocks until a batch is ready or the queue is closed and empty (`None`).
    pub fn next_batch(&self) -> Option<DeviceBatch> {
        let mut lanes = self.lock();
        loop {
            lanes.computing = false;
            self.settle(&mut lanes);
            if !lanes.online.is_empty() || !lanes.jobs.is_empty() {
                let batch = self.take(&mut lanes);
                lanes.computing = true;
                self.update_depth(&lanes);
                return Some(batch);
            }
            if lanes.closed {
                return None;
            }
            // Wake periodically so queue-time deadlines fire even without new arrivals.
            lanes = self
                .ready
                .wait_timeout(lanes, Duration::from_millis(250))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Answers entries that waited longer than `max_queue_time` (online lane only: job lines
    /// are resumable work and wait as long as it takes).
    fn expire(&self, lanes: &mut Lanes) {
        let max = self.limits.max_queue_time;
        while let Some(front) = lanes.online.front() {
            let waited = front.enqueued.elapsed();
            if waited <= max {
                break;
            }
            if let Some(e) = lanes.online.pop_front() {
                self.metrics
                    .rejected_total
                    .with_label_values(&["deadline"])
                    .inc();
                e.answer(Err(InferError::QueueTimeout(waited)));
            }
        }
    }

    /// Records how long a batch took, for the job-line token cap.
    pub fn record_batch(&self, tokens: usize, elapsed: Duration) {
        use std::sync::atomic::Ordering;
        if tokens == 0 {
            return;
        }
        let sample = elapsed.as_secs_f64() / tokens as f64;
        let old = f64::from_bits(self.secs_per_token.load(Ordering::Relaxed));
        let new = if old == 0.0 {
            sample
        } else {
            0.8 * old + 0.2 * sample
        };
        self.secs_per_token.store(new.to_bits(), Ordering::Relaxed);
    }

    /// Tokens a batch may reach while adding job lines.
    pub fn job_token_cap(&self) -> usize {
        let spt = f64::from_bits(
            self.secs_per_token
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        let max = self.token_budget();
        if spt <= 0.0 {
            return MIN_JOB_TOKENS.min(max);
        }
        ((self.limits.job_slice.as_secs_f64() / spt) as usize).clamp(MIN_JOB_TOKENS.min(max), max)
    }

    /// Fills one batch under the token budget and the request limit, online lane first, then
    /// job lines only up to the job-slice cap. On a padding backend tokens count as
    /// `inputs x longest` and the batch groups similar lengths (`select::pick`); on a
    /// padding-free one they count as they are and inputs go first come (`select::first_come`).
    fn take(&self, lanes: &mut Lanes) -> DeviceBatch {
        let lim = self.limits();
        let max_inputs = lim.max_batch_requests.max(1);
        let aware = self.length_aware.load(std::sync::atomic::Ordering::Relaxed);
        let job_cap = self.job_token_cap();
        let mut entries = Vec::new();
        if !lanes.online.is_empty() {
            entries = take_chosen(&mut lanes.online, |lens| {
                if aware {
                    select::pick(lens, lim.max_batch_tokens, max_inputs)
                } else {
                    select::first_come(lens, lim.max_batch_tokens, max_inputs, 0, 0)
                }
            });
        }
        let online = entries.len();
        let longest = lens_of(&entries).max().unwrap_or(0);
        if !lanes.jobs.is_empty() && online < max_inputs {
            let sum: usize = lens_of(&entries).sum();
            let lines = take_chosen(&mut lanes.jobs, |l| {
                if !aware {
                    select::first_come(l, job_cap, max_inputs, online, sum)
                } else if online == 0 {
                    select::pick(l, job_cap, max_inputs)
                } else {
                    // Job lines fill the free slots, no longer than the batch's longest input.
                    let slots = (job_cap / longest.max(1))
                        .min(max_inputs)
                        .saturating_sub(online);
                    select::fill(l, longest, slots)
                }
            });
            entries.extend(lines);
        }
        let tokens = if aware {
            entries.len() * lens_of(&entries).max().unwrap_or(0)
        } else {
            lens_of(&entries).sum()
        };
        DeviceBatch {
            tokens,
            entries,
            online,
        }
    }

    /// Online inputs only, without waiting: what the worker runs between the layers of a
    /// job-only batch so an online request never waits for a whole job batch.
    pub fn take_online_now(&self) -> Option<DeviceBatch> {
        let mut lanes = self.lock();
        self.settle(&mut lanes);
        if lanes.online.is_empty() {
            return None;
        }
        // Same budget rules, with the job lane left alone.
        let jobs = std::mem::take(&mut lanes.jobs);
        let batch = self.take(&mut lanes);
        lanes.jobs = jobs;
        self.update_depth(&lanes);
        Some(batch)
    }

    /// True when online inputs are waiting (cheap; polled at yield points).
    pub fn online_waiting(&self) -> bool {
        !self.lock().online.is_empty()
    }

    /// Stops accepting: later submissions are answered at once.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Answers everything still queued with `err` (the drain deadline). Returns how many.
    pub fn fail_pending(&self, err: InferError) -> usize {
        let mut lanes = self.lock();
        let mut n = 0;
        let lanes_ref = &mut *lanes;
        for lane in [&mut lanes_ref.online, &mut lanes_ref.jobs] {
            for e in lane.drain(..) {
                e.answer(Err(err.clone()));
                n += 1;
            }
        }
        self.update_depth(&lanes);
        n
    }

    /// Nothing queued and nothing on the device.
    pub fn is_idle(&self) -> bool {
        let lanes = self.lock();
        lanes.online.is_empty() && lanes.jobs.is_empty() && !lanes.computing
    }

    /// (online, job) inputs waiting.
    pub fn depths(&self) -> (usize, usize) {
        let lanes = self.lock();
        (lanes.online.len(), lanes.jobs.len())
    }
}

fn lens_of(entries: &[Entry]) -> impl Iterator<Item = usize> + '_ {
    entries.iter().map(|e| e.encoded.ids.len())
}

/// Removes the entries `choose` picks (indices into the lane's token counts, ascending) from
/// `lane`, keeping the rest in queue order.
fn take_chosen(
    lane: &mut VecDeque<Entry>,
    choose: impl FnOnce(&[usize]) -> Vec<usize>,
) -> Vec<Entry> {
    let lens: Vec<usize> = lane
        .iter()
        .take(select::WINDOW)
        .map(|e| e.encoded.ids.len())
        .collect();
    let chosen = choose(&lens);
    if chosen.iter().enumerate().all(|(k, &i)| k == i) {
        // A prefix (first come, or everything fits): no reshuffle.
        return lane.drain(..chosen.len()).collect();
    }
    let mut is_chosen = vec![false; lens.len()];
    for &i in &chosen {
        is_chosen[i] = true;
    }
    let mut picked = Vec::with_capacity(chosen.len());
    let mut rest = VecDeque::with_capacity(lane.len());
    for (i, e) in lane.drain(..).enumerate() {
        if is_chosen.get(i).copied().unwrap_or(false) {
            picked.push(e);
        } else {
            rest.push_back(e);
        }
    }
    *lane = rest;
    picked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batching::Admission;

    fn enc(len: usize) -> Encoded {
        Encoded {
            ids: vec![1; len],
            type_ids: vec![0; len],
        }
    }

    fn queue(tokens: usize, requests: usize) -> Arc<Queue> {
        Queue::new(
            BatchLimits {
                max_batch_tokens: tokens,
                max_batch_requests: requests,
                max_queue_time: Duration::from_secs(30),
                job_slice: Duration::from_secs(1),
            },
            Metrics::new(),
        )
    }

    #[test]
    fn batches_respect_padded_token_budget() {
        let q = queue(100, 1000);
        let _rx = q.submit(
            vec![enc(10), enc(10), enc(40), enc(10)],
            Want::POOLED,
            Priority::Online,
            None,
        );
        // The three 10-token inputs go together (30 padded tokens); the 40-token one would
        // have padded them to 4 x 40 = 160 > 100, so it goes next, alone.
        let b = q.next_batch().unwrap();
        assert_eq!(b.entries.len(), 3);
        assert_eq!(b.tokens, 30);
        let b = q.next_batch().unwrap();
        assert_eq!(b.entries.len(), 1);
        assert_eq!(b.tokens, 40);
    }

    #[test]
    fn padding_free_backends_get_first_come_batches() {
        let q = queue(100, 1000);
        q.set_length_aware(false);
        let _rx = q.submit(
            vec![enc(10), enc(10), enc(40), enc(10)],
            Want::POOLED,
            Priority::Online,
            None,
        );
        // Real tokens count: 10 + 10 + 40 + 10 = 70 fits, in arrival order.
        let b = q.next_batch().unwrap();
        assert_eq!((b.entries.len(), b.tokens), (4, 70));
        let _rx = q.submit(
            vec![enc(60), enc(30), enc(20)],
            Want::POOLED,
            Priority::Online,
            None,
        );
        let b = q.next_batch().unwrap();
        assert_eq!((b.entries.len(), b.tokens), (2, 90));
        q.next_batch().unwrap();
        // Job lines fill up to the cap (64 tokens until measured) after online inputs.
        let _j = q.submit(
            vec![enc(20), enc(20), enc(20)],
            Want::POOLED,
            Priority::Job,
            None,
        );
        let _o = q.submit(vec![enc(10)], Want::POOLED, Priority::Online, None);
        let b = q.next_batch().unwrap();
        assert_eq!((b.entries.len(), b.online, b.tokens), (3, 1, 50));
    }

    #[test]
    fn online_goes_before_batch_lines_and_lines_fill_the_rest() {
        let q = queue(1000, 3);
        let _b = q.submit(vec![enc(5), enc(5)], Want::POOLED, Priority::Job, None);
        let _o = q.submit(vec![enc(5), enc(5)], Want::POOLED, Priority::Online, None);
        let b = q.next_batch().unwrap();
        assert_eq!(b.entries.len(), 3);
        assert_eq!(q.depths(), (0, 1));
    }

    #[test]
    fn job_lines_fill_only_up_to_the_measured_slice() {
        let q = queue(10_000, 1000);
        // Not measured yet: the minimum cap (64 padded tokens) applies to job lines.
        let _j = q.submit(
            (0..20).map(|_| enc(16)).collect(),
            Want::POOLED,
            Priority::Job,
            None,
        );
        assert_eq!(q.next_batch().unwrap().entries.len(), 4);
        // 1 ms per token and a 1 s slice: 1000 tokens, i.e. 62 inputs of 16.
        q.record_batch(100, Duration::from_millis(100));
        assert_eq!(q.job_token_cap(), 1000);
        let b = q.next_batch().unwrap();
        assert_eq!(b.entries.len(), 16, "what is left");
        // Online inputs are not limited by the job cap.
        q.record_batch(1, Duration::from_secs(10));
        let _o = q.submit(
            (0..20).map(|_| enc(16)).collect(),
            Want::POOLED,
            Priority::Online,
            None,
        );
        assert_eq!(q.next_batch().unwrap().entries.len(), 20);
    }

    #[test]
    fn online_inputs_can_be_taken_alone_without_waiting() {
        let q = queue(1000, 100);
        assert!(q.take_online_now().is_none());
        let _j = q.submit(vec![enc(5), enc(5)], Want::POOLED, Priority::Job, None);
        assert!(!q.online_waiting());
        let _o = q.submit(vec![enc(5)], Want::POOLED, Priority::Online, None);
        assert!(q.online_waiting());
        let b = q.take_online_now().unwrap();
        assert_eq!((b.entries.len(), b.online), (1, 1));
        assert_eq!(q.depths(), (0, 2), "job lines stay queued");
        let b = q.next_batch().unwrap();
        assert_eq!((b.entries.len(), b.online), (2, 0));
    }

    #[test]
    fn an_input_over_budget_still_runs_alone() {
        let q = queue(10, 8);
        let _rx = q.submit(vec![enc(50), enc(1)], Want::POOLED, Priority::Online, None);
        assert_eq!(q.next_batch().unwrap().entries.len(), 1);
        assert_eq!(q.next_batch().unwrap().entries.len(), 1);
    }

    #[test]
    fn expired_and_drained_entries_are_answered_not_dropped() {
        let q = Queue::new(
            BatchLimits {
                max_batch_tokens: 100,
                max_batch_requests: 10,
                max_queue_time: Duration::from_millis(0),
                job_slice: Duration::from_secs(1),
            },
            Metrics::new(),
        );
        let mut rx = q.submit(vec![enc(3)], Want::POOLED, Priority::Online, None);
        std::thread::sleep(Duration::from_millis(2));
        q.close();
        assert!(q.next_batch().is_none());
        assert!(matches!(
            rx.remove(0).try_recv(),
            Ok(Err(InferError::QueueTimeout(_)))
        ));
        let mut late = q.submit(vec![enc(3)], Want::POOLED, Priority::Online, None);
        assert_eq!(
            late.remove(0).try_recv(),
            Ok(Err(InferError::DrainDeadline))
        );

        let q = queue(100, 10);
        let mut rx = q.submit(vec![enc(3)], Want::POOLED, Priority::Job, None);
        assert_eq!(q.fail_pending(InferError::DrainDeadline), 1);
        assert_eq!(rx.remove(0).try_recv(), Ok(Err(InferError::DrainDeadline)));
        assert!(q.is_idle());
    }

    fn depth(m: &Metrics) -> (i64, i64) {
        (m.queue_depth.get(), m.tei.queue_size.get())
    }

    #[test]
    fn inputs_whose_caller_is_gone_never_reach_the_device_and_free_their_slots() {
        let metrics = Metrics::new();
        let q = Queue::new(
            BatchLimits {
                max_batch_tokens: 1000,
                max_batch_requests: 100,
                max_queue_time: Duration::from_secs(30),
                job_slice: Duration::from_secs(1),
            },
            metrics.clone(),
        );
        let admission = Admission::new(10, metrics.admitted_inputs.clone());
        let gone = q.submit(
            vec![enc(3), enc(3)],
            Want::POOLED,
            Priority::Online,
            admission.try_admit(2),
        );
        let mut live = q.submit(
            vec![enc(3), enc(4), enc(5)],
            Want::POOLED,
            Priority::Online,
            admission.try_admit(3),
        );
        let lines = q.submit(vec![enc(3)], Want::POOLED, Priority::Job, None);
        assert_eq!(
            (admission.inflight(), metrics.admitted_inputs.get()),
            (5, 5)
        );
        // A client that disconnected; the rest of a request after its first input failed; a
        // job line nobody waits for.
        drop(gone);
        drop(live.remove(2));
        drop(lines);
        let b = q.next_batch().unwrap();
        let lens: Vec<usize> = b.entries.iter().map(|e| e.encoded.ids.len()).collect();
        assert_eq!(lens, vec![3, 4], "only inputs someone waits for");
        assert_eq!(metrics.queue_abandoned.get(), 4);
        assert_eq!(
            admission.inflight(),
            2,
            "dropped inputs released their slots"
        );
        assert_eq!(depth(&metrics), (0, 0));
        for e in b.entries {
            e.answer(Err(InferError::Backend("test".into())));
        }
        assert_eq!(
            (admission.inflight(), metrics.admitted_inputs.get()),
            (0, 0)
        );
        for rx in live {
            assert!(rx.blocking_recv().is_ok(), "answered");
        }

        // Dropped on demand too (admission refused), without a batch being taken.
        let gone = q.submit(
            vec![enc(3); 4],
            Want::POOLED,
            Priority::Online,
            admission.try_admit(4),
        );
        assert_eq!(depth(&metrics), (4, 4));
        assert_eq!(q.drop_abandoned(), 0, "still waited for");
        drop(gone);
        assert_eq!(q.drop_abandoned(), 4);
        assert_eq!(depth(&metrics), (0, 0));
        assert_eq!(
            (admission.inflight(), metrics.queue_abandoned.get()),
            (0, 8)
        );
        assert!(q.take_online_now().is_none());
    }

    #[test]
    fn every_change_to_the_queue_updates_the_depth_gauges() {
        let metrics = Metrics::new();
        let q = Queue::new(
            BatchLimits {
                max_batch_tokens: 1000,
                max_batch_requests: 2,
                max_queue_time: Duration::from_millis(0),
                job_slice: Duration::from_secs(1),
            },
            metrics.clone(),
        );
        let admission = Admission::new(10, metrics.admitted_inputs.clone());
        // Enqueue.
        let _rx = q.submit(
            vec![enc(3); 3],
            Want::POOLED,
            Priority::Online,
            admission.try_admit(3),
        );
        assert_eq!(depth(&metrics), (3, 3));
        // Deadline drop with nothing left to run: the gauge must not keep the old depth.
        std::thread::sleep(Duration::from_millis(2));
        assert!(q.take_online_now().is_none());
        assert_eq!(depth(&metrics), (0, 0));
        assert_eq!(
            admission.inflight(),
            0,
            "expired inputs released their slots"
        );
        let _rx = q.submit(vec![enc(3); 2], Want::POOLED, Priority::Online, None);
        std::thread::sleep(Duration::from_millis(2));
        let _job = q.submit(vec![enc(3)], Want::POOLED, Priority::Job, None);
        let b = q.next_batch().unwrap();
        assert_eq!(
            (b.entries.len(), b.online),
            (1, 0),
            "only the job line is left"
        );
        assert_eq!(depth(&metrics), (0, 0));

        // Batch taken.
        let q = queue(1000, 2);
        let metrics = q.metrics.clone();
        let _rx = q.submit(vec![enc(3); 3], Want::POOLED, Priority::Online, None);
        q.next_batch().unwrap();
        assert_eq!(depth(&metrics), (1, 1));
        // Drain.
        assert_eq!(q.fail_pending(InferError::DrainDeadline), 1);
        assert_eq!(depth(&metrics), (0, 0));
        // Client gone, found when the next batch is due.
        let rx = q.submit(vec![enc(3); 2], Want::POOLED, Priority::Online, None);
        assert_eq!(depth(&metrics), (2, 2));
        drop(rx);
        q.close();
        assert!(q.next_batch().is_none());
        assert_eq!(depth(&metrics), (0, 0));
    }
}
