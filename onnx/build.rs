//! Generates the ONNX protobuf types from the vendored official `onnx.proto`
//! (proto2, so field presence survives a read/write round trip). `protox`
//! compiles the schema in pure Rust, so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let descriptors = protox::compile(["proto/onnx.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
