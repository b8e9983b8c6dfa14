//! Batch jobs through store faults on the local backend, on the real binary: garbage in one
//! job's state and plan (the others finish; the backlog gauge stays honest), the store
//! read-only for 20 s then writable again (the job finishes without a restart), the disk full
//! while a job is assembled then room made (it completes, nothing partial is left), and a
//! 32 MB job line (that line fails alone; the server's memory stays bounded).
//!
//! The read-only and full-disk faults need a store that is its own mount: the server runs in
//! a private mount namespace on a tmpfs of its own (see `ServerBuilder::private_tmpfs`), so
//! nothing is mounted on the host and a crashed test leaves no mount behind. They need root.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The replicas' coordinator tick (`--batch-backlog-interval`).
const REFRESH: &str = "0.5";

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("spotinfer-faults-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn texts(tag: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{tag} line {i}: a note on faults, number {}.", i * 11 % 89))
        .collect()
}

fn job_line(id: &str, text: &str) -> String {
    json!({"custom_id": id, "method": "POST", "url": "/v1/embeddings", "body": {"input": text}})
        .to_string()
}

fn jsonl(texts: &[String]) -> String {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| job_line(&format!("req-{i}"), t) + "\n")
        .collect()
}

/// Uploads `texts` as a job's input and creates the job.
fn submit(server: &Server, dir: &Path, name: &str, texts: &[String]) -> (String, String) {
    let input = dir.join(format!("{name}.jsonl"));
    std::fs::write(&input, jsonl(texts)).unwrap();
    let file_id = server.upload_batch(&input);
    (file_id.clone(), server.create_batch(&file_id))
}

fn job(server: &Server, id: &str) -> Value {
    let (status, b) = server.get_json(&format!("/v1/batches/{id}"));
    assert_eq!(status, 200, "{id}: {b}\n{}", server.log_text());
    b
}

/// Lines done (completed + failed) and the total.
fn done(b: &Value) -> (u64, u64) {
    let c = &b["request_counts"];
    (
        c["completed"].as_u64().unwrap_or(0) + c["failed"].as_u64().unwrap_or(0),
        c["total"].as_u64().unwrap_or(0),
    )
}

/// Polls `check` until it gives a value; a hang fails after `limit` with `what` and the logs.
fn wait_for<T>(
    server: &Server,
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}; logs:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn wait_completed(server: &Server, id: &str, limit: Duration) -> Value {
    wait_for(server, &format!("{id} to complete"), limit, || {
        let b = job(server, id);
        assert!(
            b["status"] != "failed" && b["status"] != "cancelled",
            "{b}\n{}",
            server.log_text()
        );
        (b["status"] == "completed").then_some(b)
    })
}

/// Waits for one log line holding every needle.
fn wait_line(server: &Server, needles: &[&str], limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut logs = server.logs.lock().unwrap();
    loop {
        if let Some(l) = logs.iter().find(|l| needles.iter().all(|n| l.contains(n))) {
            return l.clone();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no log line with all of {needles:?} in {limit:?}; logs:\n{}",
            logs.join("\n")
        );
        logs = server.logged.wait_timeout(logs, left).unwrap().0;
    }
}

