//! PyTorch checkpoints (`torch.save`, the zip format of torch >= 1.6: `.pt`, `.bin`) read
//! without Python and without running their pickle: [`pickle`] accepts only what a state
//! dict of tensors needs, and tensors are rebuilt from the archive's `data/<key>` records
//! with their offset, size and stride checked against the storage.

pub mod pickle;

use std::io::Read;
use std::path::Path;

use tch::Tensor;

use crate::error::{Error, Result};
use pickle::{Pickle, TensorSpec, Value};

/// Keys under which training scripts store the weights next to other state (the Mu
/// reference's `checkpoint.py` writes `model_state_dict` and `model_config`).
const STATE_DICT_KEYS: [&str; 3] = ["model_state_dict", "state_dict", "model"];
const CONFIG_KEYS: [&str; 2] = ["model_config", "config"];

/// A checkpoint's tensors in file order, and the plain-data config stored beside them.
pub struct PtCheckpoint {
    pub tensors: Vec<(String, Tensor)>,
    pub config: Option<serde_json::Value>,
}

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::Pickle {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Whether `path` looks like a torch.save zip archive (by its name).
pub fn is_pt(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("pt" | "pth" | "bin" | "ckpt")
    )
}

/// Reads a torch.save archive: a state dict at the top level, or under one of
/// `model_state_dict`, `state_dict`, `model` (then `model_config`/`config`, when it is
/// plain data, comes back as JSON).
pub fn read(path: &Path) -> Result<PtCheckpoint> {
    let file = std::fs::File::open(path).map_err(Error::io(path))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        bad(
            path,
            format!("not a torch.save zip archive ({e}); legacy (pre-1.6) files are not read"),
        )
    })?;
    let names: Vec<String> = zip.file_names().map(str::to_string).collect();
    let pkl = names
        .iter()
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .ok_or_else(|| bad(path, "no <archive>/data.pkl record"))?
        .clone();
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    if let Ok(mut f) = zip.by_name(&format!("{prefix}byteorder")) {
        let mut order = String::new();
        f.read_to_string(&mut order).map_err(Error::io(path))?;
        if order.trim() != "little" {
            return Err(bad(
                path,
                format!("byte order {order:?}: only little-endian"),
            ));
        }
    }
    let bytes = read_record(&mut zip, &pkl, path)?;
    let p = pickle::load(&bytes).map_err(|m| bad(path, m))?;
    let (dict, config) = find_state_dict(&p, path)?;
    let mut tensors = Vec::with_capacity(dict.len());
    let mut storages: std::collections::HashMap<String, Tensor> = Default::default();
    for (name, spec) in dict {
        let storage = match storages.get(&spec.key) {
            Some(s) => s.shallow_clone(),
            None => {
                let s = read_storage(&mut zip, &prefix, spec, path)?;
                storages.insert(spec.key.clone(), s.shallow_clone());
                s
            }
        };
        tensors.push((name, rebuild(&storage, spec, path)?));
    }
    Ok(PtCheckpoint { tensors, config })
}

fn read_record(
    zip: &mut zip::ZipArchive<std::fs::File>,
    name: &str,
    path: &Path,
) -> Result<Vec<u8>> {
    let mut f = zip
        .by_name(name)
        .map_err(|e| bad(path, format!("record {name}: {e}")))?;
    // No capacity from the header: a forged size must not allocate before bytes arrive.
    let mut out = Vec::new();
    f.read_to_end(&mut out).map_err(Error::io(path))?;
    Ok(out)
}

/// Named tensor specs in file order, and the config stored beside them.
type StateDict<'p> = (Vec<(String, &'p TensorSpec)>, Option<serde_json::Value>);

