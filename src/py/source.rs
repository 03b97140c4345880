//! Reading pickle input from Python objects: snapshots of bytes-like data,
//! out-of-band buffers, and file objects read exactly as the C unpickler reads them.

use super::entry::VerifiedInput;
use super::error::{GuardError, Result};
use super::judge::{allow_whole_input_by_hash, judge, WHOLE_HASH_FROM};
use crate::gate::WholeInputVerdict;
use crate::identity::KnownDigests;
use crate::load::Load;
use crate::reader::{self, ReadError, Source};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList, PyMemoryView, PySlice, PyString};

pub(super) fn snapshot_bytes<'py>(data: &Bound<'py, PyAny>) -> Result<Bound<'py, PyBytes>> {
    if let Ok(bytes) = data.cast::<PyBytes>() {
        return Ok(bytes.clone());
    }
    match PyMemoryView::from(data) {
        Ok(view) => Ok(view
            .call_method0("tobytes")?
            .cast_into::<PyBytes>()
            .map_err(PyErr::from)?),
        Err(_) => Err(GuardError::WrongType(format!(
            "a bytes-like object is required, not '{}'",
            data.get_type().name()?
        ))),
    }
}

/// The out-of-band buffers that are part of a pickle's identity, and the iterator
/// to hand the unpickler in their place.
pub(super) struct OutOfBandBuffers<'py> {
    /// Copies of the buffers the pickle consumes, so no other thread can change
    /// them while they are hashed.
    pub(super) copies: Vec<Bound<'py, PyBytes>>,
    /// The same objects, then whatever the caller had left; `None` when the
    /// caller passed no buffers.
    pub(super) feed: Option<Bound<'py, PyAny>>,
}

impl OutOfBandBuffers<'_> {
    pub(super) fn slices(&self) -> Vec<&[u8]> {
        self.copies.iter().map(|b| b.as_bytes()).collect()
    }
}

/// Take the `count` out-of-band buffers a pickle will consume from the caller's
/// `buffers`.
pub(super) fn take_buffers<'py>(
    py: Python<'py>,
    buffers: &Bound<'py, PyAny>,
    count: usize,
) -> Result<OutOfBandBuffers<'py>> {
    let iterator = buffers.try_iter()?;
    let taken = PyList::empty(py);
    let mut copies = Vec::with_capacity(count);
    for _ in 0..count {
        match iterator.clone().next() {
            Some(item) => {
                let item = item?;
                copies.push(snapshot_bytes(&item)?);
                taken.append(item)?;
            }
            None => break,
        }
    }
    let chained = py
        .import("itertools")?
        .getattr("chain")?
        .call1((taken, iterator))?;
    Ok(OutOfBandBuffers {
        copies,
        feed: Some(chained),
    })
}

/// The buffers a pickle that consumes `out_of_band` of them takes from the caller's.
pub(super) fn buffers_for_identity<'py>(
    py: Python<'py>,
    out_of_band: usize,
    buffers: Option<Bound<'py, PyAny>>,
) -> Result<OutOfBandBuffers<'py>> {
    match buffers {
        Some(buffers) if out_of_band > 0 => take_buffers(py, &buffers, out_of_band),
        feed => Ok(OutOfBandBuffers {
            copies: Vec::new(),
            feed,
        }),
    }
}

