//! The private file the real unpickler reads: verified bytes only, settable from
//! Rust only, so no Python-visible function runs an original unpickler on bytes
//! that were not verified.

use super::error::{GuardError, Result};
use super::stream::VerifiedBytes;
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// A private file holding only verified bytes: the input of the real unpickler.
/// Its contents can be set from Rust only. It holds the verified `bytes` object
/// itself, not a copy: a 1 GB pickle is not held twice while it loads.
#[pyclass(frozen, module = "pickleguard._core")]
pub(super) struct Feed {
    pub(super) state: Mutex<FeedState>,
}

/// A feed's contents (none before the first load and after each) and how much of
/// them has been read.
#[derive(Default)]
pub(super) struct FeedState {
    pub(super) data: Option<FeedData>,
    pub(super) position: usize,
    /// Where the last `read` or `readline` began and ended: what the C unpickler
    /// holds in its own buffer (`readinto` writes past it, into the caller's).
    pub(super) last_read: (usize, usize),
}

/// What a feed holds: verified bytes that no one can change.
pub(super) enum FeedData {
    Bytes(Py<PyBytes>),
    Verified(Py<VerifiedBytes>),
}

impl FeedData {
    pub(super) fn as_bytes<'a>(&'a self, py: Python<'a>) -> &'a [u8] {
        match self {
            FeedData::Bytes(b) => b.bind(py).as_bytes(),
            FeedData::Verified(v) => &v.get().data,
        }
    }
}

impl Feed {
    /// The unread part of the contents, and the position, under the lock. `buffered`:
    /// whether the caller keeps what it takes in its own buffer.
    pub(super) fn with_rest<R>(
        &self,
        py: Python<'_>,
        buffered: bool,
        take: impl FnOnce(&[u8]) -> (usize, R),
    ) -> R {
        let mut state = self.state.lock();
        let FeedState {
            data,
            position,
            last_read,
        } = &mut *state;
        let all = data.as_ref().map_or(&[][..], |d| d.as_bytes(py));
        let (consumed, result) = take(&all[*position..]);
        if buffered {
            *last_read = (*position, *position + consumed);
        }
        *position += consumed;
        result
    }
}

#[pymethods]
impl Feed {
    #[new]
    pub(super) fn new() -> Self {
        Feed {
            state: Mutex::new(FeedState::default()),
        }
    }

    #[pyo3(signature = (n=-1))]
    pub(super) fn read<'py>(&self, py: Python<'py>, n: Option<isize>) -> Bound<'py, PyBytes> {
        self.with_rest(py, true, |rest| {
            let take = match n {
                Some(n) if n >= 0 => (n as usize).min(rest.len()),
                _ => rest.len(),
            };
            (take, PyBytes::new(py, &rest[..take]))
        })
    }

    #[pyo3(signature = (size=-1))]
    pub(super) fn readline<'py>(
        &self,
        py: Python<'py>,
        size: Option<isize>,
    ) -> Bound<'py, PyBytes> {
        self.with_rest(py, true, |rest| {
            let mut take = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |i| i + 1);
            if let Some(size) = size.filter(|&s| s >= 0) {
                take = take.min(size as usize);
            }
            (take, PyBytes::new(py, &rest[..take]))
        })
    }

    /// Copy straight into the caller's buffer: the C unpickler reads large
    /// `bytes` payloads this way, into the object it returns.
    pub(super) fn readinto(&self, py: Python<'_>, buffer: &Bound<'_, PyAny>) -> Result<usize> {
        // Through memoryview, as the stable ABI has no buffer protocol before 3.11.
        let target = py
            .import("builtins")?
            .getattr(pyo3::intern!(py, "memoryview"))?
            .call1((buffer,))?;
        let writable = !target.getattr(pyo3::intern!(py, "readonly"))?.is_truthy()?
            && target
                .getattr(pyo3::intern!(py, "c_contiguous"))?
                .is_truthy()?;
        if !writable {
            target.call_method0(pyo3::intern!(py, "release"))?;
            return Err(GuardError::WrongType(
                "readinto() needs a writable contiguous buffer".into(),
            ));
        }
        let target = target.call_method1(pyo3::intern!(py, "cast"), ("B",))?;
        let capacity: usize = target.getattr(pyo3::intern!(py, "nbytes"))?.extract()?;
        let copied = self.with_rest(py, false, |rest| {
            let take = capacity.min(rest.len());
            // One copy, from a view of the held bytes straight into the caller's
            // buffer (memoryview slice assignment).
            let copied = read_only_view(py, &rest[..take]).and_then(|source| {
                let done =
                    target.set_item(pyo3::types::PySlice::new(py, 0, take as isize, 1), &source);
                source.call_method0(pyo3::intern!(py, "release"))?;
                done.map(|()| take)
            });
            (if copied.is_ok() { take } else { 0 }, copied)
        });
        target.call_method0(pyo3::intern!(py, "release"))?;
        Ok(copied?)
    }
}

/// A read-only memoryview of `data`, which must outlive it: the caller releases it
/// before `data` can go (a released view no longer reaches the memory).
pub(super) fn read_only_view<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    /// CPython's `PyBUF_READ` (Include/pybuffer.h).
    const PY_BUF_READ: std::os::raw::c_int = 0x100;
    let length = isize::try_from(data.len()).map_err(|_| {
        pyo3::exceptions::PyOverflowError::new_err("a view of more than isize::MAX bytes")
    })?;
    // SAFETY: the GIL is held; with PyBUF_READ the view is read-only, so the
    // memory is never written through it. PyMemoryView_FromMemory returns a new
    // reference or NULL with an exception set.
    unsafe {
        let view = pyo3::ffi::PyMemoryView_FromMemory(
            data.as_ptr().cast_mut().cast::<std::os::raw::c_char>(),
            length,
            PY_BUF_READ,
        );
        Bound::from_owned_ptr_or_err(py, view)
    }
}

impl Feed {
    /// Hold `data`, a `bytes` or a `VerifiedBytes` object (anything else is
    /// held as empty: the caller only ever passes those two).
    pub(super) fn set(&self, data: Bound<'_, PyAny>) {
        let held = match data.cast_into::<VerifiedBytes>() {
            Ok(verified) => Some(FeedData::Verified(verified.unbind())),
            Err(e) => e
                .into_inner()
                .cast_into::<PyBytes>()
                .ok()
                .map(|b| FeedData::Bytes(b.unbind())),
        };
        *self.state.lock() = FeedState {
            data: held,
            ..FeedState::default()
        };
    }

    pub(super) fn clear(&self) {
        *self.state.lock() = FeedState::default();
    }

    /// How much of the contents has been read.
    pub(super) fn consumed(&self) -> usize {
        self.state.lock().position
    }

    /// Where the last `read` or `readline` began and ended (see `FeedState`).
    pub(super) fn last_read(&self) -> (usize, usize) {
        self.state.lock().last_read
    }
}
