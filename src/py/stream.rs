//! Verifying one pickle read from a stream: delimit it as it is read, judge it, and
//! hand back exactly the judged bytes.

use super::error::{GuardError, Result};
use super::journal::{AUDIT_LOG, JOURNAL};
use super::judge::{allow_whole_input_by_hash, judge};
use super::scopes::PROCESS_LAYERS;
use super::source::{
    buffers_for_identity, read_whole_file, seek_to, trusted_readinto, PyFileSource, Rewind,
    TrustedFile, TrustedKind,
};
use crate::gate::WholeInputVerdict;
use crate::identity::KnownDigests;
use crate::load::Load;
use crate::reader::{self, ReadError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// Where a pickle is read from: the `read` and `readline` the C unpickler would
/// call, and the file they belong to when it is known.
pub(super) struct Stream<'a, 'py> {
    pub(super) read: &'a Bound<'py, PyAny>,
    pub(super) readline: &'a Bound<'py, PyAny>,
    pub(super) file: Option<&'a Bound<'py, PyAny>>,
}

/// What one load brings besides its input.
pub(super) struct LoadRequest<'a, 'py> {
    /// The caller's out-of-band buffers (an iterable), if any.
    pub(super) buffers: Option<Bound<'py, PyAny>>,
    /// The call-site pin of `pickleguard.load(file, sha256)`, as the caller wrote it.
    pub(super) pin: Option<&'a str>,
    /// The file's name, for the journal and the audit log (see `source_name`).
    pub(super) source_name: Option<String>,
}

/// Whether a whole file may be allowed at once by the hash of all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WholeFile {
    /// `pickle.load` and the C `Unpickler.load`: a file of io's own types, read
    /// from its start, may be; its position is put back after the load (see
    /// `Rewind`).
    MayHash,
    /// One pickle at a time, always delimited: the pure-Python unpickler classes,
    /// whose reading the gate does not own.
    PickleByPickle,
}

/// One pickle verified from a stream.
pub(super) struct VerifiedPickle<'py> {
    /// The judged bytes (empty at end of stream, so the real unpickler raises its
    /// own EOFError).
    pub(super) data: Bound<'py, VerifiedBytes>,
    /// The buffers iterator to pass with them.
    pub(super) buffers: Option<Bound<'py, PyAny>>,
    /// Whether the pickle names globals (true when not known).
    pub(super) uses_globals: bool,
    /// Set when the whole file was read: where to put its position after the load.
    pub(super) rewind: Option<Rewind<'py>>,
}

impl<'py> VerifiedPickle<'py> {
    fn new(
        py: Python<'py>,
        data: Vec<u8>,
        buffers: Option<Bound<'py, PyAny>>,
        uses_globals: bool,
    ) -> Result<Self> {
        Ok(VerifiedPickle {
            data: Bound::new(py, VerifiedBytes { data })?,
            buffers,
            uses_globals,
            rewind: None,
        })
    }
}

/// A pickle read and delimited, not yet judged.
pub(super) struct DelimitedPickle {
    pub(super) bytes: Vec<u8>,
    pub(super) extent: reader::Extent,
}

/// Verify one pickle read from `stream` for `request`: the whole file first when
/// `whole` allows it and nothing else (a pin, buffers) is asked, else the pickle
/// delimited as it is read.
pub(super) fn verify_from_stream<'py>(
    py: Python<'py>,
    stream: &Stream<'_, 'py>,
    request: LoadRequest<'_, 'py>,
    whole: WholeFile,
) -> Result<VerifiedPickle<'py>> {
    let readinto = stream.file.and_then(|f| trusted_readinto(f, stream.read));
    // A buffered reader's buffer, looked at once: it says whether a pickle is
    // large (its first frame) or lies whole in it.
    let head = readinto
        .as_ref()
        .filter(|t| matches!(t.kind, TrustedKind::Buffered))
        .and_then(|t| peek_buffer(&t.file));
    let plain = request.buffers.is_none() && request.pin.is_none();
    if let (WholeFile::MayHash, true, Some(trusted)) = (whole, plain, &readinto) {
        if let Some(verified) = verify_whole_file(py, trusted, head.as_ref(), &request)? {
            return Ok(verified);
        }
    }
    match read_one_pickle(py, stream, readinto, head.as_ref())? {
        Some(pickle) => judge_delimited(py, pickle, request),
        None => VerifiedPickle::new(py, Vec::new(), request.buffers, false),
    }
}