/// Verify `data` for `loads`: what to pass to the real unpickler is exactly the
/// judged bytes, with the buffers iterator to pass with them.
pub(super) fn verify_from_bytes<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    buffers: Option<Bound<'py, PyAny>>,
    pin: Option<&str>,
) -> Result<VerifiedInput<'py>> {
    let bytes = snapshot_bytes(data)?;
    let raw = bytes.as_bytes();
    let mut whole = KnownDigests::NONE;
    if raw.len() >= WHOLE_HASH_FROM && buffers.is_none() && pin.is_none() {
        match allow_whole_input_by_hash(py, raw)? {
            WholeInputVerdict::Allowed => {
                return Ok(VerifiedInput::new(bytes.into_any(), None, true))
            }
            WholeInputVerdict::Delimit(known) => whole = known,
        }
    }
    let extent = match reader::delimit(raw) {
        Ok(extent) => extent,
        // Nothing to run: let the real unpickler raise its own EOFError.
        Err(ReadError::Empty) => return Ok(VerifiedInput::new(bytes.into_any(), buffers, false)),
        Err(error) => {
            return Err(GuardError::Undelimited {
                data: bytes.unbind(),
                error: GuardError::Read(error.map_source(|never| match never {})).into(),
            })
        }
    };
    let pickle = &raw[..extent.len];
    let taken = buffers_for_identity(py, extent.out_of_band_buffers, buffers)?;
    let slices = taken.slices();
    if extent.len < raw.len() || !slices.is_empty() {
        whole = KnownDigests::NONE;
    }
    judge(py, &Load::pickle(pickle, &slices, None).knowing(whole), pin)?;
    let data = if extent.len == raw.len() {
        bytes.into_any()
    } else {
        PyMemoryView::from(bytes.as_any())?.get_item(PySlice::new(py, 0, extent.len as isize, 1))?
    };
    Ok(VerifiedInput::new(data, taken.feed, extent.uses_globals))
}

/// A Python file's `read` and `readline`, called exactly as the C unpickler calls
/// them on a file without `peek`.
pub(super) struct PyFileSource<'a, 'py> {
    pub(super) read: &'a Bound<'py, PyAny>,
    pub(super) readline: &'a Bound<'py, PyAny>,
    /// For a file of one of io's own C types, to read large runs straight into
    /// the buffer (see `trusted_readinto`).
    pub(super) readinto: Option<TrustedFile<'py>>,
}

/// Reads of at least this many bytes go through `readinto` when it is trusted.
pub(super) const READINTO_FROM: usize = 1 << 16;

/// `type(file).readinto` when `file` is exactly an `io.FileIO`, an `io.BytesIO`, or
/// an `io.BufferedReader` over exactly an `io.FileIO` (what `open(path, "rb")`
/// returns), and its `read` is its own. Their C `readinto` writes into the buffer
/// it is given and keeps no reference to it, so it may write into memory this
/// module owns (and will hash). Any other file is read with `read` alone: its
/// `readinto` (or, for a BufferedReader, its raw stream's) could keep the view
/// and change the bytes after they were judged.
pub(super) fn trusted_readinto<'py>(
    file: &Bound<'py, PyAny>,
    read: &Bound<'py, PyAny>,
) -> Option<TrustedFile<'py>> {
    let py = file.py();
    let [file_io, bytes_io, buffered_reader] = io_types(py).ok()?;
    let file_type = file.get_type();
    let kind = if file_type.is(file_io) {
        TrustedKind::Raw
    } else if file_type.is(bytes_io) {
        TrustedKind::InMemory
    } else if file_type.is(buffered_reader)
        && file
            .getattr(pyo3::intern!(py, "raw"))
            .is_ok_and(|raw| raw.get_type().is(file_io))
    {
        TrustedKind::Buffered
    } else {
        return None;
    };
    let own_read = read.is_instance_of::<pyo3::types::PyCFunction>()
        && read
            .getattr(pyo3::intern!(py, "__self__"))
            .is_ok_and(|s| s.is(file))
        && read
            .getattr(pyo3::intern!(py, "__name__"))
            .is_ok_and(|n| n.eq(pyo3::intern!(py, "read")).unwrap_or(false));
    if !own_read {
        return None;
    }
    Some(TrustedFile {
        readinto: file_type.getattr(pyo3::intern!(py, "readinto")).ok()?,
        file: file.clone(),
        kind,
    })
}

pub(super) static IO_TYPES: PyOnceLock<[Py<PyAny>; 3]> = PyOnceLock::new();

/// `io.FileIO`, `io.BytesIO` and `io.BufferedReader`, looked up once.
pub(super) fn io_types(py: Python<'_>) -> Result<[&Bound<'_, PyAny>; 3]> {
    let types = IO_TYPES.get_or_try_init(py, || -> Result<[Py<PyAny>; 3]> {
        let io = py.import("io")?;
        Ok([
            io.getattr("FileIO")?.unbind(),
            io.getattr("BytesIO")?.unbind(),
            io.getattr("BufferedReader")?.unbind(),
        ])
    })?;
    Ok([types[0].bind(py), types[1].bind(py), types[2].bind(py)])
}

