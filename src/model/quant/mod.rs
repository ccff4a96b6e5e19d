//! Pre-quantized checkpoints (GPTQ, AWQ GEMM, auto-round in either packing, compressed-tensors
//! pack-quantized): the config
//! ([`config`]), the unpacking of each packing ([`unpack`]), and a [`WeightSource`] view that
//! checks every quantized layer's tensors against bits and group size when it is opened, and
//! presents `<layer>.weight` as the exactly dequantized `(q - z) · s` (per `g_idx` group), so
//! the reference and every float reader see what the quantized model computes. For the native
//! backend's A16MatMul it also presents `<layer>.a16_{qweight,scales,qzeros,perm}`: the
//! checkpoint's integers two per byte, its scales and zero points, and (desc_act) the input
//! features in group order, the rows permuted to match.

pub mod config;
pub mod fp8;
pub mod unpack;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};

pub use config::{Packing, QuantConfig};

use super::fingerprint::{self, Fingerprint};
use super::weights::{StoredDtype, TensorMeta, WeightSource};
use crate::error::InputError;

/// One quantized linear layer's shape: `in` K, `out` N.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Shape {
    k: usize,
    n: usize,
    scale_dtype: StoredDtype,
}

/// A quantized linear layer unpacked: `[N, K]` integers, `[N, K/g]` zero points (offset
/// applied) and scales, and each input feature's group.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedLinear {
    pub k: usize,
    pub n: usize,
    pub group_size: usize,
    pub q: Vec<u8>,
    pub zeros: Vec<u8>,
    pub scales: Vec<f32>,
    /// `g_idx` when it is not the trivial `k / group_size` (GPTQ desc_act).
    pub g_idx: Option<Vec<usize>>,
}

impl QuantizedLinear {
    pub fn groups(&self) -> usize {
        self.k / self.group_size
    }

    fn group_of(&self, k: usize) -> usize {
        match &self.g_idx {
            Some(g) => g[k],
            None => k / self.group_size,
        }
    }

    /// `w[n, k] = (q[n, k] - z[n, g(k)]) · s[n, g(k)]`, torch's `[out, in]` order.
    pub fn dequantize(&self) -> Vec<f32> {
        let groups = self.groups();
        let group: Vec<usize> = (0..self.k).map(|k| self.group_of(k)).collect();
        let mut w = vec![0f32; self.n * self.k];
        for (n, row) in w.chunks_exact_mut(self.k).enumerate() {
            let q = &self.q[n * self.k..(n + 1) * self.k];
            let z = &self.zeros[n * groups..(n + 1) * groups];
            let s = &self.scales[n * groups..(n + 1) * groups];
            for ((w, &q), &g) in row.iter_mut().zip(q).zip(&group) {
                *w = (q as f32 - z[g] as f32) * s[g];
            }
        }
        w
    }
}

/// The inputs of TPU-MLIR's `A16MatMul` for a quantized linear, presented as virtual tensors
/// `<prefix>.<suffix>` whose f32 values are bytes (exact: 0..=255) or scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum A16Part {
    /// `[N, K·bits/8]`: the integers, two 4-bit ones per byte (even input feature low).
    Qweight,
    /// `[N, K/g]` f32.
    Scales,
    /// `[N, K/g]` zero points, one per byte.
    Qzeros,
}

impl A16Part {
    pub const ALL: [A16Part; 3] = [A16Part::Qweight, A16Part::Scales, A16Part::Qzeros];

    pub const fn suffix(self) -> &'static str {
        match self {
            A16Part::Qweight => "a16_qweight",
            A16Part::Scales => "a16_scales",
            A16Part::Qzeros => "a16_qzeros",
        }
    }

    /// `name` as `(<prefix>, part)` when it names an A16 part.
    pub fn split(name: &str) -> Option<(&str, A16Part)> {
        let (prefix, suffix) = name.rsplit_once('.')?;
        let part = A16Part::ALL.into_iter().find(|p| p.suffix() == suffix)?;
        Some((prefix, part))
    }

    /// The part's shape for an `[n, k]` layer of `bits` in groups of `group`.
    pub fn shape(self, n: usize, k: usize, bits: usize, group: usize) -> Vec<usize> {
        match self {
            A16Part::Qweight => vec![n, k * bits / 8],
            A16Part::Scales | A16Part::Qzeros => vec![n, k / group],
        }
    }
}

