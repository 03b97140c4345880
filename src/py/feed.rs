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
    /// The unread part of the contents, and the position, under the lock.
    pub(super) fn with_rest<R>(&self, py: Python<'_>, take: impl FnOnce(&[u8]) -> (usize, R)) -> R {
        let mut state = self.state.lock();
        let FeedState { data, position } = &mut *state;
        let all = data.as_ref().map_or(&[][..], |d| d.as_bytes(py));
        let (consumed, result) = take(&all[*position..]);
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
        self.with_rest(py, |rest| {
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
        self.with_rest(py, |rest| {
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
        let target = pyo3::buffer::PyBuffer::<u8>::get(buffer)?;
        if target.readonly() || !target.is_c_contiguous() {
            return Err(GuardError::WrongType(
                "readinto() needs a writable contiguous buffer".into(),
            ));
        }
        let capacity = target.len_bytes();
        Ok(self.with_rest(py, |rest| {
            let take = capacity.min(rest.len());
            // SAFETY: `target` is a writable, C-contiguous buffer of `u8` items
            // holding `capacity >= take` bytes, kept alive (and its exporter
            // locked) by the PyBuffer; `rest` is memory of an immutable bytes
            // object, so the two cannot overlap. The GIL is held throughout, so
            // no Python code touches the buffer meanwhile.
            unsafe {
                std::ptr::copy_nonoverlapping(rest.as_ptr(), target.buf_ptr().cast::<u8>(), take);
            }
            (take, take)
        }))
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
            position: 0,
        };
    }

    pub(super) fn clear(&self) {
        *self.state.lock() = FeedState::default();
    }

    /// How much of the contents has been read.
    pub(super) fn consumed(&self) -> usize {
        self.state.lock().position
    }
}