/// The whole of a file of io's own types at its start, allowed by its hash, or its
/// first pickle delimited in the bytes read; `None`, with the file back at its
/// start, when neither applies.
fn verify_whole_file<'py>(
    py: Python<'py>,
    trusted: &TrustedFile<'py>,
    head: Option<&Bound<'py, PyBytes>>,
    request: &LoadRequest<'_, 'py>,
) -> Result<Option<VerifiedPickle<'py>>> {
    let Some(data) = read_whole_file(trusted, head)? else {
        return Ok(None);
    };
    match allow_whole_input_by_hash(py, &data)? {
        WholeInputVerdict::Allowed => {
            let len = data.len();
            let mut verified = VerifiedPickle::new(py, data, None, true)?;
            verified.rewind = Some(Rewind {
                file: trusted.file.clone(),
                len,
            });
            Ok(Some(verified))
        }
        WholeInputVerdict::Delimit(known) => {
            verify_first_pickle_in(py, data, known, &trusted.file, request)
        }
    }
}

/// Delimit and judge the first pickle of `data`, the whole contents of `file`, and
/// leave the file right after it. Delimited in the bytes in hand, never by a
/// second read of the file: what is judged and run must be what was read.
/// `known` holds digests of all of `data`.
fn verify_first_pickle_in<'py>(
    py: Python<'py>,
    mut data: Vec<u8>,
    known: KnownDigests,
    file: &Bound<'py, PyAny>,
    request: &LoadRequest<'_, 'py>,
) -> Result<Option<VerifiedPickle<'py>>> {
    let Ok(extent) = reader::delimit(&data) else {
        // Not one whole pickle: read it the ordinary way, which raises what plain
        // pickle raises, judging what it reads afresh.
        seek_to(file, 0)?;
        return Ok(None);
    };
    seek_to(file, extent.len)?;
    let known = if extent.len == data.len() {
        known
    } else {
        KnownDigests::NONE
    };
    data.truncate(extent.len);
    let load = Load::pickle(&data, &[], request.source_name.clone()).knowing(known);
    judge(py, &load, request.pin)?;
    let buffers = request.buffers.clone();
    VerifiedPickle::new(py, data, buffers, extent.uses_globals).map(Some)
}

/// Read one pickle from `stream`, delimiting it as it is read: from a buffered
/// reader's buffer when it lies whole there, else opcode by opcode. `None` at the
/// end of the stream; input that cannot be delimited is `Undelimited`.
fn read_one_pickle<'py>(
    py: Python<'py>,
    stream: &Stream<'_, 'py>,
    readinto: Option<TrustedFile<'py>>,
    head: Option<&Bound<'py, PyBytes>>,
) -> Result<Option<DelimitedPickle>> {
    if let Some(head) = head {
        if let Some(pickle) = read_buffered_pickle(head, stream.read)? {
            return Ok(Some(pickle));
        }
    }
    let mut bytes = Vec::new();
    let mut source = PyFileSource {
        read: stream.read,
        readline: stream.readline,
        readinto,
    };
    match reader::read_one_into(&mut source, &mut bytes) {
        Ok(extent) => Ok(Some(DelimitedPickle { bytes, extent })),
        Err(ReadError::Empty) => Ok(None),
        Err(ReadError::Source(e)) => Err(e.into()),
        Err(error) => Err(GuardError::Undelimited {
            data: PyBytes::new(py, &bytes).unbind(),
            error: GuardError::Read(error).into(),
        }),
    }
}

/// Judge a delimited pickle with the out-of-band buffers it consumes.
fn judge_delimited<'py>(
    py: Python<'py>,
    pickle: DelimitedPickle,
    request: LoadRequest<'_, 'py>,
) -> Result<VerifiedPickle<'py>> {
    let extent = pickle.extent;
    let taken = buffers_for_identity(py, extent.out_of_band_buffers, request.buffers)?;
    let slices = taken.slices();
    judge(
        py,
        &Load::pickle(&pickle.bytes, &slices, request.source_name),
        request.pin,
    )?;
    VerifiedPickle::new(py, pickle.bytes, taken.feed, extent.uses_globals)
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
) -> Result<Option<DelimitedPickle>> {
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
    Ok(Some(DelimitedPickle {
        bytes: data.to_vec(),
        extent,
    }))
}

