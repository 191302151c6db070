//! Strict loading and saving of safetensors weights into a `tch::nn::VarStore`.
//!
//! A model is built first (its variables named exactly like the checkpoint's keys), then
//! [`load_folder`] copies every tensor in. Missing keys, unused keys, wrong shapes and
//! corrupt headers are errors that name the file and key.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use tch::{Kind, Tensor, nn::VarStore};

use crate::error::{Error, Result, read_json};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The safetensors files of a checkpoint folder: one file, or the shards of an index.
pub fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(SINGLE_FILE);
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join(INDEX_FILE);
    if !index.exists() {
        return Err(Error::MissingFile {
            path: single,
            what: "weights: model.safetensors or model.safetensors.index.json",
        });
    }
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let parsed: Index = read_json(&index)?;
    let shards: BTreeSet<&String> = parsed.weight_map.values().collect();
    let mut files = Vec::new();
    for shard in shards {
        let path = dir.join(shard);
        if !path.exists() {
            return Err(Error::MissingFile {
                path,
                what: "shard listed in model.safetensors.index.json",
            });
        }
        files.push(path);
    }
    Ok(files)
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        _ => return None,
    })
}

/// Keys that checkpoints may carry but that are derived, not learned (old rotary buffers).
fn is_ignorable(key: &str) -> bool {
    key.ends_with("rotary_emb.inv_freq")
}

/// Copies every variable of `vs` from the checkpoint in `dir`, strictly.
pub fn load_folder(vs: &mut VarStore, dir: &Path) -> Result<()> {
    load_files(vs, &checkpoint_files(dir)?, dir)
}

/// As [`load_folder`], for an explicit list of safetensors files.
pub fn load_files(vs: &mut VarStore, files: &[PathBuf], name_for_errors: &Path) -> Result<()> {
    let plan = KeyPlan {
        from: "",
        to: "",
        skip: &is_ignorable,
    };
    load_files_planned(vs, files, name_for_errors, &plan)
}

/// How checkpoint keys meet VarStore variables when they are not one-to-one: a checkpoint
/// that nests the model under a prefix, a model that lives inside a larger VarStore, or a
/// checkpoint that carries known tensors this model does not use.
pub struct KeyPlan<'a> {
    /// Checkpoint keys `from + rest` load into the variables `to + rest`; keys outside
    /// `from` are unused unless `skip` knows them.
    pub from: &'a str,
    /// Only the variables under this prefix must be filled; the rest of the VarStore is
    /// left alone.
    pub to: &'a str,
    /// Keys the checkpoint may carry without them being errors.
    pub skip: &'a dyn Fn(&str) -> bool,
}

/// Copies the variables under `plan.to` from `files`, strictly: missing and unused keys are
/// errors naming the checkpoint's keys, shapes must agree exactly.
pub fn load_files_planned(
    vs: &mut VarStore,
    files: &[PathBuf],
    name_for_errors: &Path,
    plan: &KeyPlan<'_>,
) -> Result<()> {
    let mut wanted: HashMap<String, Tensor> = vs
        .variables()
        .into_iter()
        .filter_map(|(name, var)| {
            let rest = name.strip_prefix(plan.to)?;
            Some((format!("{}{rest}", plan.from), var))
        })
        .collect();
    let mut unused = Vec::new();
    for path in files {
        let file = std::fs::File::open(path).map_err(Error::io(path))?;
        // SAFETY: the map is read-only and dropped before we return; a checkpoint being
        // rewritten underneath a running load is outside what we can defend against.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(Error::io(path))?;
        let st = SafeTensors::deserialize(&mmap).map_err(|e| Error::Safetensors {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        for (key, view) in st.tensors() {
            let Some(mut var) = wanted.remove(&key) else {
                if !(plan.skip)(&key) {
                    unused.push(key);
                }
                continue;
            };
            let found: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            if found != var.size() {
                return Err(Error::Shape {
                    path: path.clone(),
                    key,
                    found,
                    expected: var.size(),
                });
            }
            let kind = kind_of(view.dtype()).ok_or_else(|| Error::Dtype {
                path: path.clone(),
                key: key.clone(),
                dtype: format!("{:?}", view.dtype()),
            })?;
            let src = Tensor::f_from_data_size(view.data(), &found, kind)?;
            tch::no_grad(|| var.f_copy_(&src.f_to_kind(var.kind())?))?;
        }
    }
    if !wanted.is_empty() {
        let mut keys: Vec<String> = wanted.into_keys().collect();
        keys.sort();
        return Err(Error::MissingTensors {
            path: name_for_errors.to_path_buf(),
            keys,
        });
    }
    if !unused.is_empty() {
        unused.sort();
        return Err(Error::UnusedTensors {
            path: name_for_errors.to_path_buf(),
            keys: unused,
        });
    }
    Ok(())
}

fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        other => {
            return Err(Error::Input(format!(
                "cannot save tensors of kind {other:?}"
            )));
        }
    })
}

/// Raw little-endian bytes of a tensor (moved to CPU, made contiguous).
pub fn tensor_bytes(t: &Tensor) -> Result<(Dtype, Vec<usize>, Vec<u8>)> {
    let t = t.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
    let dtype = dtype_of(t.kind())?;
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let numel: usize = shape.iter().product();
    let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut bytes, numel)?;
    Ok((dtype, shape, bytes))
}

/// Writes named tensors to one safetensors file (keys sorted, as the format requires).
pub fn save_tensors(
    named: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
    path: &Path,
) -> Result<()> {
    let mut owned = Vec::with_capacity(named.len());
    for (name, t) in named {
        let (dtype, shape, bytes) = tensor_bytes(t)?;
        owned.push((name.clone(), dtype, shape, bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .expect("shape and byte length agree by construction");
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, metadata, path).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

/// Saves every variable of a VarStore to `path` (no tied duplicates: a VarStore holds each once).
pub fn save_varstore(vs: &VarStore, path: &Path) -> Result<()> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    save_tensors(&named, Some(meta), path)
}
