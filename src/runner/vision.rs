//! The `vit` net of a vision-language bmodel, found by name and told apart by its inputs as
//! LLM-TPU's chat.cpp does (vlm.md §1.4, §2.4): 5 inputs = Qwen2.5-VL (patch rows, position
//! ids, full and window masks, reverse index), 3 = Qwen2-VL, 1 = InternVL (`pixel_value`).
//! Static nets get their inputs zero-padded (masks filled with the mask value); dynamic nets
//! get the real sizes. Works the same on llm_convert.py's bmodels.

use std::time::Instant;

use anyhow::{bail, ensure, Result};

use crate::bmrt::{DType, NetInfo, Runtime};

/// What a `vit` net takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VitKind {
    /// Qwen2.5-VL: input_states, position_ids, full_attn_mask, window_attn_mask, reverse_index.
    QwenWindowed,
    /// Qwen2-VL: input_states, position_ids, full_attn_mask.
    Qwen,
    /// InternVL: pixel_value `[1, 3, S, S]` → `[tokens, H]`.
    Intern,
}

pub struct VitNet {
    pub net: NetInfo,
    pub kind: VitKind,
    /// Qwen: the most patch rows (input 0's dims[0]); InternVL: the tile side S.
    pub max_patches: usize,
    /// One patch row's width (Qwen) or 3·S·S values (InternVL).
    pub row_width: usize,
    /// Image tokens per call at full size (output 0's dims[0]).
    pub max_tokens: usize,
    pub hidden_size: usize,
    pub dynamic: bool,
}

/// One image's vit inputs, in the net's input order: the patch rows (or pixels) `[N, width]`
/// f32, and for Qwen the `[N, 2]` position ids, the `[N, N]` masks and `[N/4]` reverse index
/// (all as made by `crate::vision`).
pub struct VitInput<'a> {
    pub rows: usize,
    pub pixels: &'a [f32],
    pub position_ids: &'a [i32],
    pub full_mask: &'a [f32],
    pub window_mask: &'a [f32],
    pub reverse_index: &'a [i32],
}

/// The image embeddings one vit call made, in the activation dtype's bytes.
pub struct VitOutput {
    pub bytes: Vec<u8>,
    pub tokens: usize,
    pub dtype: DType,
    pub seconds: f64,
}

impl VitOutput {
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        self.dtype.decode_f32(&self.bytes)
    }
}

/// The mask value a padded vit mask holds (llm_convert.py's runtimes use -10000 in F32).
const VIT_MASK_VALUE: f32 = -10000.0;

impl VitNet {
    /// The bmodel's `vit` net, if any.
    pub fn discover(rt: &Runtime) -> Result<Option<VitNet>> {
        if !rt.has_net("vit")? {
            return Ok(None);
        }
        let net = rt.net("vit")?;
        let stage = net.stage(0)?;
        let kind = match net.input_num() {
            5 => VitKind::QwenWindowed,
            3 => VitKind::Qwen,
            1 => VitKind::Intern,
            n => bail!(
                "net vit has {n} inputs; expected 5 (Qwen2.5-VL), 3 (Qwen2-VL) or 1 (InternVL)"
            ),
        };
        let in0 = &stage.input_shapes[0];
        let out0 = stage
            .output_shapes
            .first()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        ensure!(
            out0.len() == 2,
            "net vit: output 0 has shape {out0:?}, expected [tokens, hidden]"
        );
        let (max_patches, row_width) = match kind {
            VitKind::Intern => {
                ensure!(
                    in0.len() == 4 && in0[1] == 3 && in0[2] == in0[3],
                    "net vit: input 0 has shape {in0:?}, expected [1, 3, S, S]"
                );
                (in0[2], 3 * in0[2] * in0[3])
            }
            _ => {
                ensure!(
                    in0.len() == 2,
                    "net vit: input 0 has shape {in0:?}, expected [patches, patch_dim]"
                );
                (in0[0], in0[1])
            }
        };
        Ok(Some(VitNet {
            kind,
            max_patches,
            row_width,
            max_tokens: out0[0],
            hidden_size: out0[1],
            dynamic: net.is_dynamic,
            net,
        }))
    }

    /// Runs one image; returns its `rows / merge²` (Qwen) or all (InternVL) token rows.
    pub fn run(&self, rt: &Runtime, input: &VitInput) -> Result<VitOutput> {
        let mut inputs = self.net.input_tensors(0)?;
        let outputs = self.net.output_tensors(0)?;
        let (n, p) = (input.rows, self.max_patches);
        let tokens = match self.kind {
            VitKind::Intern => {
                ensure!(
                    input.pixels.len() == self.row_width,
                    "the image tile has {} values, the vit takes {}",
                    input.pixels.len(),
                    self.row_width
                );
                rt.s2d(&inputs[0].mem, input.pixels)?;
                self.max_tokens
            }
            _ => {
                ensure!(
                    n > 0 && n <= p,
                    "the image has {n} patches; this vit takes at most {p} (convert with a larger --max_pixels, or pass a smaller image)"
                );
                ensure!(
                    input.pixels.len() == n * self.row_width && input.position_ids.len() == 2 * n,
                    "vit inputs do not match {n} patches of width {}",
                    self.row_width
                );
                let merged = p / self.max_tokens.max(1);
                let tokens = n / merged.max(1);
                // Static: zero rows past the image, masks padded with the mask value.
                let rows = if self.dynamic { n } else { p };
                let pad = |v: &[f32], width: usize| {
                    let mut out = vec![0f32; rows * width];
                    out[..v.len()].copy_from_slice(v);
                    out
                };
                rt.s2d_partial(&inputs[0].mem, &pad(input.pixels, self.row_width))?;
                let mut pos = vec![0i32; rows * 2];
                pos[..2 * n].copy_from_slice(input.position_ids);
                rt.s2d_partial(&inputs[1].mem, &pos)?;
                let square = |m: &[f32]| -> Vec<f32> {
                    let mut out = vec![VIT_MASK_VALUE; rows * rows];
                    for r in 0..n {
                        out[r * rows..r * rows + n].copy_from_slice(&m[r * n..(r + 1) * n]);
                    }
                    out
                };
                rt.s2d_partial(&inputs[2].mem, &square(input.full_mask))?;
                if self.kind == VitKind::QwenWindowed {
                    rt.s2d_partial(&inputs[3].mem, &square(input.window_mask))?;
                    // reverse_index keeps its full shape (zeros past the image).
                    let mut rev = vec![0i32; self.max_tokens];
                    rev[..input.reverse_index.len()].copy_from_slice(input.reverse_index);
                    rt.s2d_partial(&inputs[4].mem, &rev)?;
                }
                if self.dynamic {
                    inputs[0].shape[0] = n;
                    inputs[1].shape[0] = n;
                    let masks = if self.kind == VitKind::QwenWindowed {
                        2
                    } else {
                        1
                    };
                    for t in inputs.iter_mut().skip(2).take(masks) {
                        t.shape[2] = n;
                        t.shape[3] = n;
                    }
                }
                tokens
            }
        };
        let t0 = Instant::now();
        rt.launch(&self.net, &inputs, &outputs)?;
        let seconds = t0.elapsed().as_secs_f64();
        let dtype = outputs[0].dtype;
        let bytes = rt.read(&outputs[0].mem, dtype.bytes_for(tokens * self.hidden_size))?;
        Ok(VitOutput {
            bytes,
            tokens,
            dtype,
            seconds,
        })
    }
}
