//! With the `cuda` feature, compiles the CUDA kernels of `src/cuda/*.cu` to PTX (loaded at
//! run time through candle's custom-module cache); without it, does nothing, so CPU builds
//! need no CUDA toolkit. The PTX targets `CUDA_COMPUTE_CAP` (as candle's own kernels do;
//! default 80), which the driver JIT-compiles for newer GPUs.

use std::path::PathBuf;
use std::process::Command;

/// The `.cu` files under `src/cuda/`, each compiled to `$OUT_DIR/<name>.ptx`.
const KERNELS: &[&str] = &["train_ops"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/cuda");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let nvcc = std::env::var_os("CUDA_HOME")
        .map(|h| PathBuf::from(h).join("bin").join("nvcc"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for name in KERNELS {
        let src = format!("src/cuda/{name}.cu");
        let ptx = out.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", &format!("-arch=compute_{cap}"), &src, "-o"])
            .arg(&ptx)
            .status()
            .unwrap_or_else(|e| panic!("running {} for {src}: {e}", nvcc.display()));
        assert!(status.success(), "nvcc failed on {src} ({status})");
    }
}