/// The dict of tensors (names in file order) and the optional config.
fn find_state_dict<'p>(p: &'p Pickle, path: &Path) -> Result<StateDict<'p>> {
    let Value::Dict(top) = p.get(p.root) else {
        return Err(bad(path, "the pickled object is not a dict"));
    };
    let entry = |keys: &[&str]| {
        top.iter()
            .find(|&&(k, _)| p.str(k).is_some_and(|s| keys.contains(&s)))
            .map(|&(_, v)| v)
    };
    let is_tensor = |v: usize| matches!(p.get(v), Value::Tensor(_));
    let all_tensors = !top.is_empty() && top.iter().all(|&(_, v)| is_tensor(v));
    let (dict_id, config) = if all_tensors {
        (p.root, None)
    } else {
        let id = entry(&STATE_DICT_KEYS).ok_or_else(|| {
            let keys: Vec<&str> = top.iter().filter_map(|&(k, _)| p.str(k)).collect();
            bad(
                path,
                format!(
                    "no state dict: top-level keys are [{}], expected tensors or one of {}",
                    keys.join(", "),
                    STATE_DICT_KEYS.join(", ")
                ),
            )
        })?;
        (id, entry(&CONFIG_KEYS).and_then(|c| p.to_json(c)))
    };
    let Value::Dict(items) = p.get(dict_id) else {
        return Err(bad(path, "the state dict is not a dict"));
    };
    let mut out = Vec::with_capacity(items.len());
    for &(k, v) in items {
        let name = p.str(k).ok_or_else(|| {
            bad(
                path,
                format!("state dict key {:?} is not a string", p.get(k)),
            )
        })?;
        match p.get(v) {
            Value::Tensor(spec) => out.push((name.to_string(), spec)),
            other => {
                return Err(bad(
                    path,
                    format!("state dict entry `{name}` is {other:?}, not a tensor"),
                ));
            }
        }
    }
    Ok((out, config))
}

fn read_storage(
    zip: &mut zip::ZipArchive<std::fs::File>,
    prefix: &str,
    spec: &TensorSpec,
    path: &Path,
) -> Result<Tensor> {
    let kind = spec.storage.kind();
    let bytes = read_record(zip, &format!("{prefix}data/{}", spec.key), path)?;
    let elt = kind.elt_size_in_bytes();
    let expected = usize::try_from(spec.storage_numel)
        .ok()
        .and_then(|n| n.checked_mul(elt));
    if expected != Some(bytes.len()) {
        return Err(bad(
            path,
            format!(
                "storage data/{} holds {} bytes, its persistent id says {} x {elt}",
                spec.key,
                bytes.len(),
                spec.storage_numel
            ),
        ));
    }
    Ok(Tensor::f_from_data_size(
        &bytes,
        &[spec.storage_numel],
        kind,
    )?)
}

/// The tensor `spec` describes, copied out of `storage` after a bounds check.
fn rebuild(storage: &Tensor, spec: &TensorSpec, path: &Path) -> Result<Tensor> {
    let rank_ok = spec.size.len() == spec.stride.len();
    let signs_ok = spec.offset >= 0 && spec.size.iter().chain(&spec.stride).all(|&v| v >= 0);
    if !rank_ok || !signs_ok {
        return Err(bad(
            path,
            format!(
                "tensor on storage {}: size {:?}, stride {:?}, offset {} are not a valid view",
                spec.key, spec.size, spec.stride, spec.offset
            ),
        ));
    }
    let empty = spec.size.contains(&0);
    let last = spec
        .size
        .iter()
        .zip(&spec.stride)
        .try_fold(spec.offset, |acc, (&n, &s)| {
            (n - 1)
                .max(0)
                .checked_mul(s)
                .and_then(|d| acc.checked_add(d))
        });
    if !empty && last.is_none_or(|l| l >= spec.storage_numel) {
        return Err(bad(
            path,
            format!(
                "tensor on storage {} reaches past its {} elements (size {:?}, stride {:?}, offset {})",
                spec.key, spec.storage_numel, spec.size, spec.stride, spec.offset
            ),
        ));
    }
    Ok(storage
        .f_as_strided(spec.size.as_slice(), spec.stride.as_slice(), spec.offset)?
        .f_contiguous()?
        .copy())
}
