//! Moving elements: the shapes `Reshape` and `(Un)Squeeze` give, and
//! `Concat`, `Transpose`, `Slice` and the three gathers over row-major data.
//! Each costs one pass over its output.

use std::rc::Rc;

use super::tensor::{norm_axis, strides_in, Tensor, MAX_ELEMENTS};
use super::R;

/// The shape after `Unsqueeze` (`insert`) or `Squeeze` with `axes`.
pub(super) fn squeezed(
    mut shape: Vec<usize>,
    axes: Option<Vec<i64>>,
    insert: bool,
) -> R<Vec<usize>> {
    if insert {
        let axes = axes.ok_or("no axes")?;
        let r = shape.len() + axes.len();
        let mut norm: Vec<usize> = axes.iter().map(|&a| norm_axis(a, r)).collect();
        norm.sort_unstable();
        for a in norm {
            if a > shape.len() {
                return Err("bad axis".into());
            }
            shape.insert(a, 1);
        }
        return Ok(shape);
    }
    let keep: Vec<usize> = match axes {
        Some(axes) => {
            let norm: Vec<usize> = axes.iter().map(|&a| norm_axis(a, shape.len())).collect();
            // Only size-1 axes go; anything else would change the element
            // count under the same data (found by fuzzing).
            if let Some(&a) = norm.iter().find(|&&a| shape.get(a) != Some(&1)) {
                return Err(format!("Squeeze axis {a} is not of size 1 in {shape:?}"));
            }
            (0..shape.len()).filter(|i| !norm.contains(i)).collect()
        }
        None => (0..shape.len()).filter(|&i| shape[i] != 1).collect(),
    };
    Ok(keep.iter().map(|&i| shape[i]).collect())
}

/// The shape `Reshape` gives `x` for `spec` (0 = copy unless `allowzero`, −1 = infer).
pub(super) fn reshaped(x: &[usize], spec: &[i64], allowzero: bool) -> R<Vec<usize>> {
    let count: usize = x.iter().product();
    let mut shape: Vec<i64> = spec
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            if d == 0 && !allowzero {
                x.get(i).map_or(0, |&v| v as i64)
            } else {
                d
            }
        })
        .collect();
    let known: i64 = shape.iter().filter(|&&d| d >= 0).product();
    if let Some(i) = shape.iter().position(|&d| d == -1) {
        shape[i] = if known == 0 { 0 } else { count as i64 / known };
    }
    let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    if shape.iter().product::<usize>() != count {
        return Err(format!("cannot reshape {x:?} to {spec:?}"));
    }
    Ok(shape)
}

pub(super) fn concat(parts: &[Rc<Tensor>], a: usize) -> R<Tensor> {
    let mut shape = parts.first().ok_or("no inputs")?.shape.clone();
    if a >= shape.len() {
        return Err("bad axis".into());
    }
    // Every dim but the axis must match (else the copies below read past
    // a part's data).
    let same = |p: &Rc<Tensor>| {
        p.shape.len() == shape.len() && (0..shape.len()).all(|i| i == a || p.shape[i] == shape[i])
    };
    if !parts.iter().all(same) {
        return Err("inputs whose dims differ off the concat axis".into());
    }
    shape[a] = parts
        .iter()
        .map(|p| p.shape.get(a).copied().unwrap_or(0))
        .sum();
    let outer: usize = shape[..a].iter().product();
    let mut data = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        for p in parts {
            let inner: usize = p.shape[a..].iter().product();
            data.extend_from_slice(&p.data[o * inner..(o + 1) * inner]);
        }
    }
    if data.len() != shape.iter().product::<usize>() {
        return Err("mismatched shapes".into());
    }
    Ok(Tensor::new(shape, data, parts[0].dtype))
}

