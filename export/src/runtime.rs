//! ONNX Runtime, loaded at run time: finding `libonnxruntime.so`, sessions with a thread
//! count, and tensors in and out. The build never links the library; without it every
//! entry point returns [`Error::RuntimeMissing`] naming where it looked.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::{Session, SessionInputValue, SessionOutputs, builder::GraphOptimizationLevel};
use ort::value::{DynValue, Tensor};

use crate::error::{Error, Result};

/// The variable naming the library explicitly (the `ort` crate's own convention).
pub const LIBRARY_ENV: &str = "ORT_DYLIB_PATH";

/// The link `scripts/setup.sh` makes to the wheel's library, in the repository's venv.
const VENV_LINK: &str = ".venv/libonnxruntime.so";

/// Where to look for the library: `$ORT_DYLIB_PATH`, the setup link, then the
/// `onnxruntime` wheel inside the repository's venv.
pub fn library_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(p) = std::env::var(LIBRARY_ENV)
        && !p.is_empty()
    {
        out.push(PathBuf::from(p));
        return out;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    out.push(repo.join(VENV_LINK));
    if let Ok(libs) = std::fs::read_dir(repo.join(".venv/lib")) {
        for py in libs.flatten() {
            let capi = py.path().join("site-packages/onnxruntime/capi");
            if let Ok(files) = std::fs::read_dir(&capi) {
                let mut found: Vec<PathBuf> = files
                    .flatten()
                    .map(|f| f.path())
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("libonnxruntime.so"))
                    })
                    .collect();
                found.sort();
                out.extend(found);
            }
        }
    }
    out
}

static LOADED: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();

/// Loads ONNX Runtime once per process; returns the library's path.
pub fn init() -> Result<PathBuf> {
    LOADED
        .get_or_init(|| {
            let candidates = library_candidates();
            let Some(path) = candidates.iter().find(|p| p.is_file()) else {
                let tried: Vec<String> =
                    candidates.iter().map(|p| p.display().to_string()).collect();
                return Err(format!(
                    "libonnxruntime.so not found (looked at: {})",
                    if tried.is_empty() {
                        "nothing".into()
                    } else {
                        tried.join(", ")
                    }
                ));
            };
            match ort::init_from(path) {
                Ok(builder) => {
                    builder.with_name("edkd").commit();
                    Ok(path.clone())
                }
                Err(e) => Err(format!("loading {}: {e}", path.display())),
            }
        })
        .clone()
        .map_err(Error::RuntimeMissing)
}

/// Whether the library can be loaded (for callers that offer ONNX as an option).
pub fn available() -> bool {
    init().is_ok()
}

/// Opens a graph with `threads` intra-op threads and all graph optimisations.
pub fn session(path: &Path, threads: usize) -> Result<Session> {
    init()?;
    let what = format!("opening {}", path.display());
    Session::builder()
        .map_err(Error::ort(what.clone()))?
        .with_intra_threads(threads.max(1))
        .map_err(Error::ort(what.clone()))?
        .with_inter_threads(1)
        .map_err(Error::ort(what.clone()))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(Error::ort(what.clone()))?
        .commit_from_file(path)
        .map_err(Error::ort(what))
}

/// Named inputs of one run.
pub type Inputs<'v> = Vec<(Cow<'static, str>, SessionInputValue<'v>)>;

pub fn i64_tensor(shape: &[usize], data: Vec<i64>) -> Result<DynValue> {
    Ok(Tensor::from_array((shape.to_vec(), data))
        .map_err(Error::ort("making an int64 input"))?
        .into_dyn())
}

pub fn f32_tensor(shape: &[usize], data: Vec<f32>) -> Result<DynValue> {
    Ok(Tensor::from_array((shape.to_vec(), data))
        .map_err(Error::ort("making an f32 input"))?
        .into_dyn())
}

/// Runs `session`; `what` names the graph in errors.
pub fn run<'s>(
    session: &'s mut Session,
    inputs: Inputs<'_>,
    what: &str,
) -> Result<SessionOutputs<'s>> {
    session
        .run(inputs)
        .map_err(Error::ort(format!("running {what}")))
}

/// Removes output `name` from `out`.
pub fn take(out: &mut SessionOutputs<'_>, name: &str) -> Result<DynValue> {
    out.remove(name).ok_or_else(|| Error::Ort {
        context: "reading outputs".into(),
        msg: format!("the graph has no output `{name}`"),
    })
}

/// An f32 output as its shape and values.
pub fn f32_values(v: &DynValue, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let (shape, data) = v
        .try_extract_tensor::<f32>()
        .map_err(Error::ort(format!("reading `{name}`")))?;
    Ok((shape.iter().map(|&d| d as usize).collect(), data.to_vec()))
}
