//! Compiles the .proto files in pure Rust (protox, no system `protoc`) and writes the
//! encoded file descriptor set next to the generated code, for gRPC reflection.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &["edkd/teacher/v1/teacher.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("edkd_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .bytes(".edkd.teacher.v1.ScoredSequence")
        .bytes(".edkd.teacher.v1.Sequence.images")
        .compile_fds(fds)?;
    Ok(())
}
