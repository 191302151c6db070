//! Prost types of edkd's ONNX schema subset (`export/proto/onnx/onnx_subset.proto`).
#![allow(clippy::all, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
