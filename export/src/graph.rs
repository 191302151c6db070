//! A small builder for ONNX graphs: nodes in topological order, initializers (weights and
//! constants), typed inputs and outputs, and the model file around them. Values are named
//! by strings, as in the format itself.

use std::collections::HashMap;

use prost::Message;

use crate::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto::AttributeType,
    tensor_proto::DataType, tensor_shape_proto, type_proto,
};

/// The default-domain operator set every graph uses (LayerNormalization exists from 17;
/// reductions still take `axes` as an attribute there, ReduceSum as an input).
pub const OPSET: i64 = 17;
/// ONNX IR version of opset 17 (ONNX 1.12).
pub const IR_VERSION: i64 = 8;
/// Protobuf messages cannot exceed 2 GiB; larger graphs would need external data.
pub const MAX_MODEL_BYTES: usize = (1 << 31) - 1;

/// A graph value's name.
pub type V = String;

/// Element types edkd's graphs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Elem {
    Float32,
    Int64,
    Int8,
    Uint8,
    Int32,
    Bool,
}

impl Elem {
    pub fn onnx(self) -> i32 {
        (match self {
            Elem::Float32 => DataType::Float,
            Elem::Int64 => DataType::Int64,
            Elem::Int8 => DataType::Int8,
            Elem::Uint8 => DataType::Uint8,
            Elem::Int32 => DataType::Int32,
            Elem::Bool => DataType::Bool,
        }) as i32
    }
}

/// One axis of an input or output: fixed, or a named dynamic axis.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(i64),
    Named(String),
}

impl From<i64> for Dim {
    fn from(n: i64) -> Self {
        Dim::Fixed(n)
    }
}

impl From<&str> for Dim {
    fn from(s: &str) -> Self {
        Dim::Named(s.to_owned())
    }
}

/// A graph input or output as the export manifest lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Io {
    pub name: String,
    pub dtype: Elem,
    pub shape: Vec<Dim>,
}

/// An attribute value.
pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Str(&'static str),
}

fn attribute(name: &str, value: Attr) -> AttributeProto {
    let mut a = AttributeProto {
        name: name.to_owned(),
        ..Default::default()
    };
    match value {
        Attr::Int(i) => {
            a.r#type = AttributeType::Int as i32;
            a.i = i;
        }
        Attr::Float(f) => {
            a.r#type = AttributeType::Float as i32;
            a.f = f;
        }
        Attr::Ints(v) => {
            a.r#type = AttributeType::Ints as i32;
            a.ints = v;
        }
        Attr::Str(s) => {
            a.r#type = AttributeType::String as i32;
            a.s = s.as_bytes().to_vec();
        }
    }
    a
}

/// Key of a deduplicated small constant.
#[derive(Hash, PartialEq, Eq)]
enum ConstKey {
    I64(Vec<i64>, Vec<i64>),
    F32(Vec<u32>, Vec<i64>),
}

/// A graph under construction.
#[derive(Default)]
pub struct Graph {
    name: String,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    pub input_specs: Vec<Io>,
    pub output_specs: Vec<Io>,
    consts: HashMap<ConstKey, V>,
    counter: usize,
    /// Bytes of all initializers (what the weights cost on disk).
    pub initializer_bytes: u64,
}

