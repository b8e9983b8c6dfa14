//! The tokenizer pool: N threads, each with its own tokenizer copies, fed by two channels.
//!
//! Tokenising on dedicated threads keeps it off the async runtime and off the device worker, so
//! the next batch is tokenised while the device computes the current one; the pool size is the
//! CPU budget left over from the matmul threads. Online requests have their own channel that
//! every thread drains first: a job queues hundreds of lines at once, and an online query
//! must not wait behind them.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};
use tokio::sync::oneshot;

use crate::priority::Priority;

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum TokenizeError {
    #[error("input {index} has {len} tokens, more than the model's maximum of {max}; shorten it or set truncate=true")]
    TooLong {
        index: usize,
        len: usize,
        max: usize,
    },
    #[error("input {index} is empty")]
    Empty { index: usize },
    #[error("input {index}: token id {id} is not in the vocabulary (size {vocab})")]
    BadTokenId { index: usize, id: u32, vocab: usize },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("the tokenizer pool has stopped")]
    Stopped,
}

/// One input as the client sent it.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Text(String),
    Ids(Vec<u32>),
    /// A text pair (cross-encoders: query and passage), joined by the tokenizer's pair template.
    Pair(String, String),
    /// A prompt around a text, each part tokenised without special tokens and joined; only
    /// `body` is cut when the whole is too long (Qwen3-Reranker's system prompt and answer
    /// prefix must survive truncation).
    Prompted {
        prefix: String,
        body: String,
        suffix: String,
    },
}

/// One input ready for the device.
#[derive(Debug, Clone, Default)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

/// How to encode a request's inputs.
#[derive(Debug, Clone, Copy)]
pub struct EncodeOptions {
    pub truncate: bool,
    pub direction: TruncationDirection,
    pub add_special_tokens: bool,
}

/// A token as `/tokenize` reports it.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct TokenInfo {
    pub id: u32,
    pub text: String,
    pub special: bool,
    pub start: Option<usize>,
    pub stop: Option<usize>,
}

/// The tokenizers one worker owns: an untruncated one (to detect over-long inputs) and one
/// truncating per direction (so truncation re-applies the special tokens correctly).
pub struct Tokenizers {
    plain: Tokenizer,
    right: Tokenizer,
    left: Tokenizer,
    pub max_length: usize,
    pub vocab_size: usize,
}

