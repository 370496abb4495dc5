//! Values and broadcasting: the dense [`Tensor`] the interpreter holds,
//! ONNX element types (values kept as `f64`, rounded to what the type
//! holds), and elementwise maps over numpy-broadcast inputs.

use crate::graph::Constant;
use crate::names::*;
use crate::proto::tensor_proto::DataType;

use super::R;

/// Largest tensor the interpreter builds.
pub const MAX_ELEMENTS: usize = 1 << 23;

/// The element count of `shape`, refused when it passes [`MAX_ELEMENTS`]:
/// a zero dim makes it 0 whatever the others are, and no product can
/// overflow (the count is checked dim by dim).
pub(super) fn element_count(shape: &[usize]) -> R<usize> {
    if shape.contains(&0) {
        return Ok(0);
    }
    shape
        .iter()
        .try_fold(1usize, |n, &d| {
            n.checked_mul(d).filter(|&c| c <= MAX_ELEMENTS)
        })
        .ok_or_else(|| format!("shape {shape:?} has more than {MAX_ELEMENTS} elements"))
}

pub(super) const BOOL: i32 = DataType::Bool as i32;
pub(super) const INT64: i32 = DataType::Int64 as i32;
pub(super) const FLOAT: i32 = DataType::Float as i32;

/// A dense tensor: shape, row-major values, ONNX element type.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f64>,
    /// ONNX element type.
    pub dtype: i32,
}

impl Tensor {
    /// A tensor from its parts (`data.len()` must equal the shape's product).
    pub fn new(shape: Vec<usize>, data: Vec<f64>, dtype: i32) -> Self {
        // A zero dim empties the tensor whatever the other dims are, so the
        // check multiplies without overflowing.
        debug_assert_eq!(
            element_count(&shape).unwrap_or(usize::MAX),
            data.len(),
            "shape {shape:?}"
        );
        Self { shape, data, dtype }
    }
    pub(super) fn ints(&self) -> Vec<i64> {
        self.data.iter().map(|&v| v as i64).collect()
    }
    pub(super) fn scalar(&self) -> Result<f64, String> {
        match self.data.as_slice() {
            [v] => Ok(*v),
            _ => Err(format!("expected one value, got shape {:?}", self.shape)),
        }
    }
}

/// Axis `a` of a rank-`rank` tensor, negative counting from the end.
pub(super) fn norm_axis(a: i64, rank: usize) -> usize {
    (if a < 0 { a + rank as i64 } else { a }) as usize
}

pub(super) fn is_int(dt: i32) -> bool {
    !matches!(
        DataType::try_from(dt),
        Ok(DataType::Float | DataType::Double | DataType::Float16 | DataType::Bfloat16)
    )
}

pub(super) fn binary(op: &str, int: bool) -> fn(f64, f64) -> f64 {
    match op {
        ADD => |a, c| a + c,
        SUB => |a, c| a - c,
        MUL => |a, c| a * c,
        DIV if int => |a, c| if c == 0.0 { 0.0 } else { (a / c).trunc() },
        DIV => |a, c| a / c,
        MOD => |a, c| {
            if c == 0.0 {
                0.0
            } else {
                a - c * (a / c).floor()
            }
        },
        POW => f64::powf,
        MAX => f64::max,
        MIN => f64::min,
        EQUAL => |a, c| f64::from(u8::from(a == c)),
        LESS => |a, c| f64::from(u8::from(a < c)),
        LESS_OR_EQUAL => |a, c| f64::from(u8::from(a <= c)),
        GREATER => |a, c| f64::from(u8::from(a > c)),
        GREATER_OR_EQUAL => |a, c| f64::from(u8::from(a >= c)),
        AND | BITWISE_AND => |a, c| f64::from(u8::from(a != 0.0 && c != 0.0)),
        OR | BITWISE_OR => |a, c| f64::from(u8::from(a != 0.0 || c != 0.0)),
        _ => |a, c| f64::from(u8::from((a != 0.0) != (c != 0.0))),
    }
}

/// `v` as element type `to` holds it.
pub(super) fn cast(v: f64, to: i32) -> f64 {
    if to == BOOL {
        return f64::from(u8::from(v != 0.0));
    }
    round_to(v, to)
}

