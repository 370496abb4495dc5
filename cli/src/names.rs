//! The ONNX-standard op types and attribute names the tool matches, runs
//! and writes, each spelled once. (Tessera's own names come from
//! [`tessera_schema`].)
//!
//! Constants only; the op tables of [`crate::eval`] and the matchers of
//! [`crate::sites`] and [`crate::mask`] key on them.

/// Op types of the default ONNX domain (and of `com.microsoft` where
/// marked).
mod ops {
    pub const ABS: &str = "Abs";
    pub const ADD: &str = "Add";
    pub const AND: &str = "And";
    /// ONNX `Attention` (opset 23+), and `com.microsoft.Attention`.
    pub const ATTENTION: &str = "Attention";
    pub const BITWISE_AND: &str = "BitwiseAnd";
    pub const BITWISE_OR: &str = "BitwiseOr";
    pub const CAST: &str = "Cast";
    pub const CEIL: &str = "Ceil";
    pub const CONCAT: &str = "Concat";
    pub const CONSTANT: &str = "Constant";
    pub const DIV: &str = "Div";
    pub const DROPOUT: &str = "Dropout";
    pub const EQUAL: &str = "Equal";
    pub const EXPAND: &str = "Expand";
    pub const FLOOR: &str = "Floor";
    pub const GATHER: &str = "Gather";
    pub const GATHER_ELEMENTS: &str = "GatherElements";
    pub const GEMM: &str = "Gemm";
    pub const GREATER: &str = "Greater";
    pub const GREATER_OR_EQUAL: &str = "GreaterOrEqual";
    /// `com.microsoft.GroupQueryAttention`.
    pub const GROUP_QUERY_ATTENTION: &str = "GroupQueryAttention";
    pub const IDENTITY: &str = "Identity";
    pub const IS_INF: &str = "IsInf";
    pub const IS_NAN: &str = "IsNaN";
    pub const LESS: &str = "Less";
    pub const LESS_OR_EQUAL: &str = "LessOrEqual";
    pub const MATMUL: &str = "MatMul";
    pub const MAX: &str = "Max";
    pub const MIN: &str = "Min";
    pub const MOD: &str = "Mod";
    pub const MUL: &str = "Mul";
    /// `com.microsoft.MultiHeadAttention`.
    pub const MULTI_HEAD_ATTENTION: &str = "MultiHeadAttention";
    pub const NEG: &str = "Neg";
    pub const NOT: &str = "Not";
    pub const OR: &str = "Or";
    pub const POW: &str = "Pow";
    pub const RECIPROCAL: &str = "Reciprocal";
    pub const RESHAPE: &str = "Reshape";
    pub const SHAPE: &str = "Shape";
    pub const SIGN: &str = "Sign";
    pub const SLICE: &str = "Slice";
    pub const SOFTMAX: &str = "Softmax";
    pub const SPLIT: &str = "Split";
    pub const SQRT: &str = "Sqrt";
    pub const SQUEEZE: &str = "Squeeze";
    pub const SUB: &str = "Sub";
    pub const TANH: &str = "Tanh";
    pub const TRANSPOSE: &str = "Transpose";
    pub const UNSQUEEZE: &str = "Unsqueeze";
    pub const WHERE: &str = "Where";
    pub const XOR: &str = "Xor";
}

/// Attribute names of ONNX-standard ops.
mod attrs {
    /// `Reshape`: a 0 in the shape is a 0, not "copy".
    pub const ALLOWZERO: &str = "allowzero";
    /// `Unsqueeze`/`Squeeze`/`Reduce*` (before opset 13/18): the axes.
    pub const AXES: &str = "axes";
    /// The axis of `Softmax`, `Concat`, `Gather`, `Split`, `Flatten`.
    pub const AXIS: &str = "axis";
    /// `Transpose`: the permutation.
    pub const PERM: &str = "perm";
    /// `Split` (before opset 13): the part sizes.
    pub const SPLIT_ATTR: &str = "split";
    /// `Constant`: a float scalar value.
    pub const VALUE_FLOAT: &str = "value_float";
    /// `Constant`: a float list value.
    pub const VALUE_FLOATS: &str = "value_floats";
    /// `Constant`: an int list value.
    pub const VALUE_INTS: &str = "value_ints";
    /// `Cast`: the target element type.
    pub const TO: &str = "to";
    /// `Constant`/`ConstantOfShape`: the value tensor.
    pub const VALUE: &str = "value";
}

/// The domain of ONNX Runtime's contrib ops.
pub const MS_DOMAIN: &str = "com.microsoft";

pub use attrs::*;
pub use ops::*;
