//! `spotinfer bench`: drives a running server over HTTP with the deterministic corpus at several
//! concurrency levels (bounded in count and time) and reports throughput, latency percentiles,
//! the server's CPU seconds per request and, from its /metrics, device busy ratio and GPU
//! utilisation. It runs anywhere the binary does (the GPU machine has no cargo).

pub mod corpus;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::json;

use crate::config::BenchArgs;

#[derive(Debug, Clone, Serialize)]
pub struct LevelResult {
    pub concurrency: usize,
    pub requests: usize,
    /// Requests that got no embedding: the sum of the three kinds below.
    pub errors: usize,
    /// 503 or 429 with Retry-After (a clean refusal: draining, overloaded, deadline).
    pub refused_with_retry_after: usize,
    /// Connection refused (the listener closed): that client stops.
    pub connection_refused: usize,
    /// Anything else: resets, timeouts, other statuses. Lost work; must be 0.
    pub lost: usize,
    pub seconds: f64,
    pub sentences_per_s: f64,
    pub tokens_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    /// Server CPU seconds (user + system) per request, when its pid was given.
    pub cpu_s_per_request: Option<f64>,
    /// Mean of the server's gauges sampled once a second during the level.
    pub device_busy_ratio: Option<f64>,
    pub gpu_utilization: Option<f64>,
    pub gpu_memory_used_bytes: Option<f64>,
    /// Sentences/s of each round of this level, in the order they ran (see `--rounds`).
    pub round_sentences_per_s: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub url: String,
    pub corpus_size: usize,
    pub corpus_mean_tokens: Option<f64>,
    pub levels: Vec<LevelResult>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// (user + system) CPU seconds of a process, from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks.max(1.0))
}

fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Samples the server's gauges once a second until `stop`.
async fn sample_gauges(
    client: reqwest::Client,
    url: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> ([f64; 3], [usize; 3]) {
    let names = [
        "inference_device_busy_ratio",
        "inference_gpu_utilization_ratio",
        "inference_gpu_memory_used_bytes",
    ];
    let mut sums = [0.0; 3];
    let mut counts = [0usize; 3];
    while !stop.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Ok(resp) = client.get(format!("{url}/metrics")).send().await else {
            continue;
        };
        let Ok(text) = resp.text().await else {
            continue;
        };
        for (i, n) in names.iter().enumerate() {
            if let Some(v) = gauge(&text, n) {
                sums[i] += v;
                counts[i] += 1;
            }
        }
    }
    (sums, counts)
}

/// What the rounds of one level measured so far, before it is summarised.
#[derive(Default)]
struct LevelRun {
    /// (seconds, prompt tokens when the request got an embedding) per request.
    samples: Vec<(f64, Option<u64>)>,
    /// Refused with Retry-After, connection refused, lost.
    outcome: [usize; 3],
    seconds: f64,
    cpu_seconds: Option<f64>,
    gauge_sums: [f64; 3],
    gauge_counts: [usize; 3],
    round_rates: Vec<f64>,
}

impl LevelRun {
    fn ok(&self) -> usize {
        self.samples.iter().filter(|s| s.1.is_some()).count()
    }

    /// Adds one more round of the same level.
    fn absorb(&mut self, round: LevelRun) {
        self.cpu_seconds = if self.round_rates.is_empty() {
            round.cpu_seconds
        } else {
            self.cpu_seconds.zip(round.cpu_seconds).map(|(a, b)| a + b)
        };
        self.round_rates
            .push(round.ok() as f64 / round.seconds.max(1e-9));
        self.samples.extend(round.samples);
        for k in 0..3 {
            self.outcome[k] += round.outcome[k];
            self.gauge_sums[k] += round.gauge_sums[k];
            self.gauge_counts[k] += round.gauge_counts[k];
        }
        self.seconds += round.seconds;
    }

    fn summary(&self, concurrency: usize) -> LevelResult {
        let ok: Vec<&(f64, Option<u64>)> = self.samples.iter().filter(|s| s.1.is_some()).collect();
        let mut lat: Vec<f64> = ok.iter().map(|s| s.0 * 1000.0).collect();
        lat.sort_by(|a, b| a.total_cmp(b));
        let tokens: u64 = ok.iter().filter_map(|s| s.1).sum();
        let seconds = self.seconds.max(1e-9);
        let gauge = |i: usize| {
            (self.gauge_counts[i] > 0).then(|| self.gauge_sums[i] / self.gauge_counts[i] as f64)
        };
        LevelResult {
            concurrency,
            requests: self.samples.len(),
            errors: self.samples.len() - ok.len(),
            refused_with_retry_after: self.outcome[0],
            connection_refused: self.outcome[1],
            lost: self.outcome[2],
            seconds: self.seconds,
            sentences_per_s: ok.len() as f64 / seconds,
            tokens_per_s: tokens as f64 / seconds,
            p50_ms: percentile(&lat, 50.0),
            p90_ms: percentile(&lat, 90.0),
            p99_ms: percentile(&lat, 99.0),
            cpu_s_per_request: self
                .cpu_seconds
                .filter(|_| !self.samples.is_empty())
                .map(|c| c / self.samples.len() as f64),
            device_busy_ratio: gauge(0),
            gpu_utilization: gauge(1),
            gpu_memory_used_bytes: gauge(2),
            round_sentences_per_s: self.round_rates.clone(),
        }
    }
}

