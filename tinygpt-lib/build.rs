//! Links Intel MKL into the binaries when the `mkl` feature is on (see scripts/mkl-env.sh).
//! Without the feature this script does nothing.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=TINYGPT_MKL_DIR");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_MKL").is_none() {
        return;
    }
    // The folder `scripts/mkl-env.sh setup` fills: $TINYGPT_MKL_DIR, else .mkl at the root.
    let dir = match std::env::var_os("TINYGPT_MKL_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../.mkl"),
    };
    let lib = dir.join("lib");
    // Sequential MKL: the rayon threads split each product between them (candle-core's patch).
    let libs = ["mkl_intel_lp64", "mkl_sequential", "mkl_core"];
    if let Some(missing) = libs
        .iter()
        .find(|name| !lib.join(format!("lib{name}.a")).is_file())
    {
        eprintln!(
            "error: the `mkl` feature needs Intel MKL's static libraries, and {} is missing.\n\
             Fix: run `scripts/mkl-env.sh setup` (it puts them in .mkl/lib), or set \
             TINYGPT_MKL_DIR to a folder whose lib/ holds libmkl_intel_lp64.a, \
             libmkl_sequential.a and libmkl_core.a.",
            lib.join(format!("lib{missing}.a")).display()
        );
        std::process::exit(1);
    }
    println!("cargo:rerun-if-changed={}", lib.display());
    println!("cargo:rustc-link-search=native={}", lib.display());
    // The order of Intel's link-line advisor (interface, threading, core). Intel wraps the three
    // in `-Wl,--start-group`, as they refer to each other; for `cblas_sgemm` this order suffices.
    for name in libs {
        println!("cargo:rustc-link-lib=static:-bundle={name}");
    }
    for name in ["pthread", "m", "dl"] {
        println!("cargo:rustc-link-lib=dylib={name}");
    }
}
