// Shared build script for crates whose binaries and tests link libtorch.
//
// tch's link flags do not reach dependent binaries, so each such crate embeds an rpath
// to libtorch's lib folder (binaries then run without LD_LIBRARY_PATH). When the CUDA
// libraries are installed, libtorch_cuda is linked with --no-as-needed: nothing references
// its symbols directly, so the default --as-needed would silently drop it and CUDA would
// look unavailable at run time.
use std::path::Path;

pub fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:rustc-env=EDKD_TORCH_VERSION=unknown");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    let lib = Path::new(&lib);
    // torch/version.py: `__version__ = '2.11.0+cu130'`, exposed to the crate for `edkd info`.
    let version = std::fs::read_to_string(lib.join("../version.py"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("__version__ = ")
                    .map(|v| v.trim_matches(['\'', '"']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=EDKD_TORCH_VERSION={version}");
    // The nvidia-* wheels sit next to torch in site-packages; cuDNN marks a full CUDA set.
    let cuda_set = lib.join("libtorch_cuda.so").exists() && lib.join("../../nvidia/cudnn").exists();
    if cuda_set {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
