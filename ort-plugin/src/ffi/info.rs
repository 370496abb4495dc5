//! Read-only access to a node's attributes at kernel creation
//! (`CreateKernelV2`), where an op reads them once.

use core::ffi::CStr;

use ort_sys::{OrtApi, OrtKernelInfo};

use super::check;

/// Read-only view of the attributes of a node, at kernel creation.
#[derive(Debug)]
pub struct KernelInfo {
    api: &'static OrtApi,
    info: *const OrtKernelInfo,
}

impl KernelInfo {
    /// Wrap a kernel info pointer that ORT passed to `CreateKernelV2`.
    ///
    /// # Safety
    /// `info` must be valid for the lifetime of the returned value.
    pub unsafe fn new(api: &'static OrtApi, info: *const OrtKernelInfo) -> Self {
        Self { api, info }
    }

    /// An int attribute, or `None` when the node does not set it.
    pub fn attr_i64(&self, name: &CStr) -> Option<i64> {
        let mut out = 0i64;
        // SAFETY: `info` is valid (constructor contract); `out` is a live i64.
        let st =
            unsafe { (self.api.KernelInfoGetAttribute_int64)(self.info, name.as_ptr(), &mut out) };
        check(self.api, st).ok().map(|()| out)
    }

    /// A float attribute, or `None` when the node does not set it.
    pub fn attr_f32(&self, name: &CStr) -> Option<f32> {
        let mut out = 0f32;
        // SAFETY: as in `attr_i64`.
        let st =
            unsafe { (self.api.KernelInfoGetAttribute_float)(self.info, name.as_ptr(), &mut out) };
        check(self.api, st).ok().map(|()| out)
    }

    /// A string attribute, or `None` when the node does not set it.
    pub fn attr_string(&self, name: &CStr) -> Option<String> {
        let mut size = 0usize;
        // SAFETY: `info` is valid; with a null `out` ORT only writes the
        // needed size (including the NUL) into `size`.
        let st = unsafe {
            (self.api.KernelInfoGetAttribute_string)(
                self.info,
                name.as_ptr(),
                core::ptr::null_mut(),
                &mut size,
            )
        };
        check(self.api, st).ok()?;
        let mut buf = vec![0u8; size.max(1)];
        let mut len = buf.len();
        // SAFETY: `buf` holds `len` bytes, the size ORT asked for.
        let st = unsafe {
            (self.api.KernelInfoGetAttribute_string)(
                self.info,
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        };
        check(self.api, st).ok()?;
        let text = CStr::from_bytes_until_nul(&buf).ok()?;
        Some(text.to_string_lossy().into_owned())
    }
}
