//! The GGUF reader and every dequantizer against gguf-py on the same bytes
//! (fixtures from `fixtures/gguf/make_gguf.py`), and the errors bad files get.

use std::path::{Path, PathBuf};

use edkd_models::gguf::tensors::dequantize_tensor;
use edkd_models::gguf::{GgmlType, GgufFile, Value};
use edkd_models::{Error, LoadOptions, Teacher};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gguf")
        .join(name)
}

#[test]
fn every_type_dequantizes_bit_for_bit_like_gguf_py() {
    let file = GgufFile::open(&fixture("quants.gguf")).unwrap();
    assert_eq!(file.version, 3);
    for ty in GgmlType::SUPPORTED {
        let name = ty.name();
        let q = file.tensor(&format!("q.{name}")).unwrap();
        assert_eq!(q.ggml_type, ty);
        assert_eq!(q.shape(), vec![3, 512], "{name}");
        let got = dequantize_tensor(&file, q).unwrap();
        let want =
            dequantize_tensor(&file, file.tensor(&format!("expected.{name}")).unwrap()).unwrap();
        assert_eq!(got.size(), want.size());
        // Bit-identical, not merely close: the same operations in the same order.
        let got: Vec<f32> = Vec::try_from(got.flatten(0, -1)).unwrap();
        let want: Vec<f32> = Vec::try_from(want.flatten(0, -1)).unwrap();
        let differing = got
            .iter()
            .zip(&want)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differing,
            0,
            "{name}: {differing} of {} values differ",
            got.len()
        );
        assert!(
            want.iter().any(|v| *v != 0.0),
            "{name}: fixture is all zeros"
        );
    }
}

#[test]
fn metadata_of_every_value_type_reads_back() {
    let file = GgufFile::open(&fixture("quants.gguf")).unwrap();
    let get = |k: &str| file.get(k).unwrap_or_else(|| panic!("{k} missing")).clone();
    assert_eq!(get("test.u8"), Value::U8(200));
    assert_eq!(get("test.i8"), Value::I8(-100));
    assert_eq!(get("test.u16"), Value::U16(60000));
    assert_eq!(get("test.i16"), Value::I16(-30000));
    assert_eq!(get("test.u32"), Value::U32(4_000_000_000));
    assert_eq!(get("test.i32"), Value::I32(-2_000_000_000));
    assert_eq!(get("test.u64"), Value::U64(1 << 40));
    assert_eq!(get("test.i64"), Value::I64(-(1 << 40)));
    assert_eq!(get("test.f32"), Value::F32(0.25));
    assert_eq!(get("test.f64"), Value::F64(-1.5));
    assert_eq!(get("test.bool"), Value::Bool(true));
    assert_eq!(
        file.get_str("test.string").unwrap(),
        Some("h\u{e9}llo \u{2581} world")
    );
    assert_eq!(
        file.get_numbers("test.array_i32").unwrap(),
        Some(vec![1.0, -2.0, 3.0])
    );
    assert_eq!(
        file.get_strings("test.array_str").unwrap(),
        Some(vec!["a", "", "\u{fc}"])
    );
    assert_eq!(file.get_i64("general.alignment").unwrap(), Some(64));
    // A key of the wrong type is an error naming the key, not a silent None.
    let err = file.get_str("test.u8").unwrap_err().to_string();
    assert!(
        err.contains("`test.u8` is a u8, expected a string"),
        "{err}"
    );
}

fn gguf_error(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, bytes).unwrap();
    match GgufFile::open(&path) {
        Ok(_) => panic!("a bad file opened"),
        Err(e) => {
            assert!(matches!(e, Error::Gguf { .. }), "{e:?}");
            e.to_string()
        }
    }
}

#[test]
fn truncated_files_and_bad_magic_are_clear_errors() {
    let bytes = std::fs::read(fixture("quants.gguf")).unwrap();
    // Inside the header, the metadata, the tensor infos and the tensor data.
    for cut in [3, 10, 30, 200, 1500, bytes.len() - 1] {
        let err = gguf_error(&bytes[..cut]);
        assert!(err.contains("truncated"), "cut at {cut}: {err}");
        assert!(err.contains("bad.gguf"), "names the file: {err}");
    }
    let err = gguf_error(&bytes[..bytes.len() - 1]);
    assert!(
        err.contains("tensor `expected.Q6_K`"),
        "names the tensor: {err}"
    );

    let mut bad = bytes.clone();
    bad[..4].copy_from_slice(b"GGML");
    let err = gguf_error(&bad);
    assert!(
        err.contains("not a GGUF file") && err.contains("GGML"),
        "{err}"
    );

    // Version 2 has the same layout as 3 (which only added big-endian files).
    let mut v2 = bytes.clone();
    v2[4..8].copy_from_slice(&2u32.to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("v2.gguf"), &v2).unwrap();
    let file = GgufFile::open(&dir.path().join("v2.gguf")).unwrap();
    assert_eq!((file.version, file.tensors.len()), (2, 26));

    let mut v1 = bytes.clone();
    v1[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(gguf_error(&v1).contains("version 1 is not supported"));
}

#[test]
fn a_missing_gguf_file_is_named() {
    let err = Teacher::load(&fixture("no_such.gguf"), LoadOptions::default())
        .err()
        .expect("nothing to load")
        .to_string();
    assert!(
        err.contains("no_such.gguf") && err.contains("No such file"),
        "{err}"
    );
}

#[test]
fn unsupported_tensor_type_names_tensor_and_type() {
    let err = Teacher::load(&fixture("bad_type.gguf"), LoadOptions::default())
        .err()
        .expect("IQ2_XXS does not load");
    assert!(matches!(err, Error::GgufTensorType { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("`blk.0.attn_q.weight`"), "{msg}");
    assert!(msg.contains("IQ2_XXS"), "{msg}");
    assert!(msg.contains("Q4_K"), "lists what is supported: {msg}");
}

#[test]
fn unsupported_architecture_is_named() {
    let err = Teacher::load(&fixture("bad_arch.gguf"), LoadOptions::default())
        .err()
        .expect("mamba does not load");
    assert!(
        matches!(err, Error::UnsupportedArchitecture { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("mamba") && msg.contains("llama, qwen2"),
        "{msg}"
    );
}
