//! Two jobs:
//! - generates the gRPC server code (`tei.v1`) from `proto/tei.proto` with a pure-Rust
//!   protobuf compiler, so no protoc is needed;
//! - with the `cuda` feature, compiles spotinfer's own CUDA kernels
//!   (`src/model/cuda/kernels/*.cu`) to PTX, embedded with `include_str!` by
//!   `src/model/cuda/kernels.rs` and JIT-compiled by the driver at load.
//!
//! nvcc comes from `$NVCC`, else `$CUDA_HOME/bin/nvcc`, else `PATH`. On a machine without CUDA
//! use `scripts/cuda-build.sh` (pinned CUDA 13.0 wheels; see docs/CUDA.md).

use std::path::{Path, PathBuf};
use std::process::Command;

/// compute_80: the oldest architecture the kernels need (mma.sync with BF16); the driver
/// JIT-compiles it for the GPU at hand (sm_80 .. sm_90 and newer).
const NVCC_FLAGS: &[&str] = &[
    "--ptx",
    "-arch=compute_80",
    "-O3",
    "-std=c++17",
    "-lineinfo",
    "-Werror",
    "all-warnings",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if let Err(e) = build_proto() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    if let Err(e) = build_kernels() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// `proto/tei.proto` -> `$OUT_DIR/tei.v1.rs` (messages and server traits; no client).
fn build_proto() -> Result<(), String> {
    const PROTO: &str = "proto/tei.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let fds = protox::compile([PROTO], ["proto"]).map_err(|e| format!("{PROTO}: {e}"))?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_transport(false)
        .compile_fds(fds)
        .map_err(|e| format!("generating gRPC code from {PROTO}: {e}"))
}

fn build_kernels() -> Result<(), String> {
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let manifest =
        std::env::var("CARGO_MANIFEST_DIR").map_err(|e| format!("CARGO_MANIFEST_DIR: {e}"))?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?);
    let dir = Path::new(&manifest).join("src/model/cuda/kernels");
    println!("cargo:rerun-if-changed={}", dir.display());
    if !dir.is_dir() {
        // A dependency-only build with a stub src/ (Dockerfile.cuda's cached layer): nothing
        // to compile. A real build without the directory fails at the include_str! instead.
        println!(
            "cargo:warning=no {} (stub build?): no spotinfer kernels compiled",
            dir.display()
        );
        return Ok(());
    }

    let mut sources = Vec::new();
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("cu") => {
                println!("cargo:rerun-if-changed={}", path.display());
                sources.push(path);
            }
            Some("cuh") => println!("cargo:rerun-if-changed={}", path.display()),
            _ => {}
        }
    }
    sources.sort();

    let nvcc = find_nvcc()?;
    // One nvcc per file, all at once (a handful of files, a few seconds each).
    let mut jobs = Vec::new();
    for src in &sources {
        let stem = src
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| format!("bad kernel file name {}", src.display()))?;
        let ptx = out_dir.join(format!("{stem}.ptx"));
        let child = Command::new(&nvcc)
            .args(NVCC_FLAGS)
            .arg("-I")
            .arg(&dir)
            .arg("-o")
            .arg(&ptx)
            .arg(src)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
        jobs.push((src.clone(), child));
    }
    let mut failed = Vec::new();
    for (src, mut child) in jobs {
        let status = child.wait().map_err(|e| format!("waiting for nvcc: {e}"))?;
        if !status.success() {
            failed.push(src.display().to_string());
        }
    }
    if !failed.is_empty() {
        return Err(format!("nvcc failed on {}", failed.join(", ")));
    }
    Ok(())
}

fn find_nvcc() -> Result<PathBuf, String> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("NVCC") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(home) = std::env::var_os("CUDA_HOME") {
        candidates.push(Path::new(&home).join("bin/nvcc"));
    }
    candidates.push(PathBuf::from("nvcc"));
    for c in candidates {
        if Command::new(&c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Ok(c);
        }
    }
    Err(
        "the `cuda` feature compiles src/model/cuda/kernels/*.cu with nvcc, and no nvcc was found \
         ($NVCC, $CUDA_HOME/bin/nvcc, PATH). On a machine without a CUDA toolkit build with \
         `scripts/cuda-build.sh` (it installs the pinned CUDA 13.0 nvcc wheels and sets the \
         environment; see docs/CUDA.md)."
            .to_string(),
    )
}