pub(super) fn transpose(x: &Tensor, perm: &[usize]) -> Tensor {
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let src = strides_in(&x.shape, &x.shape);
    let st: Vec<usize> = perm.iter().map(|&p| src[p]).collect();
    let count = x.data.len();
    let mut data = Vec::with_capacity(count);
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..count {
        let off: usize = idx.iter().zip(&st).map(|(i, s)| i * s).sum();
        data.push(x.data[off]);
        advance(&mut idx, &shape);
    }
    Tensor::new(shape, data, x.dtype)
}

/// The kept indices per axis of a `Slice` of `shape` with `[starts, ends, axes, steps]`.
pub(super) fn slice_ranges(
    shape: &[usize],
    [starts, ends, axes, steps]: &[Vec<i64>; 4],
) -> R<Vec<Vec<usize>>> {
    let mut ranges: Vec<Vec<usize>> = shape.iter().map(|&d| (0..d).collect()).collect();
    for (k, &start) in starts.iter().enumerate() {
        let a = *axes.get(k).ok_or("axes shorter than starts")?;
        let a = norm_axis(a, shape.len());
        let d = *shape.get(a).ok_or("bad axis")? as i64;
        let step = *steps.get(k).ok_or("steps shorter than starts")?;
        let end = *ends.get(k).ok_or("ends shorter than starts")?;
        if step == 0 {
            return Err("step 0".into());
        }
        let fix = |v: i64, lo: i64, hi: i64| (if v < 0 { v + d } else { v }).clamp(lo, hi);
        let mut out = Vec::new();
        if step > 0 {
            let (mut i, e) = (fix(start, 0, d), fix(end, 0, d));
            while i < e {
                out.push(i as usize);
                i += step;
            }
        } else {
            let (mut i, e) = (fix(start, -1, d - 1), fix(end, -1, d - 1));
            while i > e {
                out.push(i as usize);
                i += step;
            }
        }
        ranges[a] = out;
    }
    Ok(ranges)
}

/// Step a row-major multi-index `idx` within `shape` (wrapping to zero).
pub(super) fn advance(idx: &mut [usize], shape: &[usize]) {
    for ax in (0..shape.len()).rev() {
        idx[ax] += 1;
        if idx[ax] < shape[ax] {
            return;
        }
        idx[ax] = 0;
    }
}

pub(super) fn slice(x: &Tensor, args: &[Vec<i64>; 4]) -> R<Tensor> {
    let ranges = slice_ranges(&x.shape, args)?;
    let shape: Vec<usize> = ranges.iter().map(Vec::len).collect();
    let st = strides_in(&x.shape, &x.shape);
    let count: usize = shape.iter().product();
    let mut data = Vec::with_capacity(count);
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..count {
        let off: usize = idx
            .iter()
            .enumerate()
            .map(|(a, &i)| ranges[a][i] * st[a])
            .sum();
        data.push(x.data[off]);
        advance(&mut idx, &shape);
    }
    Ok(Tensor::new(shape, data, x.dtype))
}

pub(super) fn gather(x: &Tensor, idx: &Tensor, a: usize) -> R<Tensor> {
    if a >= x.shape.len() {
        return Err("bad axis".into());
    }
    // Checked: a zero-size tensor may carry huge dims (found by fuzzing).
    let prod = |d: &[usize]| d.iter().try_fold(1usize, |n, &v| n.checked_mul(v));
    let (Some(outer), Some(inner)) = (prod(&x.shape[..a]), prod(&x.shape[a + 1..])) else {
        return Err("element count overflows".into());
    };
    let d = x.shape[a] as i64;
    let mut shape = x.shape[..a].to_vec();
    shape.extend(&idx.shape);
    shape.extend(&x.shape[a + 1..]);
    let count = prod(&shape).ok_or("element count overflows")?;
    if count > MAX_ELEMENTS {
        return Err("too large".into());
    }
    let mut data = Vec::with_capacity(count);
    for o in 0..outer {
        for &i in &idx.data {
            let i = i as i64;
            let i = if i < 0 { i + d } else { i };
            if !(0..d).contains(&i) {
                return Err(format!("index {i} out of range 0..{d}"));
            }
            let base = (o * x.shape[a] + i as usize) * inner;
            data.extend_from_slice(&x.data[base..base + inner]);
        }
    }
    Ok(Tensor::new(shape, data, x.dtype))
}

