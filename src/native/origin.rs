//! The files of a piece's origin: `graph::Graph` → `<name>_origin.mlir` (the text `emit` makes)
//! and its weight archive `<name>_top_f32_all_origin_weight.npz` — which tables go out as bf16,
//! and which archive a layer's pieces share (`shared_npz`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::emit::{emit, Emitted};
use super::emit_weights::{tensor_values, Tensor};
use super::npz::NpzWriter;
use super::shared_npz::{self, MemberId, SharedArchives};
use crate::graph::{Graph, InitData};
use crate::model::{StoredDtype, WeightSource};

/// What [`write_origin`] wrote.
pub struct Origin {
    pub mlir: PathBuf,
    pub npz: PathBuf,
    /// Bytes of array data in the npz (the piece's own members).
    pub weight_bytes: u64,
    /// The npz is a hard link of an archive an earlier piece wrote.
    pub linked: bool,
}

/// The npz name TPU-MLIR gives a module's origin weights (`MLIRImporter.get_weight_file`,
/// which lowercases it; our piece names are lowercase already).
pub fn weight_file_name(name: &str) -> String {
    format!("{name}_top_f32_all_origin_weight.npz").to_lowercase()
}

/// Where [`write_origin`] writes the MLIR of module `name` in `dir`.
pub fn origin_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}_origin.mlir"))
}

/// The pieces a layer's archive may be shared with (see [`shared_npz`]): the run's archives
/// so far and the graphs of the piece's siblings (its layer's other pieces).
pub struct Share<'a> {
    pub archives: &'a SharedArchives,
    pub siblings: Vec<Graph>,
}

/// Writes `<dir>/<graph.name>_origin.mlir` and its weights
/// `<dir>/<graph.name>_top_f32_all_origin_weight.npz` (each atomically: temp file + rename),
/// reading weights one at a time from `weights`. With `share`, the weights are a hard link of
/// an archive written before that holds them all, or else an archive that holds the
/// siblings' members too, offered to them.
pub fn write_origin(
    graph: &Graph,
    weights: &dyn WeightSource,
    dir: &Path,
    share: Option<&Share>,
) -> Result<Origin> {
    let npz_name = weight_file_name(&graph.name);
    let own = Emission::of(graph, weights, &npz_name)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let npz = dir.join(&npz_name);
    let ids = own.member_ids(graph);
    let own_bytes = own.data_bytes(graph);
    let taken = shared_npz::names_used(graph, &own.emitted.tensors);
    let linked = share.is_some_and(|s| s.archives.link_covering(&ids, own_bytes, &taken, &npz));
    let weight_bytes = if linked {
        own_bytes
    } else {
        let mut w = NpzWriter::create(&npz)?;
        own.write_members(graph, weights, &mut w, |_, _| true)?;
        let own_bytes = w.data_bytes();
        let mut held: HashMap<String, MemberId> = ids.into_iter().collect();
        if let Some(s) = share {
            for sibling in &s.siblings {
                // Without its bf16 tables (a vocabulary-sized read): they are checkpoint
                // tensors, which are never extras.
                let theirs = Emission::without_bf16(sibling, weights, &npz_name)?;
                let mut extra = HashMap::new();
                let mut coverable = true;
                for (name, id) in theirs.member_ids(sibling) {
                    match held.get(&name) {
                        Some(ours) => coverable &= ours.alike(&id),
                        None if taken.contains(&name) => coverable = false,
                        None => {
                            extra.insert(name, id);
                        }
                    }
                }
                // Only a few small constants are worth carrying: every step that loads the
                // archive reads them too.
                let extra_bytes: u64 = theirs
                    .members()
                    .filter(|t| extra.contains_key(&t.name))
                    .map(|t| theirs.member_bytes(sibling, t))
                    .sum();
                // A sibling some of whose members the archive cannot hold as it reads them
                // will not link it: it adds nothing.
                if !coverable
                    || extra.values().any(MemberId::reads_checkpoint)
                    || extra_bytes > MAX_EXTRA_BYTES.max(own_bytes / 64)
                {
                    continue;
                }
                theirs
                    .write_members(sibling, weights, &mut w, |name, _| extra.contains_key(name))?;
                held.extend(extra);
            }
        }
        let archive_bytes = w.data_bytes();
        w.finish()?;
        if let Some(s) = share {
            s.archives.offer(&npz, held, archive_bytes);
        }
        own_bytes
    };
    let mlir = origin_path(dir, &graph.name);
    crate::util::write_atomic(&mlir, own.emitted.text.as_bytes())?;
    Ok(Origin {
        mlir,
        npz,
        weight_bytes,
        linked,
    })
}

