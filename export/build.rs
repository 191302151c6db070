//! Links libtorch with an rpath (the shared torch build script) and compiles edkd's subset
//! of the ONNX protobuf schema with protox + prost (pure Rust, no system `protoc`).

#[path = "../build/torch_rpath.rs"]
mod torch_rpath;

const PROTOS: &[&str] = &["onnx/onnx_subset.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    torch_rpath::main();
    for proto in PROTOS {
        println!("cargo:rerun-if-changed=proto/{proto}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