/// The order in which (round, level index) pairs run: the levels as given, then reversed, and
/// so on. This VM-class hardware drifts by up to ±15 % over minutes; in the mirrored order every
/// level's rounds sit, on average, at the same point in time, so a steady drift cancels out of
/// the comparison between levels instead of landing on whichever level ran in a slow minute.
fn round_order(levels: usize, rounds: usize) -> Vec<(usize, usize)> {
    (0..rounds)
        .flat_map(|r| (0..levels).map(move |i| (r, if r % 2 == 0 { i } else { levels - 1 - i })))
        .collect()
}

async fn run_level(
    client: &reqwest::Client,
    url: &str,
    corpus: Arc<Vec<String>>,
    concurrency: usize,
    (first, limit): (usize, usize),
    max_time: Duration,
    pid: Option<u32>,
) -> LevelRun {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let cpu_before = pid.and_then(cpu_seconds);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = tokio::spawn(sample_gauges(client.clone(), url.to_string(), stop.clone()));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = client.clone();
            let next = next.clone();
            let corpus = corpus.clone();
            let endpoint = format!("{url}/v1/embeddings");
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut outcome = [0usize; 3];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= limit || started.elapsed() > max_time {
                        break;
                    }
                    let text = &corpus[(first + i) % corpus.len()];
                    let t0 = Instant::now();
                    let r = client
                        .post(&endpoint)
                        .json(&json!({"input": text}))
                        .send()
                        .await;
                    let tokens = match r {
                        Ok(resp) if resp.status().is_success() => resp
                            .json::<serde_json::Value>()
                            .await
                            .ok()
                            .and_then(|v| v["usage"]["prompt_tokens"].as_u64()),
                        Ok(resp)
                            if matches!(resp.status().as_u16(), 429 | 503)
                                && resp.headers().contains_key("retry-after") =>
                        {
                            outcome[0] += 1;
                            None
                        }
                        Err(e) if e.is_connect() => {
                            outcome[1] += 1;
                            samples.push((t0.elapsed().as_secs_f64(), None));
                            break;
                        }
                        _ => {
                            outcome[2] += 1;
                            None
                        }
                    };
                    samples.push((t0.elapsed().as_secs_f64(), tokens));
                }
                (samples, outcome)
            })
        })
        .collect();
    let mut samples = Vec::new();
    let mut outcome = [0usize; 3];
    for t in tasks {
        let (s, o) = t.await.unwrap_or_default();
        samples.extend(s);
        for k in 0..3 {
            outcome[k] += o[k];
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Release);
    let (gauge_sums, gauge_counts) = sampler.await.unwrap_or_default();
    let cpu_seconds = match (cpu_before, pid.and_then(cpu_seconds)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    LevelRun {
        samples,
        outcome,
        seconds,
        cpu_seconds,
        gauge_sums,
        gauge_counts,
        round_rates: Vec::new(),
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let corpus = corpus::generate(args.corpus_size, corpus::SEED);
    if let Some(path) = &args.dump_corpus {
        let lines: Vec<String> = corpus
            .iter()
            .map(|t| json!({"text": t}).to_string())
            .collect();
        std::fs::write(path, lines.join("\n") + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        tracing::info!(texts = corpus.len(), path = %path.display(), "corpus written");
        return Ok(());
    }
    let url = args.url.trim_end_matches('/').to_string();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(120))
        .no_proxy()
        .build()?;
    // Mean tokens after truncation, from the server's own tokenizer.
    let info: serde_json::Value = client
        .get(format!("{url}/info"))
        .send()
        .await
        .with_context(|| format!("is a server running at {url}?"))?
        .json()
        .await?;
    let max = info["max_input_length"].as_u64().unwrap_or(512);
    let mut token_total = 0u64;
    for chunk in corpus.chunks(32) {
        let resp: serde_json::Value = client
            .post(format!("{url}/tokenize"))
            .json(&json!({"inputs": chunk}))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .with_context(|| format!("is a server running at {url}?"))?
            .json()
            .await?;
        token_total += resp
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|t| t.as_array().map_or(0, |t| t.len() as u64).min(max))
                    .sum()
            })
            .unwrap_or(0);
    }
    let mean_tokens = token_total as f64 / corpus.len() as f64;
    let corpus = Arc::new(corpus);
    let limit = args.requests.unwrap_or(corpus.len());
    // Warm-up: every shape the server will see, not measured.
    if !args.no_warmup {
        run_level(
            &client,
            &url,
            corpus.clone(),
            8,
            (0, 64.min(limit)),
            args.max_time,
            None,
        )
        .await;
    }
    let mut levels = Vec::new();
    let rounds = args.rounds.clamp(1, limit.max(1));
    let mut runs: Vec<LevelRun> = args
        .concurrency
        .iter()
        .map(|_| LevelRun::default())
        .collect();
    for (round, i) in round_order(args.concurrency.len(), rounds) {
        // Round r of a level sends the r-th slice of its texts: all rounds together send the
        // same texts as one pass would.
        let (first, next) = (round * limit / rounds, (round + 1) * limit / rounds);
        let run = run_level(
            &client,
            &url,
            corpus.clone(),
            args.concurrency[i].max(1),
            (first, next - first),
            args.max_time / rounds as u32,
            args.server_pid,
        )
        .await;
        if rounds > 1 {
            eprintln!(
                "round {} of {rounds}, concurrency {}: {:.1} sent/s",
                round + 1,
                args.concurrency[i].max(1),
                run.ok() as f64 / run.seconds.max(1e-9)
            );
        }
        runs[i].absorb(run);
    }
    eprintln!(
        "{:>5} {:>8} {:>7} {:>10} {:>10} {:>8} {:>8} {:>8} {:>9} {:>6} {:>6}",
        "conc",
        "requests",
        "errors",
        "sent/s",
        "tokens/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "cpu s/req",
        "busy",
        "gpu"
    );
    for (run, &c) in runs.iter().zip(&args.concurrency) {
        let r = run.summary(c.max(1));
        let opt =
            |v: Option<f64>, scale: f64| v.map_or("-".to_string(), |v| format!("{:.2}", v * scale));
        eprintln!(
            "{:>5} {:>8} {:>7} {:>10.1} {:>10.0} {:>8.1} {:>8.1} {:>8.1} {:>9} {:>6} {:>6}",
            r.concurrency,
            r.requests,
            r.errors,
            r.sentences_per_s,
            r.tokens_per_s,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.cpu_s_per_request
                .map_or("-".into(), |v| format!("{v:.4}")),
            opt(r.device_busy_ratio, 1.0),
            opt(r.gpu_utilization, 1.0)
        );
        levels.push(r);
    }
    let report = BenchReport {
        url,
        corpus_size: corpus.len(),
        corpus_mean_tokens: Some(mean_tokens),
        levels,
    };
    eprintln!(
        "corpus: {} texts, mean {:.1} tokens after truncation",
        corpus.len(),
        mean_tokens
    );
    for r in &report.levels {
        if r.errors > 0 {
            eprintln!(
                "concurrency {}: {} clean 429/503 with Retry-After, {} connection refused, {} lost",
                r.concurrency, r.refused_with_retry_after, r.connection_refused, r.lost
            );
        }
    }
    let text = serde_json::to_string_pretty(&report)?;
    match &args.json {
        Some(p) => std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?,
        None => println!("{text}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_gauges() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 51.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        let text = "# HELP x\ninference_device_busy_ratio 0.25\ninference_device_busy_ratio_x 9\n";
        assert_eq!(gauge(text, "inference_device_busy_ratio"), Some(0.25));
        assert!(cpu_seconds(std::process::id()).is_some());
    }

    #[test]
    fn rounds_run_mirrored_and_add_up() {
        assert_eq!(
            round_order(3, 2),
            vec![(0, 0), (0, 1), (0, 2), (1, 2), (1, 1), (1, 0)]
        );
        assert_eq!(round_order(2, 1), vec![(0, 0), (0, 1)]);
        let round = |lat: &[f64], errors: usize, seconds: f64, cpu: Option<f64>, busy: f64| {
            let mut samples: Vec<(f64, Option<u64>)> = lat.iter().map(|&l| (l, Some(10))).collect();
            samples.extend((0..errors).map(|_| (0.5, None)));
            LevelRun {
                samples,
                outcome: [0, 0, errors],
                seconds,
                cpu_seconds: cpu,
                gauge_sums: [busy, 0.0, 0.0],
                gauge_counts: [1, 0, 0],
                round_rates: Vec::new(),
            }
        };
        let mut level = LevelRun::default();
        level.absorb(round(&[0.010, 0.020], 0, 1.0, Some(0.5), 0.9));
        level.absorb(round(&[0.030, 0.040, 0.050, 0.060], 1, 1.0, Some(1.0), 0.7));
        let r = level.summary(8);
        assert_eq!((r.requests, r.errors, r.lost), (7, 1, 1));
        assert_eq!(r.round_sentences_per_s, vec![2.0, 4.0]);
        assert!((r.sentences_per_s - 3.0).abs() < 1e-9, "6 ok in 2 s");
        assert!((r.tokens_per_s - 30.0).abs() < 1e-9);
        assert!(
            (r.p50_ms - 40.0).abs() < 1e-9,
            "latencies pooled: {}",
            r.p50_ms
        );
        assert!((r.cpu_s_per_request.unwrap_or(0.0) - 1.5 / 7.0).abs() < 1e-9);
        assert!((r.device_busy_ratio.unwrap_or(0.0) - 0.8).abs() < 1e-9);
        assert_eq!(r.gpu_utilization, None);
        // A round without the server's CPU time leaves the level without it.
        level.absorb(round(&[0.01], 0, 1.0, None, 0.5));
        assert_eq!(level.summary(8).cpu_s_per_request, None);
    }
}
