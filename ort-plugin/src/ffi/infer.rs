//! Shape inference (`InferOutputShapeFn`): the inputs' types and shapes, the
//! node's int attributes, and setting an output's type and shape.

use core::ffi::{c_char, CStr};
use std::ffi::CString;

use ort_sys::{OrtApi, OrtOpAttr, OrtOpAttrType, OrtShapeInferContext, OrtTensorTypeAndShapeInfo};

use super::tensor::{read_type_shape, TypeShape};
use super::{check, elem};
use crate::error::Result;

/// A shape-inference context (`InferOutputShapeFn`).
#[derive(Debug)]
pub struct ShapeInference {
    api: &'static OrtApi,
    ctx: *mut OrtShapeInferContext,
}

impl ShapeInference {
    /// Wrap the context ORT passed to `InferOutputShapeFn`.
    ///
    /// # Safety
    /// `ctx` must be valid for the lifetime of the returned value.
    pub unsafe fn new(api: &'static OrtApi, ctx: *mut OrtShapeInferContext) -> Self {
        Self { api, ctx }
    }

    /// Number of inputs of the node.
    pub fn input_count(&self) -> Result<usize> {
        let mut n = 0;
        // SAFETY: ctx is valid (constructor contract).
        check(self.api, unsafe {
            (self.api.ShapeInferContext_GetInputCount)(self.ctx, &mut n)
        })?;
        Ok(n)
    }

    /// Type and shape of input `i`, or `None` when absent.
    pub fn input(&self, i: usize) -> Result<Option<TypeShape>> {
        if i >= self.input_count()? {
            return Ok(None);
        }
        let mut info: *mut OrtTensorTypeAndShapeInfo = core::ptr::null_mut();
        // SAFETY: ctx valid, `i` in range. The info is owned by the context
        // and must NOT be released (ORT frees it; releasing is a double free).
        let st = unsafe { (self.api.ShapeInferContext_GetInputTypeShape)(self.ctx, i, &mut info) };
        if check(self.api, st).is_err() || info.is_null() {
            return Ok(None);
        }
        // SAFETY: `info` is valid while the context is.
        let ts = unsafe { read_type_shape(self.api, info, true)? };
        // A missing optional input shows up as an undefined element type.
        Ok((ts.elem != 0).then_some(ts))
    }

    fn attr(&self, name: &CStr) -> Option<*const OrtOpAttr> {
        let mut attr: *const OrtOpAttr = core::ptr::null();
        // SAFETY: ctx valid, name NUL-terminated.
        let st = unsafe {
            (self.api.ShapeInferContext_GetAttribute)(self.ctx, name.as_ptr(), &mut attr)
        };
        (check(self.api, st).is_ok() && !attr.is_null()).then_some(attr)
    }

    /// An int attribute, or `None`.
    pub fn attr_i64(&self, name: &CStr) -> Option<i64> {
        let attr = self.attr(name)?;
        let mut v = 0i64;
        let mut out = 0usize;
        // SAFETY: `attr` is valid; `v` has room for one int64.
        let st = unsafe {
            (self.api.ReadOpAttr)(
                attr,
                OrtOpAttrType::ORT_OP_ATTR_INT,
                (&mut v as *mut i64).cast(),
                8,
                &mut out,
            )
        };
        check(self.api, st).ok().map(|()| v)
    }

    /// Set output `i` to element type `elem` and `dims`, where a dim is a
    /// known size or a symbol. Outputs with an unknown dim are left alone.
    pub fn set_output(&self, i: usize, elem: i32, dims: &[Dim]) -> Result<()> {
        if dims.iter().any(|d| matches!(d, Dim::Unknown)) {
            return Ok(());
        }
        let api = self.api;
        let mut info: *mut OrtTensorTypeAndShapeInfo = core::ptr::null_mut();
        // SAFETY: we own `info` from here until the release below.
        check(api, unsafe {
            (api.CreateTensorTypeAndShapeInfo)(&mut info)
        })?;
        let values: Vec<i64> = dims
            .iter()
            .map(|d| if let Dim::Known(v) = d { *v } else { -1 })
            .collect();
        let names: Vec<CString> = dims
            .iter()
            .map(|d| match d {
                Dim::Symbol(s) => CString::new(s.replace('\0', "")).unwrap_or_default(),
                _ => CString::default(),
            })
            .collect();
        let mut ptrs: Vec<*const c_char> = names.iter().map(|s| s.as_ptr()).collect();
        // SAFETY: `info` is ours; the arrays hold `dims.len()` entries and the
        // strings outlive the calls (ORT copies them).
        let r = unsafe {
            check(api, (api.SetTensorElementType)(info, elem::to_enum(elem)))
                .and_then(|()| {
                    check(
                        api,
                        (api.SetDimensions)(info, values.as_ptr(), values.len()),
                    )
                })
                .and_then(|()| {
                    check(
                        api,
                        (api.SetSymbolicDimensions)(info, ptrs.as_mut_ptr(), ptrs.len()),
                    )
                })
                .and_then(|()| {
                    check(
                        api,
                        (api.ShapeInferContext_SetOutputTypeShape)(self.ctx, i, info),
                    )
                })
        };
        // SAFETY: `info` was created above and is released once.
        unsafe { (api.ReleaseTensorTypeAndShapeInfo)(info) };
        r
    }
}

/// One dimension during shape inference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    /// A known size.
    Known(i64),
    /// A named symbolic size.
    Symbol(String),
    /// Neither known nor named.
    Unknown,
}

impl Dim {
    /// Dim `i` of a type-and-shape.
    pub fn of(ts: &TypeShape, i: usize) -> Dim {
        match (ts.dims.get(i), ts.symbols.get(i)) {
            (Some(&v), _) if v >= 0 => Dim::Known(v),
            (_, Some(s)) if !s.is_empty() => Dim::Symbol(s.clone()),
            _ => Dim::Unknown,
        }
    }

    /// `self * k` when known.
    pub fn times(&self, k: i64) -> Dim {
        match self {
            Dim::Known(v) => v.checked_mul(k).map_or(Dim::Unknown, Dim::Known),
            _ if k == 1 => self.clone(),
            _ => Dim::Unknown,
        }
    }

    /// `self / k` when known and exact.
    pub fn div(&self, k: i64) -> Dim {
        match self {
            Dim::Known(v) if k > 0 && v % k == 0 => Dim::Known(v / k),
            _ if k == 1 => self.clone(),
            _ => Dim::Unknown,
        }
    }

    /// `self + other` when both known; `self` when `other` is a known 0.
    pub fn plus(&self, other: &Dim) -> Dim {
        match (self, other) {
            (Dim::Known(a), Dim::Known(b)) => a.checked_add(*b).map_or(Dim::Unknown, Dim::Known),
            (d, Dim::Known(0)) | (Dim::Known(0), d) => d.clone(),
            _ => Dim::Unknown,
        }
    }
}
