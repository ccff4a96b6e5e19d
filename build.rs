//! Build-time code generation:
//! - the ONNX protobuf types (prost) from the vendored onnx.proto (from onnx 1.14.1, the version
//!   TPU-MLIR 1.30.2 pins). protox compiles the .proto in pure Rust: no protoc.
//! - the bmrt/bmlib FFI (bindgen) from our own header `support/include/llm_convert_bmrt.h`, as a
//!   struct of function pointers filled by dlopen at run time: the binary never links libbmrt.

use std::path::PathBuf;

const BMRT_HEADER: &str = "support/include/llm_convert_bmrt.h";

fn main() {
    onnx_types();
    bmrt_bindings();
}

fn onnx_types() {
    let proto_dir = "support/onnx";
    println!("cargo:rerun-if-changed={proto_dir}/onnx.proto");
    let fds =
        protox::compile(["onnx.proto"], [proto_dir]).expect("compiling support/onnx/onnx.proto");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("generating ONNX types");
}

fn bmrt_bindings() {
    println!("cargo:rerun-if-changed={BMRT_HEADER}");
    // bindgen dlopens libclang; these pick which one.
    println!("cargo:rerun-if-env-changed=LIBCLANG_PATH");
    println!("cargo:rerun-if-env-changed=BINDGEN_EXTRA_CLANG_ARGS");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bindings = bindgen::Builder::default()
        .header(BMRT_HEADER)
        .allowlist_function("bm_.*|bmrt_.*")
        .allowlist_type("bm_.*")
        .allowlist_var("BM_.*")
        // Constants named as in C (BM_FLOAT32, not bm_data_type_e_BM_FLOAT32).
        .prepend_enum_name(false)
        .derive_default(true)
        .layout_tests(true)
        // Run-time loading: a `BmrtApi` struct whose constructor fails unless every symbol is there.
        .dynamic_library_name("BmrtApi")
        .dynamic_link_require_all(true)
        .generate()
        .unwrap_or_else(|e| {
            panic!(
                "bindgen could not parse {BMRT_HEADER}: {e}. bindgen needs libclang and clang's \
                 headers: `apt-get install -y libclang-dev` (or `llm-convert toolchain install`)"
            )
        });
    bindings
        .write_to_file(out.join("bmrt_ffi.rs"))
        .expect("writing bmrt_ffi.rs to OUT_DIR");
}
