//! One origin weight archive for a layer's pieces. block_i, block_cache_i (and a decode stage's
//! block) read the same checkpoint tensors: their archives differ only in a few small
//! constants. So the first of them to be exported writes one archive that also holds its
//! siblings' members, and a sibling whose every member it holds, exactly as the sibling would
//! write it, hard-links it instead of writing its own: about half the bytes a layer's export
//! writes. tpuc-opt's top passes load the whole archive but save only the weights the module's
//! ops use (`module::saveWeight` deletes the others; cnpy keeps members sorted by name), so no
//! output of a module depends on the extra members.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::emit_weights::{Tensor, TensorData};
use crate::graph::{Graph, InitData};

/// How many archives stay offered: a layer's siblings are exported one after another.
const KEPT: usize = 8;

/// What one member of an archive holds, as a description that compares across pieces: equal
/// descriptions give equal bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MemberId {
    Checkpoint {
        tensor: String,
        transpose: bool,
        dims: Vec<usize>,
        uint8: bool,
        bf16: bool,
    },
    /// Values the graph or the converter holds (bit patterns of the f32 values).
    Values { dims: Vec<usize>, bits: Vec<u32> },
    Slice {
        source: Box<MemberId>,
        ranges: Vec<(usize, i64, i64, i64)>,
        dims: Vec<usize>,
    },
}

impl MemberId {
    /// Equal to `other` but perhaps for being written as bf16 (which a sibling emitted without
    /// its bf16 tables cannot tell).
    pub fn alike(&self, other: &MemberId) -> bool {
        match (self, other) {
            (
                MemberId::Checkpoint {
                    tensor,
                    transpose,
                    dims,
                    uint8,
                    ..
                },
                MemberId::Checkpoint {
                    tensor: t,
                    transpose: tr,
                    dims: d,
                    uint8: u,
                    ..
                },
            ) => (tensor, transpose, dims, uint8) == (t, tr, d, u),
            _ => self == other,
        }
    }

    /// Whether its bytes come from the checkpoint.
    pub fn reads_checkpoint(&self) -> bool {
        match self {
            MemberId::Checkpoint { .. } => true,
            MemberId::Values { .. } => false,
            MemberId::Slice { source, .. } => source.reads_checkpoint(),
        }
    }
}

/// The description of converter weight `t` of `graph` (`bf16`: the names written as bf16).
pub fn member_id(
    graph: &Graph,
    tensors: &[Tensor],
    t: &Tensor,
    bf16: &HashSet<String>,
) -> MemberId {
    let dims = t.dims.clone();
    match &t.data {
        TensorData::Derived(v) => MemberId::Values {
            dims,
            bits: v.iter().map(|x| x.to_bits()).collect(),
        },
        TensorData::SliceOf { source, ranges } => MemberId::Slice {
            source: Box::new(member_id(graph, tensors, &tensors[*source], bf16)),
            ranges: ranges.clone(),
            dims,
        },
        TensorData::Init(i) => {
            let init = &graph.initializers[*i];
            match &init.data {
                InitData::Weight { name, transpose } => MemberId::Checkpoint {
                    tensor: name.clone(),
                    transpose: *transpose,
                    dims,
                    uint8: init.uint8,
                    bf16: bf16.contains(&t.name),
                },
                InitData::F32(v) => MemberId::Values {
                    dims,
                    bits: v.iter().map(|x| x.to_bits()).collect(),
                },
                InitData::I64(v) => MemberId::Values {
                    dims,
                    bits: v.iter().map(|&x| (x as f32).to_bits()).collect(),
                },
            }
        }
    }
}

/// Every name a piece's graph uses (initializers, inputs, node names and outputs) and the
/// converter's own weights: an extra member must not take one (a pass naming a new weight
/// after an op must never find it taken).
pub fn names_used(graph: &Graph, tensors: &[Tensor]) -> HashSet<String> {
    let mut names: HashSet<String> = tensors.iter().map(|t| t.name.clone()).collect();
    names.extend(graph.inputs.iter().map(|i| i.name.clone()));
    names.extend(graph.outputs.iter().map(|o| o.name.clone()));
    for n in &graph.nodes {
        names.insert(n.name.clone());
        names.extend(n.outputs.iter().cloned());
    }
    names
}

struct Archive {
    path: PathBuf,
    members: HashMap<String, MemberId>,
    /// Its array bytes.
    bytes: u64,
}

/// The archives a run's export wrote, offered to the pieces after them.
#[derive(Default)]
pub struct SharedArchives {
    written: Mutex<VecDeque<Archive>>,
}

impl SharedArchives {
    /// Makes `to` a hard link of an archive holding every one of `members` (`bytes` of arrays)
    /// as described, and not much more (every step loading it reads all of it), none of whose
    /// other members takes a name in `used` (see [`names_used`]); false if none does or the
    /// link fails (the caller writes its own).
    pub fn link_covering(
        &self,
        members: &[(String, MemberId)],
        bytes: u64,
        used: &HashSet<String>,
        to: &Path,
    ) -> bool {
        let Ok(written) = self.written.lock() else {
            return false;
        };
        let own: HashSet<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
        let covers = |a: &&Archive| {
            a.bytes <= bytes.saturating_mul(2)
                && members.iter().all(|(n, id)| a.members.get(n) == Some(id))
                && a.members
                    .keys()
                    .all(|n| own.contains(n.as_str()) || !used.contains(n))
        };
        let Some(a) = written.iter().rev().find(covers) else {
            return false;
        };
        let _ = std::fs::remove_file(to);
        std::fs::hard_link(&a.path, to).is_ok()
    }

    /// Offers the archive at `path` holding `members` in `bytes` of arrays.
    pub fn offer(&self, path: &Path, members: HashMap<String, MemberId>, bytes: u64) {
        if let Ok(mut written) = self.written.lock() {
            if written.len() == KEPT {
                written.pop_front();
            }
            written.push_back(Archive {
                path: path.to_path_buf(),
                members,
                bytes,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(v: &[f32]) -> MemberId {
        MemberId::Values {
            dims: vec![v.len()],
            bits: v.iter().map(|x| x.to_bits()).collect(),
        }
    }

    #[test]
    fn an_archive_is_linked_only_where_it_holds_every_member_alike() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.npz");
        std::fs::write(&file, b"archive").unwrap();
        let shared = SharedArchives::default();
        let held: HashMap<_, _> = [
            ("w".to_string(), values(&[1.0])),
            ("c".into(), values(&[2.0])),
        ]
        .into_iter()
        .collect();
        shared.offer(&file, held, 8);
        let to = dir.path().join("b.npz");
        // A member of another value under a held name, and a member not held: no link.
        let none = HashSet::new();
        assert!(!shared.link_covering(&[("c".into(), values(&[3.0]))], 4, &none, &to));
        assert!(!shared.link_covering(&[("d".into(), values(&[2.0]))], 4, &none, &to));
        // Nor where the archive is more than twice what the piece needs, nor where one of its
        // other members is named like something of the piece's graph.
        assert!(!shared.link_covering(&[], 0, &none, &to));
        let w_used = ["w".to_string()].into_iter().collect();
        assert!(!shared.link_covering(&[("c".into(), values(&[2.0]))], 4, &w_used, &to));
        assert!(!to.exists());
        assert!(shared.link_covering(&[("c".into(), values(&[2.0]))], 4, &none, &to));
        assert_eq!(std::fs::read(&to).unwrap(), b"archive");
    }
}