impl QuantizedLinear {
    /// The values of `part` (see [`A16Part`]) with the integers stored on `bits` (4 or 8).
    pub fn a16(&self, part: A16Part, bits: usize) -> Vec<f32> {
        let bytes = |v: &[u8]| v.iter().map(|&b| f32::from(b)).collect::<Vec<f32>>();
        match (part, bits) {
            (A16Part::Qweight, 4) => bytes(&unpack::pair_nibbles(&self.q)),
            (A16Part::Qweight, _) => bytes(&self.q),
            (A16Part::Scales, _) => self.scales.clone(),
            (A16Part::Qzeros, _) => bytes(&self.zeros),
        }
    }
}

/// The layer unpacked last: a piece reads a layer's A16 parts one after another, so each
/// layer is unpacked (or requantized) once, not once per part.
#[derive(Default)]
pub struct LastLayer(Mutex<Option<(String, Arc<QuantizedLinear>)>>);

impl LastLayer {
    /// Layer `prefix`, from the memo when it was the last one, else made by `make`.
    pub fn get_or(
        &self,
        prefix: &str,
        make: impl FnOnce() -> Result<QuantizedLinear>,
    ) -> Result<Arc<QuantizedLinear>> {
        let memo = || self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((name, layer)) = memo().as_ref() {
            if name == prefix {
                return Ok(layer.clone());
            }
        }
        // Made outside the lock: pieces exported in parallel read other layers meanwhile.
        let layer = Arc::new(make()?);
        *memo() = Some((prefix.to_string(), layer.clone()));
        Ok(layer)
    }
}

/// `inner` with its quantized layers checked and dequantized on read (`inner` itself when
/// config.json has no `quantization_config`). `dir` names errors.
pub fn view(
    cfg: Option<&QuantConfig>,
    inner: Box<dyn WeightSource>,
    dir: &Path,
) -> Result<Box<dyn WeightSource>, InputError> {
    let Some(cfg) = cfg.cloned() else {
        return Ok(inner);
    };
    let mut layers = BTreeMap::new();
    let packed = format!(".{}", cfg.packing.tensors()[0]);
    for name in inner.names() {
        if let Some(prefix) = name.strip_suffix(packed.as_str()) {
            let shape = check_layer(&cfg, inner.as_ref(), prefix, dir)?;
            layers.insert(prefix.to_string(), shape);
        }
    }
    if layers.is_empty() {
        return Err(InputError::invalid(
            dir,
            format!(
                "config.json says the checkpoint is {} quantized but {} holds no *{packed} tensor",
                cfg.method,
                inner.describe()
            ),
            "remove quantization_config from config.json if the weights are float, or re-download",
        ));
    }
    Ok(Box::new(Dequantized {
        inner,
        cfg,
        layers,
        dir: dir.to_path_buf(),
        last: Default::default(),
    }))
}

