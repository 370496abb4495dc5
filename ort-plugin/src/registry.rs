//! The one list of the domain's kernels, and the `OrtCustomOp` tables it
//! generates: for the CPU EP and, with feature `cuda`, the CUDA EP, each
//! with and without shape inference (runtimes before 1.24, see
//! [`op::table_without_inference`]).
//!
//! Each line of `kernels!` is one (op, element type) and the EPs it has a
//! kernel for. ORT merges entries that share a name into one schema and
//! picks the kernel by type; the CUDA entries follow the CPU ones under the
//! same names. Float `Attention` and `TopKAttention` have no CUDA kernel
//! (no half-precision one applies), so ORT runs them on the CPU kernels and
//! copies the tensors across.

use ort_sys::OrtCustomOp;
use tessera_core::{bf16, f16};

use crate::op;
use crate::ops::attention::AttentionOp;
use crate::ops::lightning_indexer::LightningIndexerOp;
use crate::ops::merge_attention::MergeAttentionOp;
use crate::ops::topk_attention::TopKAttentionOp;

/// Expand the kernel list into the registration tables.
macro_rules! kernels {
    (@cuda $op:ty, $inference:expr) => {
        None
    };
    (@cuda $op:ty, $inference:expr, cuda) => {
        Some(op::cuda::table::<$op>($inference))
    };
    ($($op:ty => cpu $(+ $cuda:ident)?;)*) => {
        const COUNT: usize = [$(stringify!($op)),*].len();

        /// The CPU-EP tables: one per (op, element type).
        pub static CPU: [OrtCustomOp; COUNT] = [$(op::table::<$op>()),*];

        /// [`CPU`] without shape inference.
        pub static CPU_WITHOUT_INFERENCE: [OrtCustomOp; COUNT] =
            [$(op::table_without_inference::<$op>()),*];

        /// The CUDA-EP tables, `None` where an entry has no CUDA kernel.
        #[cfg(feature = "cuda")]
        pub static CUDA: [Option<OrtCustomOp>; COUNT] = [$(kernels!(@cuda $op, true $(, $cuda)?)),*];

        /// [`CUDA`] without shape inference.
        #[cfg(feature = "cuda")]
        pub static CUDA_WITHOUT_INFERENCE: [Option<OrtCustomOp>; COUNT] =
            [$(kernels!(@cuda $op, false $(, $cuda)?)),*];
    };
}

kernels! {
    AttentionOp<f32> => cpu;
    AttentionOp<f16> => cpu + cuda;
    AttentionOp<bf16> => cpu + cuda;
    LightningIndexerOp => cpu + cuda;
    TopKAttentionOp<f32> => cpu;
    TopKAttentionOp<f16> => cpu + cuda;
    TopKAttentionOp<bf16> => cpu + cuda;
    MergeAttentionOp<f32> => cpu + cuda;
    MergeAttentionOp<f16> => cpu + cuda;
    MergeAttentionOp<bf16> => cpu + cuda;
}

/// Every table to register on a runtime with (`true`) or without shape
/// inference: the CPU ones, then (feature `cuda`) the CUDA ones.
pub fn tables(with_inference: bool) -> Vec<&'static OrtCustomOp> {
    let cpu = if with_inference {
        &CPU
    } else {
        &CPU_WITHOUT_INFERENCE
    };
    let all: Vec<&'static OrtCustomOp> = cpu.iter().collect();
    #[cfg(feature = "cuda")]
    let all = {
        let cuda = if with_inference {
            &CUDA
        } else {
            &CUDA_WITHOUT_INFERENCE
        };
        let mut all = all;
        all.extend(cuda.iter().flatten());
        all
    };
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::ffi::CStr;

    /// The name of a table's op.
    fn name(t: &OrtCustomOp) -> &'static CStr {
        // SAFETY: the table functions ignore their argument and return a
        // static string.
        unsafe { CStr::from_ptr((t.GetName.unwrap())(t)) }
    }

    #[test]
    fn every_op_of_the_schema_is_registered_in_list_order() {
        let names: Vec<&CStr> = CPU.iter().map(name).collect();
        let mut ops: Vec<&CStr> = names.clone();
        ops.dedup();
        let want: Vec<&CStr> = tessera_schema::OPS.iter().map(|n| n.c()).collect();
        assert_eq!(ops, want);
        assert_eq!(CPU.len(), 10);
        assert!(CPU.iter().all(|t| t.InferOutputShapeFn.is_some()));
        assert!(CPU_WITHOUT_INFERENCE
            .iter()
            .all(|t| t.InferOutputShapeFn.is_none()));
        let without: Vec<&CStr> = CPU_WITHOUT_INFERENCE.iter().map(name).collect();
        assert_eq!(names, without);
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn tables_declare_the_cuda_ep_and_keep_the_cpu_schema() {
        assert_eq!(CUDA.iter().flatten().count(), 8);
        for (t, cpu) in CUDA.iter().zip(&CPU) {
            let Some(t) = t else { continue };
            // SAFETY: the table functions ignore their argument.
            unsafe {
                let ep = CStr::from_ptr((t.GetExecutionProviderType.unwrap())(t));
                assert_eq!(ep, op::cuda::EXECUTION_PROVIDER);
                assert!((cpu.GetExecutionProviderType.unwrap())(cpu).is_null());
                assert_eq!(name(t), name(cpu));
                assert_eq!(
                    (t.GetInputTypeCount.unwrap())(t),
                    (cpu.GetInputTypeCount.unwrap())(cpu)
                );
                assert_eq!(
                    (t.GetOutputTypeCount.unwrap())(t),
                    (cpu.GetOutputTypeCount.unwrap())(cpu)
                );
                for i in 0..(t.GetInputTypeCount.unwrap())(t) {
                    assert_eq!(
                        (t.GetInputType.unwrap())(t, i),
                        (cpu.GetInputType.unwrap())(cpu, i)
                    );
                    assert_eq!(
                        (t.GetInputCharacteristic.unwrap())(t, i),
                        (cpu.GetInputCharacteristic.unwrap())(cpu, i)
                    );
                }
            }
            assert!(t.InferOutputShapeFn.is_some());
        }
        assert!(CUDA_WITHOUT_INFERENCE
            .iter()
            .flatten()
            .all(|t| t.InferOutputShapeFn.is_none()));
        assert_eq!(tables(true).len(), 18);
    }
}
