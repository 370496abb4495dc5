//! Tensors as a running kernel sees them: element type and shape, and the
//! host buffers of inputs and outputs, checked before they become slices.

use core::ffi::{c_char, c_void, CStr};

use ort_sys::{OrtApi, OrtTensorTypeAndShapeInfo};

use super::{check, elem};
use crate::error::{Error, Result};

/// Element type and shape of a tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeShape {
    /// ONNX element type code.
    pub elem: i32,
    /// Dimensions (`-1` where unknown during shape inference).
    pub dims: Vec<i64>,
    /// Symbolic names (`""` where none), same length as `dims`.
    pub symbols: Vec<String>,
}

/// Read the element type and shape from a type-and-shape info.
///
/// # Safety
/// `info` must be a valid type-and-shape info.
pub(crate) unsafe fn read_type_shape(
    api: &OrtApi,
    info: *const OrtTensorTypeAndShapeInfo,
    symbols: bool,
) -> Result<TypeShape> {
    let mut elem = 0i32;
    let mut n = 0usize;
    // SAFETY: `info` is valid (caller); ORT writes one enum value, which we
    // receive in an i32 (same size and ABI as the C enum).
    unsafe {
        check(
            api,
            (api.GetTensorElementType)(info, (&mut elem as *mut i32).cast()),
        )?;
        check(api, (api.GetDimensionsCount)(info, &mut n))?;
    }
    let mut dims = vec![0i64; n];
    // SAFETY: `dims` holds `n` elements, as ORT reported.
    unsafe { check(api, (api.GetDimensions)(info, dims.as_mut_ptr(), n))? };
    let mut names = vec![String::new(); n];
    if symbols && n > 0 {
        let mut ptrs: Vec<*const c_char> = vec![core::ptr::null(); n];
        // SAFETY: `ptrs` holds `n` pointers; ORT fills them with strings owned by `info`.
        unsafe { check(api, (api.GetSymbolicDimensions)(info, ptrs.as_mut_ptr(), n))? };
        for (name, p) in names.iter_mut().zip(&ptrs) {
            if !p.is_null() {
                // SAFETY: a NUL-terminated string owned by `info`, read before it goes away.
                *name = unsafe { CStr::from_ptr(*p) }.to_string_lossy().into_owned();
            }
        }
    }
    Ok(TypeShape {
        elem,
        dims,
        symbols: names,
    })
}

/// A tensor whose element type and shape are known: what planning reads,
/// whether its data is host or device memory.
pub trait Described {
    /// Element type and shape.
    fn type_shape(&self) -> &TypeShape;
}

impl Described for InputTensor {
    fn type_shape(&self) -> &TypeShape {
        &self.ts
    }
}

/// One input tensor of a running kernel.
#[derive(Clone, Debug)]
pub struct InputTensor {
    /// Element type and shape.
    pub ts: TypeShape,
    pub(crate) data: *const c_void,
}

/// One output tensor, allocated by ORT for a running kernel.
#[derive(Debug)]
pub struct OutputTensor {
    pub(crate) data: *mut c_void,
    pub(crate) len: usize,
}

/// Product of dims as `usize`, or `None` on overflow or a negative dim.
pub fn element_count(dims: &[i64]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
    })
}

impl InputTensor {
    /// The data as a slice of `T`, after checking the element type (`elem`),
    /// the alignment and the size.
    pub fn slice<T>(&self, name: &str, elem: i32) -> Result<&[T]> {
        if self.ts.elem != elem {
            return Err(Error::invalid(format!(
                "{name}: element type {} is not the expected {}",
                elem::name(self.ts.elem),
                elem::name(elem)
            )));
        }
        let len = element_count(&self.ts.dims)
            .ok_or_else(|| Error::invalid(format!("{name}: size overflows")))?;
        if len == 0 {
            return Ok(&[]);
        }
        if self.data.is_null() || (self.data as usize) % core::mem::align_of::<T>() != 0 {
            return Err(Error::fail(format!(
                "{name}: ORT gave a null or misaligned buffer"
            )));
        }
        // SAFETY: ORT owns a buffer of `len` elements of this element type for
        // the duration of the compute call, and `T` matches it (checked above,
        // and every caller pairs `elem` with the matching Rust type).
        Ok(unsafe { core::slice::from_raw_parts(self.data.cast::<T>(), len) })
    }

    /// The raw bytes of a one-byte-per-element tensor (bool).
    pub fn bytes(&self, name: &str) -> Result<&[u8]> {
        if self.ts.elem != elem::BOOL {
            return Err(Error::invalid(format!(
                "{name}: expected bool, got {}",
                elem::name(self.ts.elem)
            )));
        }
        self.slice_unchecked_u8(name)
    }

    fn slice_unchecked_u8(&self, name: &str) -> Result<&[u8]> {
        let len = element_count(&self.ts.dims)
            .ok_or_else(|| Error::invalid(format!("{name}: size overflows")))?;
        if len == 0 {
            return Ok(&[]);
        }
        if self.data.is_null() {
            return Err(Error::fail(format!("{name}: ORT gave a null buffer")));
        }
        // SAFETY: a bool tensor is one byte per element; read as u8 (any bit
        // pattern is a valid u8), `len` elements live for the compute call.
        Ok(unsafe { core::slice::from_raw_parts(self.data.cast::<u8>(), len) })
    }
}

impl OutputTensor {
    /// The output buffer as `&mut [T]`.
    ///
    /// # Safety
    /// `T` must be the element type the output was declared with.
    pub unsafe fn slice_mut<T>(&mut self) -> &mut [T] {
        if self.len == 0 || self.data.is_null() {
            return &mut [];
        }
        // SAFETY: ORT allocated `len` elements of the output's type (caller's
        // contract) aligned for it; we hold the only reference.
        unsafe { core::slice::from_raw_parts_mut(self.data.cast::<T>(), self.len) }
    }
}
