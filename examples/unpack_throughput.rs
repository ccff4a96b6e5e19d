//! Benchmark helper (scripts/bench-quant.sh): reads and unpacks every pre-quantized linear of a
//! checkpoint into the operands the native backend gives TPU-MLIR's A16MatMul (integers two
//! per byte, scales, zero points), exactly as a conversion does, and nothing else: no forward
//! pass, no float weights. Prints one JSON line: the label, wall seconds, layers, stored bytes.
//!
//! `cargo run --release --example unpack_throughput -- MODEL_DIR LABEL`

use std::time::Instant;

use anyhow::{Context, Result};
use llm_convert::model::quant::A16Part;
use llm_convert::model::{Model, WeightSource};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .context("usage: unpack_throughput MODEL_DIR LABEL")?;
    let label = args.next().unwrap_or_else(|| "unpack".into());
    let model = Model::open(dir.as_ref())?;
    let w = &model.weights;
    let quantized: Vec<String> = w
        .names()
        .into_iter()
        .filter_map(|n| n.strip_suffix(".weight").map(str::to_string))
        .filter(|p| {
            w.meta(&format!("{p}.{}", A16Part::Qweight.suffix()))
                .is_some()
        })
        .collect();
    let t = Instant::now();
    let mut values = 0usize;
    for prefix in &quantized {
        for part in A16Part::ALL {
            values += w
                .read_f32(&format!("{prefix}.{}", part.suffix()))?
                .elem_count();
        }
    }
    let wall = t.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"label": label, "wall_s": wall, "layers": quantized.len(), "values": values})
    );
    Ok(())
}
