//! Admitting one pickle from a stream: delimit it as it is read, judge it, and hand
//! back exactly the verified bytes.

use super::error::{GuardError, Result};
use super::journal::{AUDIT_LOG, JOURNAL};
use super::judge::{judge, look_at_whole_input};
use super::source::{
    as_slices, buffers_for_identity, read_whole_file, seek_to, trusted_readinto, PyFileSource,
    Rewind, TrustedKind,
};
use crate::gate::WholeLook;
use crate::identity::KnownDigests;
use crate::load::Load;
use crate::reader::{self, ReadError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// One pickle admitted from a stream.
pub(super) struct AdmittedStream<'py> {
    /// The verified bytes (empty at end of stream, so the real unpickler raises
    /// its own EOFError).
    pub(super) data: Bound<'py, AdmittedBytes>,
    /// The buffers iterator to pass with them.
    pub(super) buffers: Option<Bound<'py, PyAny>>,
    /// Whether the pickle names globals (true when not known).
    pub(super) uses_globals: bool,
    pub(super) rewind: Option<Rewind<'py>>,
}

/// Admit one pickle read from a stream through its `read` and `readline` callables.
/// With `look_whole`, a file of io's own types at its start is first judged whole.
#[allow(clippy::too_many_arguments)]
pub(super) fn admit_stream_inner<'py>(
    py: Python<'py>,
    read: &Bound<'py, PyAny>,
    readline: &Bound<'py, PyAny>,
    file: Option<&Bound<'py, PyAny>>,
    buffers: Option<Bound<'py, PyAny>>,
    sha256: Option<&str>,
    source_name: Option<String>,
    look_whole: bool,
) -> Result<AdmittedStream<'py>> {
    let readinto = file.and_then(|f| trusted_readinto(f, read));
    // A buffered reader's buffer, looked at once: it says whether a pickle is
    // large (its first frame) or lies whole in it.
    let head = readinto
        .as_ref()
        .filter(|t| matches!(t.kind, TrustedKind::Buffered))
        .and_then(|t| peek_buffer(&t.file));
    if let (Some(file), Some(trusted), true, None, None) =
        (file, &readinto, look_whole, &buffers, sha256)
    {
        if let Some(data) = read_whole_file(trusted, head.as_ref())? {
            match look_at_whole_input(py, &data)? {
                WholeLook::Allowed => {
                    let len = data.len();
                    return Ok(AdmittedStream {
                        data: Bound::new(py, AdmittedBytes { data })?,
                        buffers: None,
                        uses_globals: true,
                        rewind: Some(Rewind {
                            file: file.clone(),
                            len,
                        }),
                    });
                }
                WholeLook::Delimit(known) => {
                    // Delimit the bytes in hand, never a second read of the file:
                    // what is judged and run must be what was read.
                    if let Ok(extent) = reader::delimit(&data) {
                        seek_to(file, extent.len)?;
                        let known = if extent.len == data.len() {
                            known
                        } else {
                            KnownDigests::NONE
                        };
                        let mut pickle = data;
                        pickle.truncate(extent.len);
                        let load = Load::pickle(&pickle, &[], source_name).knowing(known);
                        judge(py, &load, sha256)?;
                        return Ok(AdmittedStream {
                            data: Bound::new(py, AdmittedBytes { data: pickle })?,
                            buffers,
                            uses_globals: extent.uses_globals,
                            rewind: None,
                        });
                    }
                    // Not one whole pickle: read it the ordinary way, which raises
                    // what plain pickle raises, judging what it reads afresh.
                    seek_to(file, 0)?;
                }
            }
        }
    }
    let in_buffer = match &head {
        Some(head) => read_buffered_pickle(head, read)?,
        None => None,
    };
    let mut pickle = Vec::new();
    let read_one = match in_buffer {
        Some((data, extent)) => {
            pickle = data;
            Ok(extent)
        }
        None => {
            let mut source = PyFileSource {
                read,
                readline,
                readinto,
            };
            reader::read_one_into(&mut source, &mut pickle)
        }
    };
    let extent = match read_one {
        Ok(extent) => extent,
        Err(ReadError::Empty) => {
            return Ok(AdmittedStream {
                data: Bound::new(py, AdmittedBytes { data: Vec::new() })?,
                buffers,
                uses_globals: false,
                rewind: None,
            });
        }
        Err(ReadError::Source(e)) => return Err(e.into()),
        Err(error) => {
            return Err(GuardError::Undelimited {
                data: PyBytes::new(py, &pickle).unbind(),
                error: GuardError::Read(error).into(),
            })
        }
    };
    let (taken, feed_buffers) = buffers_for_identity(py, extent.out_of_band_buffers, buffers)?;
    let slices = as_slices(&taken);
    judge(py, &Load::pickle(&pickle, &slices, source_name), sha256)?;
    Ok(AdmittedStream {
        data: Bound::new(py, AdmittedBytes { data: pickle })?,
        buffers: feed_buffers,
        uses_globals: extent.uses_globals,
        rewind: None,
    })
}