fn value_info(io: &Io) -> ValueInfoProto {
    let dim = io
        .shape
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Fixed(n) => tensor_shape_proto::dimension::Value::DimValue(*n),
                Dim::Named(s) => tensor_shape_proto::dimension::Value::DimParam(s.clone()),
            }),
            denotation: String::new(),
        })
        .collect();
    ValueInfoProto {
        name: io.name.clone(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: io.dtype.onnx(),
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
}

impl Graph {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Default::default()
        }
    }

    /// Declares a graph input and returns its value.
    pub fn input(&mut self, name: &str, dtype: Elem, shape: Vec<Dim>) -> V {
        let io = Io {
            name: name.to_owned(),
            dtype,
            shape,
        };
        self.inputs.push(value_info(&io));
        self.input_specs.push(io);
        name.to_owned()
    }

    /// Exposes `value` as a graph output called `name` (through an Identity when the names
    /// differ).
    pub fn output(&mut self, value: &str, name: &str, dtype: Elem, shape: Vec<Dim>) {
        if value != name {
            self.node("Identity", &[value], &[name], vec![]);
        }
        let io = Io {
            name: name.to_owned(),
            dtype,
            shape,
        };
        self.outputs.push(value_info(&io));
        self.output_specs.push(io);
    }

    fn fresh(&mut self, op: &str) -> V {
        self.counter += 1;
        format!("{op}_{}", self.counter)
    }

    fn node(&mut self, op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<(&str, Attr)>) {
        self.counter += 1;
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name: format!("{op}_n{}", self.counter),
            op_type: op.to_owned(),
            attribute: attrs.into_iter().map(|(n, v)| attribute(n, v)).collect(),
            doc_string: String::new(),
            domain: String::new(),
        });
    }

    /// A node with one output; returns it.
    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> V {
        let out = self.fresh(op);
        self.node(op, inputs, &[&out], attrs);
        out
    }

    /// A node with `n` outputs.
    pub fn op_n(
        &mut self,
        op: &str,
        inputs: &[&str],
        n: usize,
        attrs: Vec<(&str, Attr)>,
    ) -> Vec<V> {
        let outs: Vec<V> = (0..n).map(|_| self.fresh(op)).collect();
        let refs: Vec<&str> = outs.iter().map(String::as_str).collect();
        self.node(op, inputs, &refs, attrs);
        outs
    }

    /// Adds an initializer of raw little-endian bytes.
    pub fn initializer(&mut self, name: &str, dtype: Elem, dims: &[i64], raw: Vec<u8>) -> V {
        self.initializer_bytes += raw.len() as u64;
        self.initializers.push(TensorProto {
            dims: dims.to_vec(),
            data_type: dtype.onnx(),
            name: name.to_owned(),
            raw_data: raw,
            ..Default::default()
        });
        name.to_owned()
    }

    pub fn init_f32(&mut self, name: &str, dims: &[i64], data: &[f32]) -> V {
        let raw = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.initializer(name, Elem::Float32, dims, raw)
    }

    pub fn init_i8(&mut self, name: &str, dims: &[i64], data: &[i8]) -> V {
        let raw = data.iter().map(|&x| x as u8).collect();
        self.initializer(name, Elem::Int8, dims, raw)
    }

    /// A deduplicated int64 constant of shape `dims` (`[]` for a scalar).
    pub fn c_i64(&mut self, dims: &[i64], data: &[i64]) -> V {
        let key = ConstKey::I64(dims.to_vec(), data.to_vec());
        if let Some(v) = self.consts.get(&key) {
            return v.clone();
        }
        let name = self.fresh("const_i64");
        let raw = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.initializer(&name, Elem::Int64, dims, raw);
        self.consts.insert(key, name.clone());
        name
    }

    /// A 1-D int64 constant.
    pub fn ints(&mut self, data: &[i64]) -> V {
        self.c_i64(&[data.len() as i64], data)
    }

    /// A deduplicated f32 constant of shape `dims`.
    pub fn c_f32(&mut self, dims: &[i64], data: &[f32]) -> V {
        let key = ConstKey::F32(data.iter().map(|x| x.to_bits()).collect(), dims.to_vec());
        if let Some(v) = self.consts.get(&key) {
            return v.clone();
        }
        let name = self.fresh("const_f32");
        self.init_f32(&name, dims, data);
        self.consts.insert(key, name.clone());
        name
    }

    /// An f32 scalar constant.
    pub fn scalar(&mut self, x: f32) -> V {
        self.c_f32(&[], &[x])
    }

    // --- Operators ----------------------------------------------------------------------

    pub fn add(&mut self, a: &str, b: &str) -> V {
        self.op("Add", &[a, b], vec![])
    }
    pub fn sub(&mut self, a: &str, b: &str) -> V {
        self.op("Sub", &[a, b], vec![])
    }
    pub fn mul(&mut self, a: &str, b: &str) -> V {
        self.op("Mul", &[a, b], vec![])
    }
    pub fn div(&mut self, a: &str, b: &str) -> V {
        self.op("Div", &[a, b], vec![])
    }
    pub fn matmul(&mut self, a: &str, b: &str) -> V {
        self.op("MatMul", &[a, b], vec![])
    }
    pub fn unary(&mut self, op: &str, x: &str) -> V {
        self.op(op, &[x], vec![])
    }
    pub fn mul_scalar(&mut self, x: &str, s: f32) -> V {
        let c = self.scalar(s);
        self.mul(x, &c)
    }
    pub fn add_scalar(&mut self, x: &str, s: f32) -> V {
        let c = self.scalar(s);
        self.add(x, &c)
    }
    pub fn cast(&mut self, x: &str, to: Elem) -> V {
        self.op("Cast", &[x], vec![("to", Attr::Int(to.onnx() as i64))])
    }
    pub fn reshape(&mut self, x: &str, shape: &[i64]) -> V {
        let s = self.ints(shape);
        self.op("Reshape", &[x, &s], vec![])
    }
    pub fn transpose(&mut self, x: &str, perm: &[i64]) -> V {
        self.op("Transpose", &[x], vec![("perm", Attr::Ints(perm.to_vec()))])
    }
    pub fn unsqueeze(&mut self, x: &str, axes: &[i64]) -> V {
        let a = self.ints(axes);
        self.op("Unsqueeze", &[x, &a], vec![])
    }
    pub fn squeeze(&mut self, x: &str, axes: &[i64]) -> V {
        let a = self.ints(axes);
        self.op("Squeeze", &[x, &a], vec![])
    }
    pub fn concat(&mut self, xs: &[&str], axis: i64) -> V {
        self.op("Concat", xs, vec![("axis", Attr::Int(axis))])
    }
    pub fn gather(&mut self, data: &str, index: &str, axis: i64) -> V {
        self.op("Gather", &[data, index], vec![("axis", Attr::Int(axis))])
    }
    /// `x[..., start:end]` along `axis`.
    pub fn slice(&mut self, x: &str, axis: i64, start: i64, end: i64) -> V {
        let (s, e, a) = (self.ints(&[start]), self.ints(&[end]), self.ints(&[axis]));
        self.op("Slice", &[x, &s, &e, &a], vec![])
    }
    pub fn softmax(&mut self, x: &str, axis: i64) -> V {
        self.op("Softmax", &[x], vec![("axis", Attr::Int(axis))])
    }
    /// Mean over `axes`, keeping them (opset 17: axes is an attribute).
    pub fn reduce_mean(&mut self, x: &str, axes: &[i64]) -> V {
        self.op(
            "ReduceMean",
            &[x],
            vec![
                ("axes", Attr::Ints(axes.to_vec())),
                ("keepdims", Attr::Int(1)),
            ],
        )
    }
    /// Sum over `axes`, keeping them (opset 13+: axes is an input).
    pub fn reduce_sum(&mut self, x: &str, axes: &[i64]) -> V {
        let a = self.ints(axes);
        self.op("ReduceSum", &[x, &a], vec![("keepdims", Attr::Int(1))])
    }
    /// Dimension `axis` of `x` as a 1-D int64 tensor of one element.
    pub fn dim(&mut self, x: &str, axis: i64) -> V {
        self.op(
            "Shape",
            &[x],
            vec![("start", Attr::Int(axis)), ("end", Attr::Int(axis + 1))],
        )
    }
    /// Dimension `axis` of `x` as an int64 scalar.
    pub fn dim_scalar(&mut self, x: &str, axis: i64) -> V {
        let d = self.dim(x, axis);
        self.squeeze(&d, &[0])
    }
    /// `start, start+1, ..., limit-1` from int64 scalars.
    pub fn range(&mut self, start: &str, limit: &str) -> V {
        let one = self.c_i64(&[], &[1]);
        self.op("Range", &[start, limit, &one], vec![])
    }
    pub fn where_(&mut self, cond: &str, a: &str, b: &str) -> V {
        self.op("Where", &[cond, a, b], vec![])
    }

    // --- The file -----------------------------------------------------------------------

    /// The model proto around this graph; `meta` becomes `metadata_props`.
    pub fn into_model(self, doc: &str, meta: &[(&str, String)]) -> ModelProto {
        ModelProto {
            ir_version: IR_VERSION,
            producer_name: "edkd".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            domain: String::new(),
            model_version: 1,
            doc_string: doc.to_owned(),
            graph: Some(GraphProto {
                node: self.nodes,
                name: self.name,
                initializer: self.initializers,
                doc_string: String::new(),
                input: self.inputs,
                output: self.outputs,
                value_info: Vec::new(),
            }),
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            metadata_props: meta
                .iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: (*k).to_owned(),
                    value: v.clone(),
                })
                .collect(),
        }
    }
}

/// Serialises a model, refusing sizes protobuf cannot hold.
pub fn encode_model(model: &ModelProto, what: &str) -> crate::Result<Vec<u8>> {
    let len = model.encoded_len();
    if len > MAX_MODEL_BYTES {
        return Err(crate::Error::TooLarge {
            what: what.to_owned(),
            bytes: len as u64,
            limit: MAX_MODEL_BYTES as u64,
        });
    }
    Ok(model.encode_to_vec())
}