fn file_text(server: &Server, file_id: &str) -> String {
    let r = blocking_client()
        .get(server.url(&format!("/v1/files/{file_id}/content")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{file_id}");
    r.text().unwrap()
}

fn file_lines(server: &Server, file_id: &str) -> Vec<Value> {
    file_text(server, file_id)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every custom_id of `ids` exactly once, in that order, each a 200 whose vector equals a
/// direct request's for the same text.
fn check_output(server: &Server, lines: &[Value], ids: &[String], texts: &[String]) {
    let order: Vec<&str> = lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap_or("<none>"))
        .collect();
    assert_eq!(order, ids, "every custom_id once, in input order");
    let want = server.embeddings(texts);
    for (l, w) in lines.iter().zip(&want) {
        assert_eq!(l["response"]["status_code"], 200, "{l}");
        let c = cosine(&as_vec(&l["response"]["body"]["data"][0]["embedding"]), w);
        assert!(c >= 0.9999, "{}: cosine {c}", l["custom_id"]);
    }
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("req-{i}")).collect()
}

fn gauge(server: &Server, series: &str) -> f64 {
    metric_value(&server.metrics_text(), series)
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

/// Every file under `root`, recursively (relative paths).
fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// The store's staged writes are `<key>#<n>` files until renamed into place.
fn assert_no_temp_files(store: &Path) {
    let temps: Vec<String> = walk(store)
        .into_iter()
        .filter(|f| f.contains('#'))
        .collect();
    assert!(temps.is_empty(), "temp files left in the store: {temps:?}");
}

// ---- garbage in one job's state and plan ----

/// A replica on a folder store with small segments and a short tick.
fn replica(state: &Path, extra: &[&str]) -> Server {
    Server::builder(&tiny_model_dir())
        .args(["--state-dir", state.to_str().unwrap()])
        .args(["--batch-segment-lines", "20", "--batch-chunk-lines", "5"])
        .args(["--batch-backlog-interval", REFRESH, "--drain-delay", "0"])
        .args(extra.iter().copied())
        .start()
}

/// The job's state versions, oldest first.
fn state_versions(state: &Path, id: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(state.join("batches").join(id).join("state"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

const GARBAGE: &[u8] = b"\x00\xffnot json {\"status\":";

/// The design: an unreadable newest state version falls back to the one before (its change
/// is lost: the job is validated again), a corrupt plan is rebuilt identically from the input,
/// and a job none of whose state can be read stays in the index, logged at each tick, counted
/// as one line of backlog (it may still run: the fleet must not scale to zero under it), and
/// answered with a 500 that names the corrupt object.
#[test]
fn garbage_in_one_jobs_state_and_plan_leaves_the_others_running_and_the_gauge_honest() {
    let dir = temp_dir("garbage");
    let state = dir.join("state");
    let (ta, tb, tc) = (texts("A", 60), texts("B", 60), texts("C", 60));
    // An intake-only replica validates the jobs (plan written, in_progress) and runs none of
    // their lines, so the garbage lands on jobs with all their work ahead.
    let intake = replica(&state, &["--intake-only"]);
    let (_, a) = submit(&intake, &dir, "a", &ta);
    let (_, b) = submit(&intake, &dir, "b", &tb);
    let (_, c) = submit(&intake, &dir, "c", &tc);
    for id in [&a, &b, &c] {
        wait_for(
            &intake,
            &format!("{id} validated"),
            Duration::from_secs(60),
            || {
                let j = job(&intake, id);
                (j["status"] == "in_progress" && done(&j) == (0, 60)).then_some(())
            },
        );
    }
    drop(intake);

    // B: its newest state version and its plan become garbage.
    let versions = state_versions(&state, &b);
    assert!(
        versions.len() >= 2,
        "validating, then in_progress: {versions:?}"
    );
    std::fs::write(versions.last().unwrap(), GARBAGE).unwrap();
    std::fs::write(state.join("batches").join(&b).join("plan.json"), GARBAGE).unwrap();
    // C: every state version and its spec: nothing of it can be read.
    for v in state_versions(&state, &c) {
        std::fs::write(v, GARBAGE).unwrap();
    }
    std::fs::write(state.join("batches").join(&c).join("spec.json"), GARBAGE).unwrap();

    // A restarted replica schedules the others.
    let server = replica(&state, &[]);
    let backlog = "inference_batch_backlog_lines";
    let mut samples = 0;
    wait_for(
        &server,
        "A and B to complete",
        Duration::from_secs(180),
        || {
            // The gauge first: it is from a tick before the jobs are read, so A has at least as
            // many lines left then as now. C counts one line throughout.
            let g = gauge(&server, backlog);
            let (ja, jb) = (job(&server, &a), job(&server, &b));
            let left_a = if ja["status"] == "in_progress" {
                let (d, t) = done(&ja);
                t - d
            } else {
                0
            };
            samples += 1;
            assert!(
            g >= 1.0 + left_a as f64,
            "sample {samples}: the backlog gauge reads {g} while A has {left_a} lines left and C \
             is unreadable: {ja}\n{}",
            server.log_text()
        );
            for j in [&ja, &jb] {
                assert!(j["status"] != "failed", "{j}\n{}", server.log_text());
            }
            (ja["status"] == "completed" && jb["status"] == "completed").then_some(())
        },
    );
    for (id, t) in [(&a, &ta), (&b, &tb)] {
        let j = job(&server, id);
        assert_eq!(j["request_counts"]["completed"], 60, "{j}");
        assert_eq!(j["request_counts"]["failed"], 0, "{j}");
        let lines = file_lines(&server, j["output_file_id"].as_str().unwrap());
        check_output(&server, &lines, &ids(60), t);
    }
    let logs = server.log_text();
    assert!(
        logs.lines()
            .any(|l| l.contains("the newest batch state is unreadable") && l.contains(&b)),
        "B went on from its previous state version: {logs}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("rebuilding an unreadable segment plan") && l.contains(&b)),
        "B's plan was rebuilt: {logs}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("cannot read a batch job's state") && l.contains(&c)),
        "C is reported at each tick: {logs}"
    );
    // C, honestly: an error that names what is corrupt, not a made-up status.
    let (status, e) = server.get_json(&format!("/v1/batches/{c}"));
    assert_eq!(status, 500, "{e}");
    assert!(e.to_string().contains("is corrupt"), "{e}");
    // Once A and B are done the gauge settles on C's one line, not 0; two jobs completed.
    wait_for(
        &server,
        "the backlog gauge to settle on 1",
        Duration::from_secs(30),
        || (gauge(&server, backlog) == 1.0).then_some(()),
    );
    assert_eq!(
        gauge(&server, "inference_batch_jobs{status=\"completed\"}"),
        2.0
    );
    assert_eq!(
        gauge(&server, "inference_batch_jobs{status=\"in_progress\"}"),
        0.0
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- faults of a store that is its own mount ----

/// A server whose store is a private tmpfs of `size` on `mnt` (empty on the host).
fn server_on_tmpfs(mnt: &Path, size: &str, extra: &[&str]) -> Server {
    let server = Server::builder(&tiny_model_dir())
        .private_tmpfs(mnt, size)
        .args(["--state-dir", mnt.to_str().unwrap()])
        .args(["--batch-chunk-lines", "8", "--batch-segment-lines", "48"])
        .args(["--batch-backlog-interval", REFRESH, "--drain-delay", "0"])
        .args(["--max-batch-requests", "4"])
        .args(extra.iter().copied())
        .start();
    // The pid we hold is the server itself (unshare and sh exec'd it), in the namespace
    // that has the tmpfs; the host's folder stays empty.
    let exe = std::fs::read_link(format!("/proc/{}/exe", server.pid())).unwrap();
    assert_eq!(
        exe,
        std::fs::canonicalize(env!("CARGO_BIN_EXE_spotinfer")).unwrap(),
        "the child is the server"
    );
    let mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", server.pid())).unwrap();
    assert!(
        mounts
            .lines()
            .any(|l| l.contains(&format!(" {} ", mnt.display())) && l.contains(" - tmpfs ")),
        "the store is a tmpfs in the server's namespace: {mounts}"
    );
    assert_eq!(
        std::fs::read_dir(mnt).unwrap().count(),
        0,
        "nothing on the host"
    );
    server
}

/// `mount -o remount,<mode>` of the store inside the server's namespace. A read-only remount
/// is refused (busy) while a file is open for writing: tried again until it takes.
fn remount(server: &Server, mnt: &Path, mode: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("nsenter")
            .args([
                "--target",
                &server.pid().to_string(),
                "--mount",
                "mount",
                "-o",
            ])
            .arg(format!("remount,{mode}"))
            .arg(mnt)
            .output()
            .expect("run nsenter");
        if out.status.success() {
            return;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            Instant::now() < deadline && err.contains("busy"),
            "remount {mode}: {err}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The store read-only for 20 s mid-job (the fault's length; the wait is the fault, not an
/// ordering), then writable again: the job completes in the same process, every line exactly
/// once, in order; what was uploaded before stays.
#[test]
fn a_store_read_only_for_20_s_then_writable_again_finishes_the_job_without_a_restart() {
    let dir = temp_dir("read-only");
    let mnt = dir.join("store");
    std::fs::create_dir_all(&mnt).unwrap();
    // Slow lines and short leases: the fault lands mid-job and outlasts the leases.
    let server = server_on_tmpfs(
        &mnt,
        "64m",
        &["--test-batch-delay-ms", "20", "--batch-lease-secs", "5"],
    );
    let t = texts("RO", 240);
    let (file_id, id) = submit(&server, &dir, "in", &t);
    let before = wait_for(
        &server,
        "16 lines committed",
        Duration::from_secs(120),
        || {
            let (d, total) = done(&job(&server, &id));
            (d >= 16).then_some((d, total))
        },
    );
    assert!(before.0 < before.1, "the job was still running: {before:?}");

    remount(&server, &mnt, "ro");
    // The fault counts from the server's first refused write.
    wait_line(&server, &["Read-only file system"], Duration::from_secs(60));
    let fault = Instant::now() + Duration::from_secs(20);
    // Reads still answer meanwhile, and the job is not failed by a store error.
    while Instant::now() < fault {
        let j = job(&server, &id);
        assert!(j["status"] == "in_progress", "{j}\n{}", server.log_text());
        assert!(done(&j).0 >= before.0, "committed lines stay: {j}");
        std::thread::sleep(
            Duration::from_millis(500).min(fault.saturating_duration_since(Instant::now())),
        );
    }
    remount(&server, &mnt, "rw");

    let j = wait_completed(&server, &id, Duration::from_secs(180));
    assert_eq!(j["request_counts"]["completed"], 240, "{j}");
    assert_eq!(j["request_counts"]["failed"], 0, "{j}");
    assert!(j["error_file_id"].is_null(), "{j}");
    let lines = file_lines(&server, j["output_file_id"].as_str().unwrap());
    check_output(&server, &lines, &ids(240), &t);
    assert_eq!(
        file_text(&server, &file_id),
        jsonl(&t),
        "the upload from before the fault is intact"
    );
    assert_no_temp_files(&server.ns_path(&mnt));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bytes left free when the disk is filled: room for a few small state and lease objects
/// (one 4 KiB page each on a tmpfs), not for the job's output.
const SLACK: u64 = 64 << 10;

/// Writes `<lease dir>/<next epoch>.json` atomically (a hard link fails if the epoch exists,
/// as the store's create-only write does): as if another replica wrote it.
fn write_lease(lease_dir: &Path, lease: Value) -> PathBuf {
    std::fs::create_dir_all(lease_dir).unwrap();
    let tmp = lease_dir.parent().unwrap().join("lease-by-test.tmp");
    std::fs::write(&tmp, lease.to_string()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let next = std::fs::read_dir(lease_dir)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(".json")?.parse::<u64>().ok()
            })
            .max()
            .unwrap_or(0)
            + 1;
        let key = lease_dir.join(format!("{next:010}.json"));
        match std::fs::hard_link(&tmp, &key) {
            Ok(()) => {
                std::fs::remove_file(&tmp).unwrap();
                return key;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                assert!(Instant::now() < deadline, "never got a lease epoch");
            }
            Err(e) => panic!("{}: {e}", key.display()),
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Fills the filesystem of `path` with one file, then gives back `slack` bytes of it.
fn fill(path: &Path, slack: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0xA5u8; 1 << 16];
    loop {
        if let Err(e) = f.write_all(&block) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            break;
        }
    }
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(slack)).unwrap();
}

/// The disk fills up just as the job is assembled; once room is made the job completes with
/// its output in order, and the store holds no partial copy and no temp file.
#[test]
fn a_full_disk_during_assembly_then_room_made_completes_the_job_with_nothing_partial_left() {
    let dir = temp_dir("full-disk");
    let mnt = dir.join("store");
    std::fs::create_dir_all(&mnt).unwrap();
    let server = server_on_tmpfs(&mnt, "8m", &["--test-batch-delay-ms", "20"]);
    let store = server.ns_path(&mnt);
    let t = texts("Full", 200);
    let (_, id) = submit(&server, &dir, "in", &t);
    let job_dir = store.join("batches").join(&id);
    wait_for(
        &server,
        "the job validated",
        Duration::from_secs(60),
        || (job(&server, &id)["status"] == "in_progress").then_some(()),
    );
    // Another replica holds the job's assembly lease (this one cannot take it), so the lines
    // all finish before the disk is filled, and assembly starts when that lease is released.
    let held = write_lease(
        &job_dir.join("lease"),
        json!({"holder": "host:other-replica/1", "expires_at": unix_now() + 3600, "released": false}),
    );
    assert!(
        done(&job(&server, &id)).0 < 200,
        "the lease was taken before the lines finished"
    );
    wait_for(&server, "every line done", Duration::from_secs(180), || {
        let j = job(&server, &id);
        assert_eq!(j["status"], "in_progress", "{j}");
        (done(&j) == (200, 200)).then_some(())
    });
    // The output is as large as the committed chunks: far over the slack.
    let chunks: u64 = walk(&job_dir.join("segments"))
        .iter()
        .filter(|f| f.contains("/chunks/"))
        .map(|f| {
            std::fs::metadata(job_dir.join("segments").join(f))
                .unwrap()
                .len()
        })
        .sum();
    assert!(
        chunks > 2 * SLACK,
        "output of {chunks} bytes would fit in the slack"
    );

    let filler = store.join("filler");
    fill(&filler, SLACK);
    let epoch: u64 = held.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    assert_eq!(
        write_lease(
            &job_dir.join("lease"),
            json!({"holder": "host:other-replica/1", "expires_at": 0, "released": true}),
        ),
        held.with_file_name(format!("{:010}.json", epoch + 1))
    );
    // The evidence: the assembly's write of its copy of the output hit the full disk.
    let line = wait_line(
        &server,
        &["No space left on device", &format!("{id}/results/")],
        Duration::from_secs(60),
    );
    eprintln!("assembly failed as meant: {line}");
    let j = job(&server, &id);
    assert_eq!(j["status"], "finalizing", "{j}");
    std::fs::remove_file(&filler).unwrap();

    let j = wait_completed(&server, &id, Duration::from_secs(60));
    assert_eq!(j["request_counts"]["completed"], 200, "{j}");
    let out_id = j["output_file_id"].as_str().unwrap();
    let lines = file_lines(&server, out_id);
    check_output(&server, &lines, &ids(200), &t);
    // One copy is left under results/: the one the output file's record names.
    let record = read_json(&store.join("files").join(format!("{out_id}.json")));
    let data = record["data"].as_str().unwrap();
    let copies: Vec<String> = walk(&job_dir.join("results"));
    assert_eq!(
        copies
            .iter()
            .map(|c| format!("batches/{id}/results/{c}"))
            .collect::<Vec<_>>(),
        [data],
        "only the winning copy is kept"
    );
    // Chunks go once the job's state says completed (empty folders may stay).
    wait_for(
        &server,
        "the chunks deleted",
        Duration::from_secs(30),
        || {
            let segments = job_dir.join("segments");
            (!segments.exists() || walk(&segments).is_empty()).then_some(())
        },
    );
    assert!(!filler.exists());
    assert_no_temp_files(&store);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- a 32 MB job line ----

fn status_kb(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .unwrap_or_else(|| panic!("no {field} for {pid}"))
}

/// Headroom over the RSS at its start for the upload of the 32 MB input: the store's
/// streaming writer holds one 8 MiB part (a bucket's multipart part size) while the one
/// before it is written, so two parts, and the allocator's slack (13–22 MB seen); a server
/// that held the upload whole would be over it.
const UPLOAD_HEADROOM_MB: u64 = 30;
/// Headroom for running the job: lines are read in 1 MiB ranged reads, and an over-long one
/// is dropped once past the 2 MB line limit (5–7 MB seen alone, 13 MB beside the whole suite:
/// the arenas of the threads the job wakes); a server that held the 32 MB line would be far
/// over it.
const JOB_HEADROOM_MB: u64 = 20;

/// Resets the process's peak RSS (VmHWM) to its current RSS, which it returns (KiB).
fn reset_peak(pid: i32) -> u64 {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    status_kb(pid, "VmRSS:")
}

/// How far the peak RSS rose over `start` (MB), printed.
fn grew_mb(pid: i32, start: u64, what: &str) -> u64 {
    let peak = status_kb(pid, "VmHWM:");
    let grew = peak.saturating_sub(start) / 1024;
    eprintln!(
        "{what}: RSS {} MB at the start, peak {} MB (+{grew} MB)",
        start / 1024,
        peak / 1024
    );
    grew
}

#[test]
fn a_32_mb_job_line_fails_alone_with_bounded_memory() {
    let dir = temp_dir("huge-line");
    let state = dir.join("state");
    let server = Server::builder(&tiny_model_dir())
        .args(["--state-dir", state.to_str().unwrap()])
        .args([
            "--batch-chunk-lines",
            "8",
            "--batch-backlog-interval",
            REFRESH,
        ])
        .start();
    // Warm up the paths the measured job takes (upload, validation, lines, assembly).
    let warm = texts("Warm", 16);
    let (_, wid) = submit(&server, &dir, "warm", &warm);
    wait_completed(&server, &wid, Duration::from_secs(60));
    let pid = server.pid();

    let n = 40;
    let huge_at = 20;
    let t = texts("Huge", n);
    let input = dir.join("huge.jsonl");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        for (i, text) in t.iter().enumerate() {
            if i == huge_at {
                let head = r#"{"custom_id": "huge", "method": "POST", "url": "/v1/embeddings", "body": {"input": ""#;
                f.write_all(head.as_bytes()).unwrap();
                let block = "lorem ipsum ".repeat(1 << 12);
                let mut written = head.len();
                while written < 32 << 20 {
                    f.write_all(block.as_bytes()).unwrap();
                    written += block.len();
                }
                f.write_all(b"\"}}\n").unwrap();
            }
            writeln!(f, "{}", job_line(&format!("req-{i}"), text)).unwrap();
        }
    }
    let huge_bytes = std::fs::read_to_string(&input)
        .map(|s| s.lines().nth(huge_at).unwrap().len() as u64 + 1)
        .unwrap();
    assert!(huge_bytes > 32 << 20);
    let start = reset_peak(pid);
    let file_id = server.upload_batch(&input);
    let upload_mb = grew_mb(pid, start, "upload");
    let start = reset_peak(pid);
    let id = server.create_batch(&file_id);
    let j = wait_completed(&server, &id, Duration::from_secs(180));
    let job_mb = grew_mb(pid, start, "job");

    assert_eq!(j["request_counts"]["total"], n as u64 + 1, "{j}");
    assert_eq!(j["request_counts"]["completed"], n as u64, "{j}");
    assert_eq!(j["request_counts"]["failed"], 1, "{j}");
    let lines = file_lines(&server, j["output_file_id"].as_str().unwrap());
    check_output(&server, &lines, &ids(n), &t);
    let errors = file_lines(&server, j["error_file_id"].as_str().unwrap());
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0]["error"];
    assert_eq!(e["code"], "line_too_long", "{e}");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("line {}: {huge_bytes} bytes", huge_at + 1))
            && msg.contains("--payload-limit"),
        "{msg}"
    );
    assert!(
        upload_mb < UPLOAD_HEADROOM_MB,
        "the upload's peak RSS rose {upload_mb} MB (bound {UPLOAD_HEADROOM_MB} MB)"
    );
    assert!(
        job_mb < JOB_HEADROOM_MB,
        "the job's peak RSS rose {job_mb} MB (bound {JOB_HEADROOM_MB} MB)"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