/// A file of one of io's own types, and its type's `readinto`.
pub(super) struct TrustedFile<'py> {
    pub(super) readinto: Bound<'py, PyAny>,
    pub(super) file: Bound<'py, PyAny>,
    pub(super) kind: TrustedKind,
}

pub(super) enum TrustedKind {
    /// `io.FileIO`.
    Raw,
    /// `io.BufferedReader` over an `io.FileIO`.
    Buffered,
    /// `io.BytesIO`.
    InMemory,
}

/// CPython's `PyBUF_WRITE` (Include/pybuffer.h), which pyo3-ffi leaves out of the
/// limited API before 3.11 although `PyMemoryView_FromMemory` takes it since 3.3.
const PY_BUF_WRITE: std::os::raw::c_int = 0x200;

/// Call `readinto(file, view)` with `view` over the spare capacity of `out`, for up
/// to `n` bytes, and count what it wrote as part of `out`.
pub(super) fn read_into_vec(
    readinto: &Bound<'_, PyAny>,
    file: &Bound<'_, PyAny>,
    n: usize,
    out: &mut Vec<u8>,
) -> Result<usize> {
    let py = file.py();
    out.reserve(n);
    let spare = out.spare_capacity_mut();
    let length = isize::try_from(n)
        .map_err(|_| GuardError::Guard("a read of more than isize::MAX bytes".into()))?;
    // SAFETY: `spare` has room for at least `n` bytes (reserved above) and stays
    // allocated until this function returns: `out` is not touched meanwhile. The
    // view is released before returning, and the trusted C `readinto` keeps no
    // reference to it. It only writes into the memory (never reads it).
    let view = unsafe {
        pyo3::ffi::PyMemoryView_FromMemory(
            spare.as_mut_ptr().cast::<std::os::raw::c_char>(),
            length,
            PY_BUF_WRITE,
        )
    };
    // SAFETY: PyMemoryView_FromMemory returns a new reference or NULL with an
    // exception set.
    let view = unsafe { Bound::from_owned_ptr_or_err(py, view)? };
    let result = readinto.call1((file, &view));
    view.call_method0("release")?;
    let count: usize = result?.extract()?;
    if count > n {
        return Err(GuardError::BadArgument(format!(
            "readinto() returned {count}, more than the {n} bytes asked for"
        )));
    }
    // SAFETY: `readinto` initialised the first `count` bytes of the spare
    // capacity, and `count <= n <= capacity - len`.
    unsafe { out.set_len(out.len() + count) };
    Ok(count)
}

pub(super) fn append_bytes_like(result: &Bound<'_, PyAny>, out: &mut Vec<u8>) -> Result<usize> {
    if let Ok(bytes) = result.cast::<PyBytes>() {
        out.extend_from_slice(bytes.as_bytes());
        return Ok(bytes.as_bytes().len());
    }
    let bytes = snapshot_bytes(result)?;
    out.extend_from_slice(bytes.as_bytes());
    Ok(bytes.as_bytes().len())
}

impl Source for PyFileSource<'_, '_> {
    type Error = PyErr;
    fn read(&mut self, n: usize, out: &mut Vec<u8>) -> PyResult<usize> {
        if let Some(trusted) = self.readinto.as_ref().filter(|_| n >= READINTO_FROM) {
            return read_into_vec(&trusted.readinto, &trusted.file, n, out).map_err(PyErr::from);
        }
        append_bytes_like(&self.read.call1((n,))?, out).map_err(PyErr::from)
    }
    fn read_line(&mut self, out: &mut Vec<u8>) -> PyResult<usize> {
        append_bytes_like(&self.readline.call0()?, out).map_err(PyErr::from)
    }
}

/// Files up to this size may be allowed by the hash of the whole file.
pub(super) const WHOLE_FILE_HASH_UP_TO: usize = 64 << 20;

