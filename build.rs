//! Generates the ONNX protobuf types (prost) from the vendored onnx.proto (from onnx 1.14.1,
//! the version TPU-MLIR 1.30.2 pins). protox compiles the .proto in pure Rust: no protoc.

fn main() {
    let proto_dir = "support/onnx";
    println!("cargo:rerun-if-changed={proto_dir}/onnx.proto");
    let fds =
        protox::compile(["onnx.proto"], [proto_dir]).expect("compiling support/onnx/onnx.proto");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("generating ONNX types");
}