/// Every tensor of layer `prefix` is present with the shape bits and group size imply, and
/// its `g_idx` (if any) names existing groups — checked from metadata (and the small g_idx)
/// before anything is unpacked.
fn check_layer(
    cfg: &QuantConfig,
    w: &dyn WeightSource,
    prefix: &str,
    dir: &Path,
) -> Result<Shape, InputError> {
    let per = cfg.per_word();
    let bad = |tensor: &str, problem: String| {
        InputError::invalid(
            dir,
            format!("{} tensor \"{prefix}.{tensor}\" {problem} (in {})", cfg.method, w.describe()),
            format!(
                "the checkpoint does not match its quantization_config ({}-bit, group_size {}): re-download it",
                cfg.bits, cfg.group_size
            ),
        )
    };
    let meta = |tensor: &str| w.meta(&format!("{prefix}.{tensor}"));
    let two_d = |tensor: &str, dtype_ok: &dyn Fn(StoredDtype) -> bool| {
        let m = meta(tensor).ok_or_else(|| bad(tensor, "is missing".into()))?;
        if !dtype_ok(m.dtype) {
            return Err(bad(tensor, format!("is {:?}", m.dtype)));
        }
        match m.shape[..] {
            [r, c] => Ok((r, c, m.dtype)),
            _ => Err(bad(tensor, format!("has shape {:?}, not 2-D", m.shape))),
        }
    };
    let int = |d: StoredDtype| d == StoredDtype::I32;
    let float =
        |d: StoredDtype| matches!(d, StoredDtype::F16 | StoredDtype::Bf16 | StoredDtype::F32);
    let [packed, scales, zeros, g_idx] = cfg.packing.tensors();
    let (r, c, _) = two_d(packed, &int)?;
    let (k, n) = match cfg.packing {
        Packing::Gptq => (r * per, c),
        Packing::AwqGemm => (r, c * per),
        Packing::CompressedTensors => (c * per, r),
    };
    if k % cfg.group_size != 0 {
        return Err(bad(
            packed,
            format!(
                "has {k} input features, not a multiple of group_size {}",
                cfg.group_size
            ),
        ));
    }
    let groups = k / cfg.group_size;
    // GPTQ / AWQ store scales and zero points [groups, N]; compressed-tensors [N, groups].
    let by_rows = cfg.packing == Packing::CompressedTensors;
    let want = if by_rows { (n, groups) } else { (groups, n) };
    let (sr, sc, scale_dtype) = two_d(scales, &float)?;
    if (sr, sc) != want {
        return Err(bad(
            scales,
            format!(
                "has shape [{sr}, {sc}] but {packed} [{r}, {c}] implies [{}, {}]",
                want.0, want.1
            ),
        ));
    }
    let zeros_want = if by_rows {
        (n / per, groups)
    } else {
        (groups, n / per)
    };
    match (meta(zeros), cfg.packing, cfg.sym) {
        // A symmetric compressed-tensors layer has no zero points (its zero is 0).
        (None, Packing::CompressedTensors, true) => {}
        (Some(_), Packing::CompressedTensors, true) => {
            return Err(bad(
                zeros,
                "is present but the config group is symmetric".into(),
            ))
        }
        _ => {
            let (zr, zc, _) = two_d(zeros, &int)?;
            if n % per != 0 || (zr, zc) != zeros_want {
                return Err(bad(
                    zeros,
                    format!(
                        "has shape [{zr}, {zc}] but {packed} [{r}, {c}] implies [{}, {}]",
                        zeros_want.0, zeros_want.1
                    ),
                ));
            }
        }
    }
    if cfg.packing == Packing::CompressedTensors {
        // The unpacked shape [N, K]: padding (K not a multiple of 8) is refused here.
        if let Some(m) = meta("weight_shape") {
            let shape = w
                .read_i32(&format!("{prefix}.weight_shape"))
                .map_err(|e| bad("weight_shape", format!("cannot be read: {e:#}")))?;
            if m.shape != [2] || shape != [n as i32, k as i32] {
                return Err(bad(
                    "weight_shape",
                    format!("is {shape:?} but {packed} [{r}, {c}] implies [{n}, {k}]"),
                ));
            }
        }
    }
    if let Some(m) = meta(g_idx) {
        if m.shape != [k] || m.dtype != StoredDtype::I32 {
            return Err(bad(
                g_idx,
                format!("is {:?} {:?}, not int32 [{k}]", m.dtype, m.shape),
            ));
        }
        let g = w
            .read_i32(&format!("{prefix}.{g_idx}"))
            .map_err(|e| bad(g_idx, format!("cannot be read: {e:#}")))?;
        if let Some((at, v)) = g
            .iter()
            .enumerate()
            .find(|(_, &v)| v < 0 || v as usize >= groups)
        {
            return Err(bad(
                g_idx,
                format!("names group {v} at row {at}, of {groups} groups"),
            ));
        }
    }
    Ok(Shape { k, n, scale_dtype })
}

struct Dequantized {
    inner: Box<dyn WeightSource>,
    cfg: QuantConfig,
    layers: BTreeMap<String, Shape>,
    dir: PathBuf,
    last: LastLayer,
}

/// What the native backend's `A16MatMul` reads of a layer, as virtual tensors
/// `<prefix>.a16_*` whose f32 values are the bytes (exact: 0..=255).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Part {
    /// The dequantized float weight `<prefix>.weight`.
    Weight,
    /// `[N, K·bits/8]`: the integers (4-bit ones two per byte, the even input feature low).
    A16Qweight,
    /// `[N, K/g]` f32.
    A16Scales,
    /// `[N, K/g]` zero points (offset applied), one per byte.
    A16Qzeros,
    /// `[K]`: the input features in group order (desc_act), as f32 indices for a Gather.
    A16Perm,
}

const PARTS: [(&str, Part); 5] = [
    ("weight", Part::Weight),
    (A16Part::Qweight.suffix(), Part::A16Qweight),
    (A16Part::Scales.suffix(), Part::A16Scales),
    (A16Part::Qzeros.suffix(), Part::A16Qzeros),
    ("a16_perm", Part::A16Perm),
];