pub(super) fn round_to(v: f64, dt: i32) -> f64 {
    match DataType::try_from(dt) {
        Ok(DataType::Float) => f64::from(v as f32),
        Ok(DataType::Bool) => f64::from(u8::from(v != 0.0)),
        Ok(DataType::Double | DataType::Float16 | DataType::Bfloat16) => v,
        _ if v.is_finite() => v.trunc(),
        _ => v,
    }
}

pub(super) fn from_constant(c: &Constant, dtype: i32) -> Tensor {
    Tensor::new(
        c.dims.iter().map(|&d| d as usize).collect(),
        c.values.clone(),
        dtype,
    )
}

pub(super) fn broadcast_shape(shapes: &[&Vec<usize>]) -> R<Vec<usize>> {
    let r = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; r];
    for s in shapes {
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[r - s.len() + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return Err(format!("shapes {shapes:?} do not broadcast"));
            }
        }
    }
    if out.iter().product::<usize>() > MAX_ELEMENTS {
        return Err("broadcast result too large".into());
    }
    Ok(out)
}

/// Row-major strides of `shape` laid out in rank `r`, 0 on broadcast axes.
pub(super) fn strides_in(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let r = out.len();
    let mut st = vec![0usize; r];
    let mut acc = 1;
    for i in (0..shape.len()).rev() {
        let o = r - shape.len() + i;
        st[o] = if shape[i] == 1 && out[o] != 1 { 0 } else { acc };
        acc *= shape[i];
    }
    st
}

/// Elementwise over broadcast inputs.
pub(super) fn map_n(
    xs: &[&Tensor],
    shape: &[usize],
    dtype: i32,
    f: impl Fn(&[f64]) -> f64,
) -> Tensor {
    let count: usize = shape.iter().product();
    let strides: Vec<Vec<usize>> = xs.iter().map(|x| strides_in(&x.shape, shape)).collect();
    let mut idx = vec![0usize; shape.len()];
    let mut offs = vec![0usize; xs.len()];
    let mut vals = vec![0.0; xs.len()];
    let mut data = Vec::with_capacity(count);
    for _ in 0..count {
        for (k, x) in xs.iter().enumerate() {
            vals[k] = x.data[offs[k]];
        }
        data.push(f(&vals));
        // Advance the multi-index and every input's offset.
        for ax in (0..shape.len()).rev() {
            idx[ax] += 1;
            for k in 0..xs.len() {
                offs[k] += strides[k][ax];
            }
            if idx[ax] < shape[ax] {
                break;
            }
            for k in 0..xs.len() {
                offs[k] -= strides[k][ax] * shape[ax];
            }
            idx[ax] = 0;
        }
    }
    Tensor::new(shape.to_vec(), data, dtype)
}

/// An int64 tensor, for tests.
#[cfg(test)]
pub(super) fn t(shape: &[usize], data: &[f64]) -> Tensor {
    Tensor::new(shape.to_vec(), data.to_vec(), INT64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        let a = t(&[2, 1], &[1.0, 2.0]);
        let b = t(&[3], &[10.0, 20.0, 30.0]);
        let shape = broadcast_shape(&[&a.shape, &b.shape]).unwrap();
        let s = map_n(&[&a, &b], &shape, INT64, |v| v[0] + v[1]);
        assert_eq!(s.shape, vec![2, 3]);
        assert_eq!(s.data, vec![11.0, 21.0, 31.0, 12.0, 22.0, 32.0]);
        assert!(broadcast_shape(&[&vec![2], &vec![3]]).is_err());
    }

    #[test]
    fn integer_division_truncates_and_casts_round() {
        assert_eq!(binary(DIV, true)(-7.0, 2.0), -3.0);
        assert_eq!(binary(MOD, true)(-7.0, 2.0), 1.0);
        assert_eq!(cast(2.7, INT64), 2.0);
        assert_eq!(cast(-0.5, BOOL), 1.0);
        assert_eq!(cast(0.1, FLOAT), f64::from(0.1f32));
    }
}
