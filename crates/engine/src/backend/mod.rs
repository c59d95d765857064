//! The few ops a decoder needs, behind a trait a GPU can implement.
//!
//! Model code (model/llama.rs, model/phi3.rs) is generic over `Backend` and never branches on the
//! device. Every op is per row: the result for one token row never depends on how many rows share
//! the call (batch invariance), which is what makes T-token verification exact.
//!
//! Buffers hold row-major f32 activations `[n_rows, width]`; ops take `n_rows` explicitly so one
//! buffer sized for the widest block serves every block size.

pub mod cpu;

use std::collections::BTreeMap;

use crate::model::rope::{RopeSet, RopeTable};
use crate::model::weights::HostTensor;
use crate::EngineError;

/// How matrices are stored and multiplied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputePath {
    /// Weights dequantized to f32, f32 activations: the engine's own golden.
    Reference,
    /// INT8 / native-quant kernels (batch-invariant).
    Fast,
}

/// One segment of an attention call: rows [row0, row0 + n_rows) at positions
/// [pos0, pos0 + n_rows), with the K and V cache of their sequence.
pub struct AttnSeg<'a, Buf> {
    pub row0: usize,
    pub n_rows: usize,
    pub pos0: usize,
    pub k_cache: &'a Buf,
    pub v_cache: &'a Buf,
}

impl<Buf> Clone for AttnSeg<'_, Buf> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<Buf> Copy for AttnSeg<'_, Buf> {}

/// Op names counted for the residency gate.
pub type OpCounts = BTreeMap<&'static str, u64>;

pub trait Backend: Send + Sync + Sized + 'static {
    /// f32 activations on the device.
    type Buf: Send;
    /// A weight matrix `[n_out, n_in]` in the backend's layout.
    type Matrix: Send + Sync;
    /// A weight vector (norm weights) on the device.
    type Vector: Send + Sync;

    /// "cpu", "cuda:0", ...
    fn device_name(&self) -> String;
    fn path(&self) -> ComputePath;

    fn alloc(&self, n: usize) -> Self::Buf;
    fn upload(&self, src: &[f32], dst: &mut Self::Buf);
    /// Copy `dst.len()` values starting at element `offset` back to the host.
    fn download(&self, src: &Self::Buf, offset: usize, dst: &mut [f32]);

    fn load_matrix(&self, t: &HostTensor) -> Result<Self::Matrix, EngineError>;
    fn load_vector(&self, t: &HostTensor) -> Result<Self::Vector, EngineError>;
    /// Rows of the matrix (n_out) and row length (n_in).
    fn matrix_dims(&self, m: &Self::Matrix) -> (usize, usize);

    /// out[t] = table row ids[t] (dequantized). out: [n, n_embd]
    fn embed(
        &self,
        table: &Self::Matrix,
        ids: &[u32],
        out: &mut Self::Buf,
    ) -> Result<(), EngineError>;
    /// out[t] = x[t] / rms(x[t]) * w. x, out: [n_rows, w.len()]
    fn rms_norm(
        &self,
        x: &Self::Buf,
        w: &Self::Vector,
        eps: f32,
        n_rows: usize,
        out: &mut Self::Buf,
    );
    /// out[t][o] = dot(m[o], x[t]). x: [n_rows, n_in], out: [n_rows, n_out]
    fn matmul(&self, m: &Self::Matrix, x: &Self::Buf, n_rows: usize, out: &mut Self::Buf);
    /// `outs[i] = ms[i] x` for several matrices sharing one input (Q/K/V, gate/up): each
    /// result must be exactly what [`Backend::matmul`] gives; a backend may quantize the
    /// input once and dispatch all of them together.
    fn matmul_multi(
        &self,
        ms: &[&Self::Matrix],
        x: &Self::Buf,
        n_rows: usize,
        outs: &mut [&mut Self::Buf],
    ) {
        assert_eq!(ms.len(), outs.len());
        for (m, out) in ms.iter().zip(outs.iter_mut()) {
            self.matmul(m, x, n_rows, out);
        }
    }
    /// Runs `f` in the backend's execution context (a whole pass: a backend that needs a
    /// thread or device context for its ops sets it up once here; the CPU backend needs none).
    fn scope<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        f()
    }
    /// Copy columns [col, col+width) of src [n_rows, src_width] into dst [n_rows, width].
    fn copy_cols(
        &self,
        src: &Self::Buf,
        src_width: usize,
        col: usize,
        width: usize,
        n_rows: usize,
        dst: &mut Self::Buf,
    );
    /// Copy rows `rows` of src [_, width] into rows 0.. of dst, in that order.
    fn gather_rows(&self, src: &Self::Buf, width: usize, rows: &[usize], dst: &mut Self::Buf);
    /// Rotate every head of rows [row0, row0 + n_rows) of x [_, n_heads*head_dim]; row
    /// row0 + t is at position pos0 + t.
    #[allow(clippy::too_many_arguments)]
    fn rope(
        &self,
        rope: &RopeTable,
        set: RopeSet,
        x: &mut Self::Buf,
        row0: usize,
        n_rows: usize,
        width: usize,
        head_dim: usize,
        pos0: usize,
    );
    /// Write src rows [row0, row0 + n_rows) (of `width`) into cache rows [pos0, pos0 + n_rows).
    #[allow(clippy::too_many_arguments)]
    fn kv_write(
        &self,
        cache: &mut Self::Buf,
        src: &Self::Buf,
        row0: usize,
        width: usize,
        pos0: usize,
        n_rows: usize,
    );
    /// Causal GQA attention for one or more segments (disjoint rows of q and out, each
    /// [_, n_head*head_dim]): row row0 + t of a segment, at position pos0 + t, attends to rows
    /// [0, pos0 + t] of the segment's own cache. A row's result must not depend on the other
    /// rows or segments of the call.
    fn attention(
        &self,
        q: &Self::Buf,
        segs: &[AttnSeg<'_, Self::Buf>],
        n_head: usize,
        n_head_kv: usize,
        head_dim: usize,
        out: &mut Self::Buf,
    );
    /// out = silu(gate) * up, elementwise over [n_rows, width].
    fn swiglu(&self, gate: &Self::Buf, up: &Self::Buf, n: usize, out: &mut Self::Buf);
    /// x += y over the first n elements.
    fn add_assign(&self, x: &mut Self::Buf, y: &Self::Buf, n: usize);

    /// Ops dispatched since the last reset, by name.
    fn op_counts(&self) -> OpCounts;
    fn reset_op_counts(&self);
}
