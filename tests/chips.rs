//! Every chip llm-convert targets, converted and verified on its own CPU simulator: the runner
//! picks the cmodel from the bmodel's header (TPU-MLIR's model_runner mapping: BM1688 and
//! CV186X run on libcmodel_bm1688.so), and one process never mixes two chips' runtimes.

mod common;

use std::time::Instant;

use llm_convert::toolchain::RuntimeLibs;
use serde_json::Value;

/// qwen2 at bf16, seq 64, for `chip_flags`; `doctor BMODEL` names the chip's cmodel and core
/// count, and `verify` passes with every block's cosine >= 0.999 and every token agreeing.
fn verified_on(chip_flags: &[&str], chip: &str, cmodel: &str, cores: u64) {
    let t0 = Instant::now();
    let fixture = common::fixtures().join("qwen2");
    let mut flags = vec!["-q", "bf16"];
    flags.extend_from_slice(chip_flags);
    let bmodel = common::converted(&fixture, 64, &flags).bmodel.clone();
    let converted_s = t0.elapsed().as_secs_f64();
    let path = bmodel.to_str().unwrap();

    let o = common::llm_convert(&["doctor", path, "--json"]);
    let doctor: Value = serde_json::from_slice(&o.stdout).expect("doctor --json prints JSON");
    assert_eq!(o.status.code(), Some(0), "{doctor:#}");
    assert_eq!(doctor["chip"], chip);
    assert_eq!(doctor["cores"].as_u64(), Some(cores));
    let chip_check = doctor["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "chip")
        .expect("a chip check");
    assert!(
        chip_check["detail"].as_str().unwrap().contains(cmodel),
        "{chip_check}"
    );

    let t1 = Instant::now();
    let model = fixture.to_str().unwrap();
    let tokens = common::tokens_arg(&common::PROMPT);
    let args = [
        "verify", path, "-m", model, "--tokens", &tokens, "--steps", "8", "--json",
    ];
    let o = common::llm_convert(&args);
    let r: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "verify printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    eprintln!(
        "{chip} {chip_flags:?}: converted in {converted_s:.1} s, verified in {:.1} s, min \
         cosine {}, agreement {}",
        t1.elapsed().as_secs_f64(),
        r["min_cosine"],
        r["agreement"]
    );
    assert_eq!(o.status.code(), Some(0), "{r}");
    assert_eq!(r["pass"], true);
    assert_eq!(r["agreement"].as_f64(), Some(1.0), "{r}");
    assert!(r["min_cosine"].as_f64().unwrap() >= 0.999, "{r}");
}

#[test]
fn bm1684x_verifies_on_its_simulator() {
    // The default chip: the same flags (and conversion) as tests/doctor_bmodel.rs.
    verified_on(&[], "BM1684X", "libcmodel_bm1684x.so", 1);
}

#[test]
fn bm1688_one_core_verifies_on_its_simulator() {
    verified_on(
        &["-c", "bm1688", "--num_core", "1"],
        "BM1688",
        "libcmodel_bm1688.so",
        1,
    );
}

#[test]
fn bm1688_two_cores_verifies_on_its_simulator() {
    verified_on(
        &["-c", "bm1688", "--num_core", "2"],
        "BM1688",
        "libcmodel_bm1688.so",
        2,
    );
}

#[test]
fn cv186x_verifies_on_the_bm1688_simulator() {
    verified_on(&["-c", "cv186x"], "CV186X", "libcmodel_bm1688.so", 1);
}

/// libbmlib and the cmodel it dlopens load once per process: the first chip's simulator
/// stays, and asking for another chip's is an error that says so (no bmodel, device or
/// cmodel run needed: loading the libraries is where the choice is made).
#[test]
fn one_process_runs_one_chips_simulator() {
    let layout = common::toolchain();
    let simulator = RuntimeLibs::select(&layout, Some("simulator"));
    let bm1688 = simulator.for_chip(&layout, "BM1688").unwrap();
    let cv186x = simulator.for_chip(&layout, "CV186X").unwrap();
    let bm1684x = simulator.for_chip(&layout, "BM1684X").unwrap();
    assert_eq!(bm1688.dir(), cv186x.dir(), "one cmodel for both");
    assert_ne!(bm1688.dir(), bm1684x.dir());
    assert_eq!(
        bm1684x.dir(),
        &layout.lib_dir(),
        "bm1684x: the toolchain's own folder"
    );

    let v = llm_convert::bmrt::runtime_versions(&bm1688).expect("loading the bm1688 simulator");
    assert_eq!(v.bmodel_format.as_deref(), Some("2.2"));
    llm_convert::bmrt::runtime_versions(&cv186x).expect("the same libraries again");
    let e = llm_convert::bmrt::runtime_versions(&bm1684x).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("one process runs bmodels of one chip") && msg.contains("bm1688"),
        "{msg}"
    );
    assert!(simulator.for_chip(&layout, "BM1690").is_err());
}