impl Tokenizers {
    pub fn from_file(
        path: &Path,
        max_length: usize,
        vocab_size: usize,
    ) -> Result<Self, TokenizeError> {
        let mut plain = Tokenizer::from_file(path)
            .map_err(|e| TokenizeError::Tokenizer(format!("{}: {e}", path.display())))?;
        // tokenizer.json files often carry padding/truncation settings for training; the server
        // decides both itself.
        plain.with_padding(None);
        plain
            .with_truncation(None)
            .map_err(|e| TokenizeError::Tokenizer(e.to_string()))?;
        let truncating = |direction| -> Result<Tokenizer, TokenizeError> {
            let mut t = plain.clone();
            t.with_truncation(Some(TruncationParams {
                max_length,
                direction,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| TokenizeError::Tokenizer(e.to_string()))?;
            Ok(t)
        };
        Ok(Self {
            right: truncating(TruncationDirection::Right)?,
            left: truncating(TruncationDirection::Left)?,
            plain,
            max_length,
            vocab_size,
        })
    }

    pub fn encode(
        &self,
        index: usize,
        input: &Input,
        opts: EncodeOptions,
    ) -> Result<Encoded, TokenizeError> {
        match input {
            Input::Text(text) => {
                if text.is_empty() {
                    return Err(TokenizeError::Empty { index });
                }
                let enc = self
                    .plain
                    .encode_fast(text.as_str(), opts.add_special_tokens)
                    .map_err(|e| TokenizeError::Tokenizer(e.to_string()))?;
                let enc = if enc.len() <= self.max_length {
                    enc
                } else if opts.truncate {
                    let t = match opts.direction {
                        TruncationDirection::Right => &self.right,
                        TruncationDirection::Left => &self.left,
                    };
                    t.encode_fast(text.as_str(), opts.add_special_tokens)
                        .map_err(|e| TokenizeError::Tokenizer(e.to_string()))?
                } else {
                    return Err(TokenizeError::TooLong {
                        index,
                        len: enc.len(),
                        max: self.max_length,
                    });
                };
                if enc.is_empty() {
                    return Err(TokenizeError::Empty { index });
                }
                Ok(Encoded {
                    ids: enc.get_ids().to_vec(),
                    type_ids: enc.get_type_ids().to_vec(),
                })
            }
            Input::Pair(a, b) => {
                if a.is_empty() || b.is_empty() {
                    return Err(TokenizeError::Empty { index });
                }
                let pair = || (a.as_str(), b.as_str());
                let enc = self
                    .plain
                    .encode(pair(), opts.add_special_tokens)
                    .map_err(|e| TokenizeError::Tokenizer(e.to_string()))?;
                let enc = if enc.len() <= self.max_length {
                    enc
                } else if opts.truncate {
                    let t = match opts.direction {
                        TruncationDirection::Right => &self.right,
                        TruncationDirection::Left => &self.left,
                    };
                    t.encode(pair(), opts.add_special_tokens)
                        .map_err(|e| TokenizeError::Tokenizer(e.to_string()))?
                } else {
                    return Err(TokenizeError::TooLong {
                        index,
                        len: enc.len(),
                        max: self.max_length,
                    });
                };
                Ok(Encoded {
                    ids: enc.get_ids().to_vec(),
                    type_ids: enc.get_type_ids().to_vec(),
                })
            }
            Input::Prompted {
                prefix,
                body,
                suffix,
            } => {
                if body.is_empty() {
                    return Err(TokenizeError::Empty { index });
                }
                let ids_of = |t: &str| -> Result<Vec<u32>, TokenizeError> {
                    Ok(self
                        .plain
                        .encode_fast(t, false)
                        .map_err(|e| TokenizeError::Tokenizer(e.to_string()))?
                        .get_ids()
                        .to_vec())
                };
                let (head, mut middle, tail) = (ids_of(prefix)?, ids_of(body)?, ids_of(suffix)?);
                let room = self.max_length.saturating_sub(head.len() + tail.len());
                if middle.len() > room {
                    if !opts.truncate || room == 0 {
                        return Err(TokenizeError::TooLong {
                            index,
                            len: head.len() + middle.len() + tail.len(),
                            max: self.max_length,
                        });
                    }
                    match opts.direction {
                        TruncationDirection::Right => middle.truncate(room),
                        TruncationDirection::Left => {
                            middle.drain(..middle.len() - room);
                        }
                    }
                }
                let ids: Vec<u32> = head.into_iter().chain(middle).chain(tail).collect();
                let n = ids.len();
                Ok(Encoded {
                    ids,
                    type_ids: vec![0; n],
                })
            }
            Input::Ids(ids) => {
                if ids.is_empty() {
                    return Err(TokenizeError::Empty { index });
                }
                if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
                    return Err(TokenizeError::BadTokenId {
                        index,
                        id,
                        vocab: self.vocab_size,
                    });
                }
                let mut ids = ids.clone();
                if ids.len() > self.max_length {
                    if !opts.truncate {
                        return Err(TokenizeError::TooLong {
                            index,
                            len: ids.len(),
                            max: self.max_length,
                        });
                    }
                    match opts.direction {
                        TruncationDirection::Right => ids.truncate(self.max_length),
                        TruncationDirection::Left => {
                            ids.drain(..ids.len() - self.max_length);
                        }
                    }
                }
                let n = ids.len();
                Ok(Encoded {
                    ids,
                    type_ids: vec![0; n],
                })
            }
        }
    }

    /// Tokens with their text and character offsets, for `/tokenize`.
    pub fn tokens(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<TokenInfo>, TokenizeError> {
        let enc = self
            .plain
            .encode(text, add_special_tokens)
            .map_err(|e| TokenizeError::Tokenizer(e.to_string()))?;
        // Offsets are byte offsets into the input, as TEI reports them.
        Ok(enc
            .get_ids()
            .iter()
            .zip(enc.get_tokens())
            .zip(enc.get_offsets())
            .zip(enc.get_special_tokens_mask())
            .map(|(((&id, tok), &(s, e)), &special)| {
                let special = special == 1;
                TokenInfo {
                    id,
                    text: if special {
                        tok.clone()
                    } else {
                        text.get(s..e)
                            .map(str::to_string)
                            .unwrap_or_else(|| tok.clone())
                    },
                    special,
                    start: (!special).then_some(s),
                    stop: (!special).then_some(e),
                }
            })
            .collect())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizeError> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(TokenizeError::BadTokenId {
                index: 0,
                id,
                vocab: self.vocab_size,
            });
        }
        self.plain
            .decode(ids, skip_special_tokens)
            .map_err(|e| TokenizeError::Tokenizer(e.to_string()))
    }
}

type Job = Box<dyn FnOnce(&Tokenizers) + Send>;

/// A fixed set of tokenizer threads. Cloning shares the same threads.
#[derive(Clone)]
pub struct TokenizerPool {
    online: crossbeam_channel::Sender<Job>,
    jobs: crossbeam_channel::Sender<Job>,
    pub max_length: usize,
    pub vocab_size: usize,
}

impl TokenizerPool {
    pub fn start(tokenizers: Tokenizers, workers: usize) -> Result<Self, TokenizeError> {
        let (online, online_rx) = crossbeam_channel::unbounded::<Job>();
        let (jobs, jobs_rx) = crossbeam_channel::unbounded::<Job>();
        let max_length = tokenizers.max_length;
        let vocab_size = tokenizers.vocab_size;
        let mut owned = Some(tokenizers);
        for i in 0..workers.max(1) {
            let (online_rx, jobs_rx) = (online_rx.clone(), jobs_rx.clone());
            let tk = match (i + 1 == workers.max(1), owned.take()) {
                (true, Some(t)) => t,
                (_, Some(t)) => {
                    let copy = Tokenizers {
                        plain: t.plain.clone(),
                        right: t.right.clone(),
                        left: t.left.clone(),
                        max_length: t.max_length,
                        vocab_size: t.vocab_size,
                    };
                    owned = Some(t);
                    copy
                }
                (_, None) => return Err(TokenizeError::Stopped),
            };
            std::thread::Builder::new()
                .name(format!("tokenizer-{i}"))
                .spawn(move || loop {
                    // Biased select: online work first whenever both lanes have some.
                    let next = crossbeam_channel::select_biased! {
                        recv(online_rx) -> job => job,
                        recv(jobs_rx) -> job => job,
                    };
                    match next {
                        Ok(job) => job(&tk),
                        Err(_) => break,
                    }
                })
                .map_err(|e| {
                    TokenizeError::Tokenizer(format!("spawning a tokenizer thread: {e}"))
                })?;
        }
        Ok(Self {
            online,
            jobs,
            max_length,
            vocab_size,
        })
    }