impl Dequantized {
    fn layer_of<'n>(&self, name: &'n str) -> Option<(&'n str, Shape, Part)> {
        PARTS.iter().find_map(|&(suffix, part)| {
            let prefix = name.strip_suffix(suffix)?.strip_suffix('.')?;
            Some((prefix, *self.layers.get(prefix)?, part))
        })
    }

    /// The values of `part` of layer `prefix`, and their shape.
    fn part(&self, prefix: &str, s: Shape, part: Part) -> Result<(Vec<f32>, Vec<usize>)> {
        let layer = self.unpacked(prefix)?;
        let groups = layer.groups();
        if part == Part::Weight {
            return Ok((layer.dequantize(), vec![s.n, s.k]));
        }
        // A16MatMul takes contiguous groups: with desc_act the input features are reordered
        // into group order (an exact permutation; the graph gathers x the same way).
        let perm = self.group_order(prefix, &layer)?;
        let bytes = |v: Vec<u8>| v.into_iter().map(f32::from).collect::<Vec<f32>>();
        Ok(match part {
            Part::Weight => unreachable!("returned above"),
            Part::A16Qweight => {
                let bits = self.cfg.bits;
                let shape = A16Part::Qweight.shape(s.n, s.k, bits, self.cfg.group_size);
                let values = match &perm {
                    Some(p) => {
                        let q: Vec<u8> = layer
                            .q
                            .chunks_exact(s.k)
                            .flat_map(|row| p.iter().map(|&k| row[k]))
                            .collect();
                        let permuted = QuantizedLinear {
                            q,
                            ..(*layer).clone()
                        };
                        permuted.a16(A16Part::Qweight, bits)
                    }
                    None => layer.a16(A16Part::Qweight, bits),
                };
                (values, shape)
            }
            Part::A16Scales => (layer.scales.clone(), vec![s.n, groups]),
            Part::A16Qzeros => (bytes(layer.zeros.clone()), vec![s.n, groups]),
            Part::A16Perm => {
                let p = perm.unwrap_or_else(|| (0..s.k).collect());
                (p.into_iter().map(|k| k as f32).collect(), vec![s.k])
            }
        })
    }

    /// Layer `prefix` unpacked (from the one-layer memo when it was the last one).
    fn unpacked(&self, prefix: &str) -> Result<Arc<QuantizedLinear>> {
        self.last.get_or(prefix, || {
            read_layer(&self.cfg, self.inner.as_ref(), prefix, &self.dir)
                .with_context(|| format!("unpacking {} layer {prefix}", self.cfg.method))
        })
    }

    /// The input features in group order (stable), when `g_idx` is not already in order:
    /// each group must hold exactly group_size features. Refused without desc_act (the graph
    /// gathers x only for desc_act checkpoints).
    fn group_order(&self, prefix: &str, layer: &QuantizedLinear) -> Result<Option<Vec<usize>>> {
        let Some(g_idx) = &layer.g_idx else {
            return Ok(None);
        };
        let refuse = |why: String| -> anyhow::Error {
            InputError::invalid(
                &self.dir,
                format!(
                    "tensor \"{prefix}.{}\" {why}",
                    self.cfg.packing.tensors()[3]
                ),
                "use a checkpoint quantized with desc_act false (or static_groups)",
            )
            .into()
        };
        if !self.cfg.desc_act {
            return Err(refuse(
                "groups the input features out of order but desc_act is false in quantization_config".into(),
            ));
        }
        let mut perm: Vec<usize> = (0..layer.k).collect();
        perm.sort_by_key(|&k| g_idx[k]);
        if let Some(j) = (0..layer.k).find(|&j| g_idx[perm[j]] != j / layer.group_size) {
            return Err(refuse(format!(
                "does not give every group exactly {} input features (group {} at sorted row {j}), \
                 which A16MatMul's contiguous groups need",
                layer.group_size,
                g_idx[perm[j]]
            )));
        }
        Ok(Some(perm))
    }

    fn tensor(&self, prefix: &str, t: &str) -> String {
        format!("{prefix}.{t}")
    }
}