/// The bytes of a pickle verified from a stream, kept as read (no copy into a
/// `bytes` object) and lent read-only to the unpickler that loads them: through
/// the private `Feed`, or a read-only view released when the load returns (see
/// `with_view`). Nothing can change them: no method mutates them and no writable
/// view is handed out.
#[pyclass(frozen, module = "pickleguard._core")]
pub(super) struct VerifiedBytes {
    pub(super) data: Vec<u8>,
}

#[pymethods]
impl VerifiedBytes {
    pub(super) fn __len__(&self) -> usize {
        self.data.len()
    }
}

impl VerifiedBytes {
    /// Run `f` on a read-only memoryview of the bytes, released afterwards. (The
    /// stable ABI lets an extension type export buffers only from 3.11.) Should
    /// anything still hold an export of the view then, the bytes are kept alive
    /// for the life of the process rather than freed under it.
    pub(super) fn with_view<'py, R>(
        slf: &Bound<'py, Self>,
        f: impl FnOnce(&Bound<'py, PyAny>) -> R,
    ) -> Result<R> {
        let py = slf.py();
        let view = super::feed::read_only_view(py, &slf.get().data)?;
        let result = f(&view);
        if view.call_method0(pyo3::intern!(py, "release")).is_err() {
            std::mem::forget(slf.clone().unbind());
            std::mem::forget(view.unbind());
        }
        Ok(result)
    }
}

/// Verify the next pickle of a stream read pickle by pickle (never a whole file at
/// once): `file` is the object `read` belongs to.
pub(super) fn verify_pickle_by_pickle<'py>(
    py: Python<'py>,
    read: &Bound<'py, PyAny>,
    readline: &Bound<'py, PyAny>,
    file: Option<&Bound<'py, PyAny>>,
    buffers: Option<Bound<'py, PyAny>>,
    pin: Option<&str>,
) -> Result<VerifiedPickle<'py>> {
    verify_next_pickle(
        py,
        read,
        readline,
        file,
        buffers,
        pin,
        WholeFile::PickleByPickle,
    )
}

/// Verify the next pickle of a stream, the whole file first where `whole` allows.
pub(super) fn verify_next_pickle<'py>(
    py: Python<'py>,
    read: &Bound<'py, PyAny>,
    readline: &Bound<'py, PyAny>,
    file: Option<&Bound<'py, PyAny>>,
    buffers: Option<Bound<'py, PyAny>>,
    pin: Option<&str>,
    whole: WholeFile,
) -> Result<VerifiedPickle<'py>> {
    let stream = Stream {
        read,
        readline,
        file,
    };
    let request = LoadRequest {
        buffers,
        pin,
        source_name: file.and_then(source_name),
    };
    verify_from_stream(py, &stream, request, whole)
}

/// `verify_from_stream` for the Python-level unpickler classes: raises
/// `_UndelimitedPickle` for input that cannot be delimited, which the caller explains.
#[pyfunction]
#[pyo3(signature = (read, readline, buffers=None, sha256=None, file=None))]
pub(super) fn verify_stream<'py>(
    py: Python<'py>,
    read: &Bound<'py, PyAny>,
    readline: &Bound<'py, PyAny>,
    buffers: Option<Bound<'py, PyAny>>,
    sha256: Option<&str>,
    file: Option<Bound<'py, PyAny>>,
) -> Result<(Bound<'py, PyBytes>, Option<Bound<'py, PyAny>>)> {
    let verified = verify_pickle_by_pickle(py, read, readline, file.as_ref(), buffers, sha256)?;
    let data = PyBytes::new(py, &verified.data.get().data);
    Ok((data, verified.buffers))
}

/// The name of the file a pickle is read from, for the journal, the audit log and a
/// denial that says the file changed since it was pinned (looked up only when one
/// of them can use it).
pub(super) fn source_name(file: &Bound<'_, PyAny>) -> Option<String> {
    let wanted = JOURNAL.get().is_some()
        || AUDIT_LOG.get().is_some()
        || PROCESS_LAYERS
            .read()
            .iter()
            .any(|l| l.rules.manifest().is_some_and(|m| m.names_sources()));
    if !wanted {
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