/// The whole of a file of io's own types (see `trusted_readinto`) whose position
/// is at its start, to be allowed by its hash (see `allow_whole_input_by_hash`);
/// `None`, with the file where it was, for any other. Only at the start, so a file
/// of many pickles costs one hash that allows nothing, not one per pickle.
pub(super) fn read_whole_file<'py>(
    trusted: &TrustedFile<'py>,
    head: Option<&Bound<'py, PyBytes>>,
) -> Result<Option<Vec<u8>>> {
    let file = &trusted.file;
    // The type's own methods: the file is exactly one of io's types, but an
    // attribute set on the instance could shadow a method.
    let py = file.py();
    let method = |name: &Bound<'py, PyString>| file.get_type().getattr(name);
    let worth_it =
        |size: u64| (WHOLE_HASH_FROM as u64..=WHOLE_FILE_HASH_UP_TO as u64).contains(&size);
    // A file that cannot tell its position (a pipe, a closed file) is read the
    // ordinary way, which raises what plain pickle raises.
    let at_start = || {
        let position = method(pyo3::intern!(py, "tell"))
            .and_then(|tell| tell.call1((file,))?.extract::<u64>());
        matches!(position, Ok(0))
    };
    let size = match trusted.kind {
        // Read pickle by pickle: each read is a system call anyway.
        TrustedKind::Raw => return Ok(None),
        TrustedKind::InMemory => {
            if !at_start() {
                return Ok(None);
            }
            let end: u64 = method(pyo3::intern!(py, "seek"))?
                .call1((file, 0, 2))?
                .extract()?;
            method(pyo3::intern!(py, "seek"))?.call1((file, 0))?;
            end
        }
        TrustedKind::Buffered => {
            // System calls are dear (tell and fstat each cost more than a small
            // load): the first frame's length, in the bytes the load reads first
            // anyway, says whether the pickle is large enough to hash whole.
            // Pickles of protocols before 4 have no frame and are delimited.
            let large = head.is_some_and(|h| {
                reader::first_frame_len(h.as_bytes())
                    .is_some_and(|len| len >= WHOLE_HASH_FROM as u64)
            });
            if !large || !at_start() {
                return Ok(None);
            }
            let fd: std::os::raw::c_int = method(pyo3::intern!(py, "fileno"))?
                .call1((file,))?
                .extract()?;
            regular_file_size(fd).unwrap_or(0)
        }
    };
    if !worth_it(size) {
        return Ok(None);
    }
    let size = size as usize;
    let mut data = Vec::with_capacity(size);
    while data.len() < size {
        if read_into_vec(&trusted.readinto, file, size - data.len(), &mut data)? == 0 {
            break;
        }
    }
    if data.len() != size {
        // It shrank meanwhile: read it the ordinary way.
        seek_to(file, 0)?;
        return Ok(None);
    }
    Ok(Some(data))
}

/// The size of the regular file open as `fd`; `None` for anything else (a pipe, a
/// device), or if fstat(2) fails.
pub(super) fn regular_file_size(fd: std::os::raw::c_int) -> Option<u64> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a `struct stat` into the pointer it is given, which
    // points to enough memory for one; it reads no memory of ours. A bad `fd`
    // makes it fail with EBADF, nothing more.
    if unsafe { libc::fstat(fd, stat.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: fstat returned 0, so it filled the whole struct.
    let stat = unsafe { stat.assume_init() };
    let regular = (stat.st_mode & libc::S_IFMT) == libc::S_IFREG;
    regular.then(|| u64::try_from(stat.st_size).ok()).flatten()
}

/// Move `file`, one of io's own types, to `position`, with its type's own `seek`.
pub(super) fn seek_to(file: &Bound<'_, PyAny>, position: usize) -> Result<()> {
    let seek = file.get_type().getattr(pyo3::intern!(file.py(), "seek"))?;
    seek.call1((file, position))?;
    Ok(())
}

/// A file whose whole contents were verified at once: after the load, its
/// position goes back to right after what the unpickler read, as plain pickle
/// leaves it.
pub(super) struct Rewind<'py> {
    pub(super) file: Bound<'py, PyAny>,
    pub(super) len: usize,
}

impl Rewind<'_> {
    pub(super) fn after(&self, consumed: usize) -> Result<()> {
        if consumed < self.len {
            seek_to(&self.file, consumed)?;
        }
        Ok(())
    }
}