/// The sibling members an archive carries beyond its own, at most (or 1/64 of its own).
const MAX_EXTRA_BYTES: u64 = 1 << 20;

/// A graph's Top MLIR and the weights its archive holds.
struct Emission {
    emitted: Emitted,
    bf16: HashMap<String, Vec<u16>>,
}

impl Emission {
    fn of(graph: &Graph, weights: &dyn WeightSource, npz_name: &str) -> Result<Emission> {
        let bf16 = bf16_tables(graph, weights)?;
        let emitted = emit(graph, weights, npz_name, bf16.keys().cloned().collect())
            .with_context(|| format!("emitting the Top MLIR of piece {}", graph.name))?;
        Ok(Emission { emitted, bf16 })
    }

    /// As [`Emission::of`] with every weight f32: the text is not the piece's where it has bf16
    /// tables, but its constants are.
    fn without_bf16(graph: &Graph, weights: &dyn WeightSource, npz_name: &str) -> Result<Emission> {
        let emitted = emit(graph, weights, npz_name, HashSet::new())
            .with_context(|| format!("emitting the Top MLIR of piece {}", graph.name))?;
        Ok(Emission {
            emitted,
            bf16: HashMap::new(),
        })
    }

    fn members(&self) -> impl Iterator<Item = &Tensor> {
        self.emitted
            .members
            .iter()
            .map(|&t| &self.emitted.tensors[t])
    }

    fn member_ids(&self, graph: &Graph) -> Vec<(String, MemberId)> {
        let bf16: HashSet<String> = self.bf16.keys().cloned().collect();
        self.members()
            .map(|t| {
                let id = shared_npz::member_id(graph, &self.emitted.tensors, t, &bf16);
                (t.name.clone(), id)
            })
            .collect()
    }

    /// The array bytes its members take.
    fn data_bytes(&self, graph: &Graph) -> u64 {
        self.members().map(|t| self.member_bytes(graph, t)).sum()
    }

    fn member_bytes(&self, graph: &Graph, t: &Tensor) -> u64 {
        let size = if t.uint8(graph) {
            1
        } else if self.bf16.contains_key(&t.name) {
            2
        } else {
            4
        };
        t.dims.iter().product::<usize>() as u64 * size
    }

    /// Adds to `w` each member `pick` accepts (by name and tensor), in order.
    fn write_members(
        &self,
        graph: &Graph,
        weights: &dyn WeightSource,
        w: &mut NpzWriter,
        pick: impl Fn(&str, &Tensor) -> bool,
    ) -> Result<()> {
        for tensor in self.members().filter(|t| pick(&t.name, t)) {
            if let Some(bits) = self.bf16.get(&tensor.name) {
                w.add_bf16(&tensor.name, &tensor.dims, bits)?;
                continue;
            }
            let values = tensor_values(graph, weights, &self.emitted.tensors, tensor)
                .with_context(|| format!("weight {} of piece {}", tensor.name, graph.name))?;
            if tensor.uint8(graph) {
                w.add_u8(
                    &tensor.name,
                    &tensor.dims,
                    &super::npz::bytes_of(&tensor.name, &values)?,
                )?;
            } else {
                w.add(&tensor.name, &tensor.dims, &values)?;
            }
        }
        Ok(())
    }
}

/// The bf16 bit patterns of the graph's [`Graph::bf16_tables`], rounded as the BF16 lowering
/// rounds them, by name; a table with a value the lowering treats apart (not finite, subnormal)
/// stays f32. Where the graph keeps some op in f32, only a bf16 checkpoint's tables qualify.
fn bf16_tables(graph: &Graph, weights: &dyn WeightSource) -> Result<HashMap<String, Vec<u16>>> {
    let mut out = HashMap::new();
    for init in &graph.initializers {
        if !graph.bf16_tables.contains(&init.name) {
            continue;
        }
        let InitData::Weight { name, transpose } = &init.data else {
            continue;
        };
        // An op kept in f32 would see the rounding: then only a bf16 checkpoint's table,
        // which the rounding leaves alone (and no other is read here only to be refused).
        let exact_only = !graph.f32_ops.is_empty();
        let stored_bf16 = weights.meta(name).map(|m| m.dtype) == Some(StoredDtype::Bf16);
        if exact_only && !stored_bf16 {
            continue;
        }
        let values = crate::graph::checkpoint_values(weights, name, *transpose, &init.dims)
            .with_context(|| format!("weight {} of piece {}", init.name, graph.name))?;
        if let Some(bits) = super::npz::bf16_bits_as_lowered(&values, exact_only) {
            out.insert(init.name.clone(), bits);
        }
    }
    Ok(out)
}