    /// Jobs waiting in both lanes (tests).
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.online.len() + self.jobs.len()
    }

    /// Runs `f` on a tokenizer thread at online priority and awaits its result.
    pub async fn run<T, F>(&self, f: F) -> Result<T, TokenizeError>
    where
        T: Send + 'static,
        F: FnOnce(&Tokenizers) -> Result<T, TokenizeError> + Send + 'static,
    {
        self.run_at(Priority::Online, f).await
    }

    /// Runs `f` on a tokenizer thread at `priority` and awaits its result. If the caller has
    /// gone by the time a thread takes it, `f` is dropped unrun (with whatever it holds).
    pub async fn run_at<T, F>(&self, priority: Priority, f: F) -> Result<T, TokenizeError>
    where
        T: Send + 'static,
        F: FnOnce(&Tokenizers) -> Result<T, TokenizeError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |tk| {
            if tx.is_closed() {
                return;
            }
            let _ = tx.send(f(tk));
        });
        let lane = match priority {
            Priority::Online => &self.online,
            Priority::Job => &self.jobs,
        };
        lane.send(job).map_err(|_| TokenizeError::Stopped)?;
        rx.await.map_err(|_| TokenizeError::Stopped)?
    }

    /// Encodes all inputs of one request on one thread (keeps a request's inputs together).
    /// `hold` (an admission slot) goes with the work and comes back with the result, so it is
    /// released only once the work is done or dropped, even when the caller goes away.
    pub async fn encode_all<H: Send + 'static>(
        &self,
        inputs: Vec<Input>,
        opts: EncodeOptions,
        priority: Priority,
        hold: H,
    ) -> Result<(Vec<Encoded>, H), TokenizeError> {
        self.run_at(priority, move |tk| {
            let encoded = inputs
                .iter()
                .enumerate()
                .map(|(i, input)| tk.encode(i, input, opts))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((encoded, hold))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn tiny_tokenizers() -> Tokenizers {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert/tokenizer.json");
        Tokenizers::from_file(&path, 64, 2000).expect("the tiny fixture tokenizer")
    }

    #[tokio::test]
    async fn online_work_overtakes_queued_batch_work() {
        let pool = TokenizerPool::start(tiny_tokenizers(), 1).expect("pool");
        let order = Arc::new(Mutex::new(Vec::new()));
        // Hold the only thread while both lanes fill up.
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let p = pool.clone();
        let blocker = tokio::spawn(async move {
            p.run_at(Priority::Job, move |_| {
                let _ = hold.recv();
                Ok(())
            })
            .await
        });
        let mut waiting = Vec::new();
        for i in 0..10 {
            let order = order.clone();
            let p = pool.clone();
            waiting.push(tokio::spawn(async move {
                p.run_at(Priority::Job, move |_| {
                    order.lock().map(|mut o| o.push(format!("batch{i}"))).ok();
                    Ok(())
                })
                .await
            }));
        }
        let o = order.clone();
        let p = pool.clone();
        let online = tokio::spawn(async move {
            p.run_at(Priority::Online, move |_| {
                o.lock().map(|mut o| o.push("online".to_string())).ok();
                Ok(())
            })
            .await
        });
        // Every submission must sit in its channel before the thread is released (no sleep:
        // wait for the count, bounded).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while pool.queued() < 11 {
            assert!(
                std::time::Instant::now() < deadline,
                "submissions never arrived"
            );
            tokio::task::yield_now().await;
        }
        release.send(()).expect("release");
        blocker.await.expect("join").expect("blocker");
        online.await.expect("join").expect("online");
        for w in waiting {
            w.await.expect("join").expect("batch");
        }
        let order = order.lock().expect("order").clone();
        assert_eq!(order.len(), 11);
        assert_eq!(order[0], "online", "online ran first: {order:?}");
    }

    #[tokio::test]
    async fn work_whose_caller_went_away_is_dropped_unrun() {
        let pool = TokenizerPool::start(tiny_tokenizers(), 1).expect("pool");
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let p = pool.clone();
        let blocker = tokio::spawn(async move {
            p.run_at(Priority::Online, move |_| {
                let _ = hold.recv();
                Ok(())
            })
            .await
        });
        // What the work holds (an admission slot): released when the work is dropped.
        let slot = Arc::new(());
        let ran = Arc::new(Mutex::new(false));
        let (p, s, r) = (pool.clone(), slot.clone(), ran.clone());
        let gone = tokio::spawn(async move {
            p.run_at(Priority::Online, move |_| {
                let _slot = s;
                r.lock().map(|mut r| *r = true).ok();
                Ok(())
            })
            .await
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while pool.queued() < 1 || Arc::strong_count(&slot) < 2 {
            assert!(std::time::Instant::now() < deadline, "never queued");
            tokio::task::yield_now().await;
        }
        gone.abort();
        assert!(gone.await.is_err(), "aborted");
        assert_eq!(
            Arc::strong_count(&slot),
            2,
            "queued work still holds its slot"
        );
        release.send(()).expect("release");
        blocker.await.expect("join").expect("blocker");
        // One thread, one lane: once this ran, the abandoned work was taken before it.
        pool.run(|_| Ok(())).await.expect("later work");
        assert!(!*ran.lock().expect("ran"), "abandoned work must not run");
        assert_eq!(Arc::strong_count(&slot), 1, "and its slot is released");
    }
}