/// Unpacks layer `prefix` of a quantized checkpoint (shapes as [`view`] checked them).
pub fn read_layer(
    cfg: &QuantConfig,
    w: &dyn WeightSource,
    prefix: &str,
    dir: &Path,
) -> Result<QuantizedLinear> {
    let Shape { k, n, .. } = check_layer(cfg, w, prefix, dir)?;
    let per = cfg.per_word();
    let groups = k / cfg.group_size;
    let [packed, scales, zeros, g_idx] = cfg.packing.tensors();
    let name = |t: &str| format!("{prefix}.{t}");
    let words = w.read_i32(&name(packed))?;
    let scales = w.read_f32(&name(scales))?.flatten_all()?.to_vec1::<f32>()?;
    // Every packing ends as [N, K] integers and [N, groups] zero points and scales.
    let (q, zeros, scales) = match cfg.packing {
        Packing::Gptq | Packing::AwqGemm => {
            let (q, order) = match cfg.packing {
                Packing::Gptq => (
                    crate::util::transpose(&unpack::along_rows(&words, k / per, n, cfg.bits), k, n),
                    &unpack::PLAIN_ORDER,
                ),
                _ => (
                    crate::util::transpose(
                        &unpack::along_cols(&words, k, n / per, cfg.bits, &unpack::AWQ_ORDER),
                        k,
                        n,
                    ),
                    &unpack::AWQ_ORDER,
                ),
            };
            let zwords = w.read_i32(&name(zeros))?;
            let mut z = unpack::along_cols(&zwords, groups, n / per, cfg.bits, order);
            for z in &mut z {
                // v1 GPTQ stores zero - 1, so a stored 15 is 16: kept in a byte, as TPU-MLIR does.
                *z = z.wrapping_add(cfg.zero_offset);
            }
            (
                q,
                crate::util::transpose(&z, groups, n),
                crate::util::transpose(&scales, groups, n),
            )
        }
        Packing::CompressedTensors => {
            // Values and zero points are both stored plus 2^(bits-1), so (q - z) is the
            // signed one's; a symmetric layer's zero is that offset.
            let q = unpack::along_cols(&words, n, k / per, cfg.bits, &unpack::PLAIN_ORDER);
            let z = match w.meta(&name(zeros)) {
                Some(_) => {
                    let zwords = w.read_i32(&name(zeros))?;
                    unpack::along_rows(&zwords, n / per, groups, cfg.bits)
                }
                None => vec![1 << (cfg.bits - 1); n * groups],
            };
            (q, z, scales)
        }
    };
    let g_idx = match w.meta(&name(g_idx)) {
        None => None,
        Some(_) => {
            let g: Vec<usize> = w
                .read_i32(&name(g_idx))?
                .iter()
                .map(|&v| v as usize)
                .collect();
            let trivial = g.iter().enumerate().all(|(i, &v)| v == i / cfg.group_size);
            (!trivial).then_some(g)
        }
    };
    Ok(QuantizedLinear {
        k,
        n,
        group_size: cfg.group_size,
        q,
        zeros,
        scales,
        g_idx,
    })
}

impl WeightSource for Dequantized {
    fn meta(&self, name: &str) -> Option<TensorMeta> {
        let (_, s, part) = match self.layer_of(name) {
            Some(found) => found,
            None => return self.inner.meta(name),
        };
        let groups = s.k / self.cfg.group_size;
        let (shape, dtype) = match part {
            Part::Weight => (vec![s.n, s.k], s.scale_dtype),
            Part::A16Qweight => (
                A16Part::Qweight.shape(s.n, s.k, self.cfg.bits, self.cfg.group_size),
                StoredDtype::F32,
            ),
            Part::A16Scales | Part::A16Qzeros => (vec![s.n, groups], StoredDtype::F32),
            Part::A16Perm => (vec![s.k], StoredDtype::F32),
        };
        Some(TensorMeta { shape, dtype })
    }

    fn names(&self) -> Vec<String> {
        let mut names = self.inner.names();
        names.extend(self.layers.keys().map(|p| self.tensor(p, "weight")));
        names.sort();
        names
    }

    fn read_f32(&self, name: &str) -> Result<Tensor> {
        let Some((prefix, s, part)) = self.layer_of(name) else {
            return self.inner.read_f32(name);
        };
        let (values, shape) = self.part(prefix, s, part)?;
        Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
    }

    /// The dequantized weight stands for its packed tensors' stored bytes and the rule.
    fn fingerprint(&self, name: &str) -> Result<Fingerprint> {
        let Some((prefix, _, part)) = self.layer_of(name) else {
            return self.inner.fingerprint(name);
        };
        let mut inputs = Vec::new();
        for t in self.cfg.packing.tensors() {
            let full = self.tensor(prefix, t);
            if self.inner.meta(&full).is_some() {
                inputs.push(self.inner.fingerprint(&full)?);
            }
        }
        let packing = match self.cfg.packing {
            Packing::Gptq => 0,
            Packing::AwqGemm => 1,
            Packing::CompressedTensors => 2,
        };
        let params = [
            part as u64,
            packing,
            self.cfg.bits as u64,
            self.cfg.group_size as u64,
            self.cfg.zero_offset as u64,
        ];
        Ok(fingerprint::derived(
            "dequantized (q - z) * s",
            &params,
            &inputs,
        ))
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn read_i32(&self, name: &str) -> Result<Vec<i32>> {
        self.inner.read_i32(name)
    }
}
