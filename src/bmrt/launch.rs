//! Tensors (dtype + shape + device memory) and launching a net on them.

use std::ffi::CString;

use anyhow::{bail, ensure, Context, Result};

use super::dtype::DType;
use super::ffi;
use super::mem::DeviceMem;
use super::net::{shape_from_raw, shape_to_raw, NetInfo};
use super::runtime::Runtime;

/// A net input or output: its element type, the shape to run with, and where it lives.
/// For dynamic nets, lower `shape`'s dims to the real lengths before launching.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub mem: DeviceMem,
}

impl Tensor {
    pub fn new(dtype: DType, shape: Vec<usize>, mem: DeviceMem) -> Tensor {
        Tensor { dtype, shape, mem }
    }

    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes the shape covers (at most `mem.size()` for a launch).
    pub fn bytes(&self) -> usize {
        self.dtype.bytes_for(self.elements())
    }
}

impl NetInfo {
    /// Input `index` of `stage`, in the device memory bmrt allocated for it (as the LLM-TPU
    /// demos bind them).
    pub fn input_tensor(&self, stage: usize, index: usize) -> Result<Tensor> {
        self.tensor(stage, index, true)
    }

    pub fn output_tensor(&self, stage: usize, index: usize) -> Result<Tensor> {
        self.tensor(stage, index, false)
    }

    pub fn input_tensors(&self, stage: usize) -> Result<Vec<Tensor>> {
        (0..self.input_num())
            .map(|i| self.input_tensor(stage, i))
            .collect()
    }

    pub fn output_tensors(&self, stage: usize) -> Result<Vec<Tensor>> {
        (0..self.output_num())
            .map(|i| self.output_tensor(stage, i))
            .collect()
    }

    fn tensor(&self, stage: usize, index: usize, input: bool) -> Result<Tensor> {
        let s = self.stage(stage)?;
        let (kind, dtypes, shapes, mems) = if input {
            ("input", &self.input_dtypes, &s.input_shapes, &s.input_mems)
        } else {
            (
                "output",
                &self.output_dtypes,
                &s.output_shapes,
                &s.output_mems,
            )
        };
        let (Some(&dtype), Some(shape)) = (dtypes.get(index), shapes.get(index)) else {
            bail!(
                "net {} has {} {kind}s, no {kind} {index}",
                self.name,
                dtypes.len()
            );
        };
        let Some(&mem) = mems.get(index) else {
            bail!(
                "net {} stage {stage}: the runtime allocated no device memory for {kind} {index}",
                self.name
            );
        };
        Ok(Tensor::new(dtype, shape.clone(), mem))
    }
}

impl Runtime {
    /// Launches `net` with outputs written to the given device memory (user_mem = true,
    /// default store mode). Asynchronous like bmrt: a later copy on this runtime (or
    /// [`Runtime::sync`]) waits for it. Returns the output shapes bmrt reports (dynamic nets
    /// may produce less than the stage's maximum).
    pub fn launch(
        &self,
        net: &NetInfo,
        inputs: &[Tensor],
        outputs: &[Tensor],
    ) -> Result<Vec<Vec<usize>>> {
        self.launch_inner(net, inputs, outputs)
            .with_context(|| format!("launching net {}", net.name))
    }

    fn launch_inner(
        &self,
        net: &NetInfo,
        inputs: &[Tensor],
        outputs: &[Tensor],
    ) -> Result<Vec<Vec<usize>>> {
        ensure!(
            inputs.len() == net.input_num() && outputs.len() == net.output_num(),
            "got {} inputs and {} outputs, the net has {} and {}",
            inputs.len(),
            outputs.len(),
            net.input_num(),
            net.output_num()
        );
        let mut raw_in = Vec::with_capacity(inputs.len());
        for (i, t) in inputs.iter().enumerate() {
            raw_in.push(self.raw_tensor(t, net.input_dtypes[i], "input", &net.input_names[i])?);
        }
        let mut raw_out = Vec::with_capacity(outputs.len());
        for (i, t) in outputs.iter().enumerate() {
            raw_out.push(self.raw_tensor(
                t,
                net.output_dtypes[i],
                "output",
                &net.output_names[i],
            )?);
        }
        let name = CString::new(net.name.as_str()).context("net name has a NUL byte")?;
        // SAFETY: `bmrt` is live; `name` is NUL-terminated; the arrays hold exactly the counts
        // passed and outlive the call. Every tensor's shape fits its device memory (checked in
        // raw_tensor). bmrt copies what it needs before returning and may write output shapes
        // back into `raw_out`, which we own mutably.
        let ok = unsafe {
            self.api.bmrt_launch_tensor_ex(
                self.bmrt,
                name.as_ptr(),
                raw_in.as_ptr(),
                raw_in.len() as i32,
                raw_out.as_mut_ptr(),
                raw_out.len() as i32,
                true,
                false,
            )
        };
        if !ok {
            bail!("bmrt_launch_tensor_ex failed (see bmrt's log above)");
        }
        raw_out.iter().map(|t| shape_from_raw(&t.shape)).collect()
    }

    /// `bm_tensor_t` for `t`, after checking it against the net's declared dtype and that its
    /// shape fits its memory (bmrt would only log that, then read or write past the end).
    fn raw_tensor(
        &self,
        t: &Tensor,
        declared: DType,
        kind: &str,
        io_name: &str,
    ) -> Result<ffi::bm_tensor_t> {
        ensure!(
            t.dtype == declared,
            "{kind} {io_name} is {declared}, the tensor given is {}",
            t.dtype
        );
        ensure!(
            t.bytes() <= t.mem.size(),
            "{kind} {io_name}: shape {:?} ({} bytes of {}) does not fit {:?}",
            t.shape,
            t.bytes(),
            t.dtype,
            t.mem
        );
        let shape = shape_to_raw(&t.shape).with_context(|| format!("{kind} {io_name}"))?;
        let mut raw = ffi::bm_tensor_t::default();
        // SAFETY: `raw` is a valid, writable bm_tensor_t; the other arguments are by value.
        unsafe {
            self.api
                .bmrt_tensor_with_device(&mut raw, t.mem.raw(), t.dtype.raw(), shape)
        };
        Ok(raw)
    }
}