/// What a buffered reader holds in its buffer, read from the file first if empty
/// (the read a load makes anyway), without moving its position. `None` for a
/// file that cannot say (a closed file, say: the ordinary way then raises what
/// plain pickle raises).
pub(super) fn peek_buffer<'py>(file: &Bound<'py, PyAny>) -> Option<Bound<'py, PyBytes>> {
    let peek = file
        .get_type()
        .getattr(pyo3::intern!(file.py(), "peek"))
        .ok()?;
    peek.call1((file, 1)).ok()?.cast_into::<PyBytes>().ok()
}

/// A pickle that lies whole in a buffered reader's buffer (a small one, usually):
/// delimited there, without a call per opcode argument, then taken with one
/// `read`. `None`, having read nothing, when the buffer holds no whole pickle.
pub(super) fn read_buffered_pickle(
    head: &Bound<'_, PyBytes>,
    read: &Bound<'_, PyAny>,
) -> Result<Option<(Vec<u8>, reader::Extent)>> {
    let Ok(extent) = reader::delimit(head.as_bytes()) else {
        return Ok(None);
    };
    // `read` is the file's own (see `trusted_readinto`); it returns the buffered
    // bytes just peeked at. Those it returns are the ones judged and run.
    let data = read.call1((extent.len,))?;
    let data = data.cast::<PyBytes>().map_err(PyErr::from)?.as_bytes();
    if data != &head.as_bytes()[..extent.len] {
        return Err(GuardError::Guard(
            "the file changed between two reads of the same bytes; nothing was loaded".into(),
        ));
    }
    Ok(Some((data.to_vec(), extent)))
}

/// The bytes of a pickle admitted from a stream, kept as read (no copy into a
/// `bytes` object) and lent read-only, through the buffer protocol, to the
/// unpickler that loads them. Nothing can change them: no method mutates them
/// and no writable view is handed out.
#[pyclass(frozen, module = "pickleguard._core")]
pub(super) struct AdmittedBytes {
    pub(super) data: Vec<u8>,
}

#[pymethods]
impl AdmittedBytes {
    /// # Safety
    /// CPython calls this with a valid `view` to fill.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: std::os::raw::c_int,
    ) -> Result<()> {
        let data = &slf.get().data;
        // SAFETY: `view` is valid (CPython's contract for bf_getbuffer). The memory
        // belongs to `slf`, which the filled view holds a reference to until it is
        // released; `readonly = 1` makes a request for a writable view fail.
        let status = unsafe {
            pyo3::ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                data.as_ptr().cast_mut().cast::<std::os::raw::c_void>(),
                data.len() as pyo3::ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if status == -1 {
            return Err(PyErr::fetch(slf.py()).into());
        }
        Ok(())
    }

    pub(super) fn __len__(&self) -> usize {
        self.data.len()
    }
}

/// `admit_stream` for the Python-level unpickler classes: raises `_UndelimitedPickle`
/// for input that cannot be delimited, which the caller explains.
#[pyfunction]
#[pyo3(signature = (read, readline, buffers=None, sha256=None, file=None))]
pub(super) fn admit_stream<'py>(
    py: Python<'py>,
    read: &Bound<'py, PyAny>,
    readline: &Bound<'py, PyAny>,
    buffers: Option<Bound<'py, PyAny>>,
    sha256: Option<&str>,
    file: Option<Bound<'py, PyAny>>,
) -> Result<(Bound<'py, PyBytes>, Option<Bound<'py, PyAny>>)> {
    let name = file.as_ref().and_then(source_name);
    let admitted = admit_stream_inner(
        py,
        read,
        readline,
        file.as_ref(),
        buffers,
        sha256,
        name,
        false,
    )?;
    let data = PyBytes::new(py, &admitted.data.get().data);
    Ok((data, admitted.buffers))
}

/// The name of the file a pickle is read from, for the journal and the audit log
/// only (looked up only when one of them is on).
pub(super) fn source_name(file: &Bound<'_, PyAny>) -> Option<String> {
    if JOURNAL.get().is_none() && AUDIT_LOG.get().is_none() {
        return None;
    }
    let name = file.getattr(pyo3::intern!(file.py(), "name")).ok()?;
    let name = py_fspath(&name).unwrap_or(name);
    name.extract::<String>().ok()
}

pub(super) fn py_fspath<'py>(obj: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
    obj.py()
        .import("os")
        .ok()?
        .call_method1("fspath", (obj,))
        .ok()
}
