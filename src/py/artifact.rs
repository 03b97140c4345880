//! Verified copies of artifact files (see `crate::verified`), made with the GIL
//! released and handed to Python as a `VerifiedFile`: the path of its sealed memory,
//! which a loader maps or opens, and the bytes `verify_artifact` judges.

use super::error::{GuardError, Result};
use super::journal::JOURNAL;
use super::scopes::PROCESS_LAYERS;
use crate::manifest::Kind;
use crate::policy::first_algorithms;
use crate::verified::{copy_verified, CopyError, VerifiedCopy};
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::sync::Arc;

/// The verified copy of one file. Its memory is freed when it is closed (or
/// collected) and nothing maps it any longer: a loader's own mappings outlive it.
#[pyclass(frozen, module = "pickleguard._core")]
pub(super) struct VerifiedFile {
    pub(super) copy: Mutex<Option<Arc<VerifiedCopy>>>,
}

impl VerifiedFile {
    pub(super) fn get(&self) -> Result<Arc<VerifiedCopy>> {
        self.copy.lock().clone().ok_or_else(|| {
            GuardError::Guard("this verified copy was closed; verify the file again".into())
        })
    }
}

#[pymethods]
impl VerifiedFile {
    /// `/proc/self/fd/N` of the sealed memory: opening or mapping it gives exactly
    /// the verified bytes, for as long as this copy is open.
    #[getter]
    fn path(&self) -> Result<String> {
        Ok(format!("/proc/self/fd/{}", self.get()?.raw_fd()))
    }

    fn __len__(&self) -> Result<usize> {
        Ok(self.get()?.bytes().len())
    }

    /// The first bytes of the copy (a loader's magic number), without opening it.
    fn head<'py>(&self, py: Python<'py>, size: usize) -> Result<Bound<'py, PyBytes>> {
        let copy = self.get()?;
        let bytes = copy.bytes();
        Ok(PyBytes::new(py, &bytes[..size.min(bytes.len())]))
    }

    /// Close this handle on the copy: its memory goes once the loader's mappings
    /// and an admitted artifact's block no longer hold it.
    fn close(&self) {
        self.copy.lock().take();
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close();
        false
    }

    fn __repr__(&self) -> String {
        match self.copy.lock().as_ref() {
            Some(copy) => format!(
                "<pickleguard verified copy of {} bytes at /proc/self/fd/{}>",
                copy.bytes().len(),
                copy.raw_fd()
            ),
            None => "<pickleguard verified copy (closed)>".into(),
        }
    }
}

/// Copy the file open at `fd` (from its current offset to its end) into sealed
/// memory, hashing it on the way with the digests the layers in force look an
/// artifact up by (and `record`'s), with the GIL released. `None` where this
/// system has no sealed memory (or no `/proc/self/fd`): the caller reads the file
/// into memory of its own instead. Raises OSError if reading fails.
#[pyfunction]
pub(super) fn verified_copy(py: Python<'_>, fd: i32) -> Result<Option<VerifiedFile>> {
    let file = duplicate(fd)?;
    let layers = PROCESS_LAYERS.read().clone();
    let mut algorithms = py.detach(|| first_algorithms(&layers, Kind::Artifact));
    if let Some(journal) = JOURNAL.get() {
        if !algorithms.contains(&journal.algorithm) {
            algorithms.push(journal.algorithm);
        }
    }
    let copy = match py.detach(|| copy_verified(file, &algorithms)) {
        Ok(copy) => copy,
        Err(CopyError::Unsupported(_)) => return Ok(None),
        Err(CopyError::Io(error)) => return Err(GuardError::Py(error.into())),
    };
    if std::fs::metadata(format!("/proc/self/fd/{}", copy.raw_fd())).is_err() {
        return Ok(None); // no /proc: a loader could not open the copy by name
    }
    Ok(Some(VerifiedFile {
        copy: Mutex::new(Some(Arc::new(copy))),
    }))
}

/// A file of our own on the open file description of `fd`: the caller's file
/// object may be closed by another thread while the GIL is released.
fn duplicate(fd: i32) -> Result<std::fs::File> {
    use std::os::fd::{BorrowedFd, OwnedFd};
    if fd < 0 {
        return Err(GuardError::BadArgument(format!(
            "not a file descriptor: {fd}"
        )));
    }
    // SAFETY: `fd` is only borrowed for the duplication below, while the caller's
    // file object (holding it open) is alive and the GIL is held.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let owned: OwnedFd = borrowed
        .try_clone_to_owned()
        .map_err(|e| GuardError::Py(e.into()))?;
    Ok(std::fs::File::from(owned))
}

/// Whether `file`'s descriptor is open on the sealed memory of `copy`: any such
/// file reads only the verified bytes, whoever opened it.
pub(super) fn reads_copy(file: &Bound<'_, PyAny>, copy: &VerifiedCopy) -> bool {
    let Ok(fd) = file
        .call_method0(pyo3::intern!(file.py(), "fileno"))
        .and_then(|f| f.extract::<i32>())
    else {
        return false;
    };
    same_inode(fd, copy.raw_fd())
}

fn same_inode(a: i32, b: i32) -> bool {
    fn id(fd: i32) -> Option<(libc::dev_t, libc::ino_t)> {
        // SAFETY: fstat fills the zeroed struct it is given; the result is checked.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat of a descriptor number only reads it; a closed one fails.
        (unsafe { libc::fstat(fd, &mut stat) } == 0).then_some((stat.st_dev, stat.st_ino))
    }
    matches!((id(a), id(b)), (Some(x), Some(y)) if x == y)
}