pub(super) fn gather_elements(x: &Tensor, idx: &Tensor, a: usize) -> R<Tensor> {
    if idx.shape.len() != x.shape.len() || a >= x.shape.len() {
        return Err("indices and data differ in rank".into());
    }
    let xs = strides_in(&x.shape, &x.shape);
    let is = strides_in(&idx.shape, &idx.shape);
    let d = x.shape[a] as i64;
    let mut data = Vec::with_capacity(idx.data.len());
    for (flat, &i) in idx.data.iter().enumerate() {
        let i = i as i64;
        let i = if i < 0 { i + d } else { i };
        if !(0..d).contains(&i) {
            return Err(format!("index {i} out of range 0..{d}"));
        }
        let mut off = 0;
        for ax in 0..x.shape.len() {
            let coord = if ax == a {
                i as usize
            } else {
                (flat / is[ax]) % idx.shape[ax]
            };
            if coord >= x.shape[ax] {
                return Err("index shape exceeds data".into());
            }
            off += coord * xs[ax];
        }
        data.push(x.data[off]);
    }
    Ok(Tensor::new(idx.shape.clone(), data, x.dtype))
}

pub(super) fn gather_nd(x: &Tensor, idx: &Tensor) -> R<Tensor> {
    let k = *idx.shape.last().ok_or("scalar indices")?;
    if k > x.shape.len() {
        return Err("index depth exceeds rank".into());
    }
    let st = strides_in(&x.shape, &x.shape);
    let inner: usize = x.shape[k..].iter().product();
    let mut shape = idx.shape[..idx.shape.len() - 1].to_vec();
    shape.extend(&x.shape[k..]);
    let mut data = Vec::with_capacity(shape.iter().product());
    for tuple in idx.data.chunks(k.max(1)) {
        let mut off = 0usize;
        for (a, &i) in tuple.iter().enumerate() {
            let d = x.shape[a] as i64;
            let i = i as i64;
            let i = if i < 0 { i + d } else { i };
            if !(0..d).contains(&i) {
                return Err(format!("index {i} out of range 0..{d}"));
            }
            off += i as usize * st[a];
        }
        data.extend_from_slice(&x.data[off..off + inner]);
    }
    Ok(Tensor::new(shape, data, x.dtype))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::tensor::t;

    #[test]
    fn gathers_slices_and_transposes_pick_the_right_elements() {
        let x = t(&[2, 3], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(
            transpose(&x, &[1, 0]).data,
            vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
        );
        assert_eq!(
            gather(&x, &t(&[2], &[2.0, -3.0]), 1).unwrap().data,
            vec![2.0, 0.0, 5.0, 3.0]
        );
        let ge = gather_elements(&x, &t(&[2, 2], &[2.0, 0.0, 1.0, 1.0]), 1).unwrap();
        assert_eq!(ge.data, vec![2.0, 0.0, 4.0, 4.0]);
        let nd = gather_nd(&x, &t(&[2, 2], &[1.0, 2.0, 0.0, 1.0])).unwrap();
        assert_eq!(nd.data, vec![5.0, 1.0]);
        let s = slice(&x, &[vec![-1], vec![-4], vec![1], vec![-1]]).unwrap();
        assert_eq!(s.data, vec![2.0, 1.0, 0.0, 5.0, 4.0, 3.0]);
        let c = concat(&[Rc::new(x.clone()), Rc::new(x)], 1).unwrap();
        assert_eq!(c.shape, vec![2, 6]);
        assert_eq!(c.data[3..6], [0.0, 1.0, 2.0]);
        assert!(gather(&t(&[2], &[1.0, 2.0]), &t(&[1], &[2.0]), 0).is_err());
    }
}
