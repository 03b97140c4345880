//! Answers for the CLI and the Python front that decide nothing: the layers in
//! force, a pickle's imports, its identity and bounds, a manifest's contents and the
//! known channels' tables.

use super::error::{GuardError, Result};
use super::journal::parse_algorithm;
use super::judge::hash;
use super::scopes::PROCESS_LAYERS;
use super::source::{buffers_for_identity, snapshot_bytes};
use crate::identity::{to_hex, Id};
use crate::manifest::Manifest;
use crate::policy::Rules;
use crate::reader;
use crate::scan;
use pyo3::prelude::*;
use pyo3::types::PyList;

/// The process layers, for status reports: (mode, manifest origin or None, entries).
#[pyfunction]
pub(super) fn process_layers(py: Python<'_>) -> Result<Bound<'_, PyList>> {
    let list = PyList::empty(py);
    for layer in PROCESS_LAYERS.read().iter() {
        let (origin, entries, broken) = match &layer.rules {
            Rules::Nothing => (None, 0, None),
            Rules::Everything => (Some("<record: everything>".to_owned()), 0, None),
            Rules::Manifest(m) => (Some(m.origin.clone()), m.entries().len(), None),
            Rules::Broken(e) => (Some(e.origin.clone()), 0, Some(e.to_string())),
            Rules::Deferred(d) => match d.get() {
                Ok(m) => (Some(m.origin.clone()), m.entries().len(), None),
                Err(e) => (Some(e.origin.clone()), 0, Some(e.to_string())),
            },
        };
        list.append((layer.mode.as_str(), origin, entries, broken))?;
    }
    Ok(list)
}

/// The globals the pickle at the start of `data` would import, found without
/// running it, as (name, risky) pairs.
#[pyfunction]
pub(super) fn imports(data: &Bound<'_, PyAny>) -> Result<Vec<(String, bool)>> {
    let bytes = snapshot_bytes(data)?;
    Ok(scan::imports(bytes.as_bytes())
        .iter()
        .map(|i| (i.render(), i.is_risky()))
        .collect())
}

/// Each of `names` (as `imports` and `record`'s journal render them) with its
/// class: "safe", "review" or "risky" (see `classify`).
#[pyfunction]
pub(super) fn classify_imports(names: Vec<String>) -> Vec<(String, &'static str)> {
    names
        .into_iter()
        .map(|name| {
            let class = crate::classify::classify(&name).as_str();
            (name, class)
        })
        .collect()
}

/// What a manifest holds, for merging: its entries as (table, identities as
/// `algorithm:hex`, stack patterns or None) and its channels as (name, callers,
/// called_from patterns or None).
#[pyfunction]
#[allow(clippy::type_complexity)]
pub(super) fn manifest_summary(
    path: std::path::PathBuf,
) -> Result<(
    Vec<(&'static str, Vec<String>, Option<Vec<String>>)>,
    Vec<(String, Vec<String>, Option<Vec<String>>)>,
)> {
    let manifest = Manifest::load(&path.to_string_lossy())
        .map_err(|e| PyErr::from(GuardError::Manifest(e)))?;
    let entries = manifest
        .entries()
        .iter()
        .map(|e| {
            (
                e.kind.table(),
                e.ids.iter().map(Id::to_string).collect(),
                e.stack
                    .as_ref()
                    .map(|s| s.iter().map(|p| p.as_str().to_owned()).collect()),
            )
        })
        .collect();
    let channels = manifest
        .channels()
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                c.callers.iter().map(|p| p.as_str().to_owned()).collect(),
                c.called_from
                    .as_ref()
                    .map(|o| o.iter().map(|p| p.as_str().to_owned()).collect()),
            )
        })
        .collect();
    Ok((entries, channels))
}

/// Whether the stack pattern `pattern` matches the frame name `name`.
#[pyfunction]
pub(super) fn pattern_matches(pattern: &str, name: &str) -> Result<bool> {
    crate::pattern::FramePattern::parse(pattern)
        .map(|p| p.matches(name))
        .map_err(|e| GuardError::BadArgument(e.message))
}

/// Every function through which the known channel `name` loads its messages.
#[pyfunction]
pub(super) fn channel_callers(name: &str) -> Vec<&'static str> {
    crate::channels::known_callers(name)
}

/// The rules `record` writes for the known channel `name`, as (callers,
/// called_from: empty for any).
#[pyfunction]
pub(super) fn channel_rules(name: &str) -> Vec<(Vec<&'static str>, Vec<&'static str>)> {
    crate::channels::known_rules(name)
        .map(|c| (c.callers.to_vec(), c.called_from.to_vec()))
        .collect()
}

/// Make `cls` immutable on CPython 3.10+ (as the C `pickle.Unpickler` is), so no one
/// can set attributes on the guarded Unpickler class, such as the original `load`.
///
/// The stable ABI keeps `PyTypeObject` opaque and has no call that sets a flag, so
/// this writes `tp_flags` where every CPython 3.9 to 3.13 keeps it (after the
/// object header and 18 pointer-sized fields) only when that word reads back as
/// exactly what the stable `PyType_GetFlags` reports, and confirms the flag took.
/// Anything else leaves the type as it was and returns false (the backstop does
/// not depend on it).
#[pyfunction]
pub(super) fn seal_type(cls: &Bound<'_, pyo3::types::PyType>) -> bool {
    const PY_TPFLAGS_IMMUTABLETYPE: std::ffi::c_ulong = 1 << 8;
    // ob_refcnt, ob_type, ob_size, then the 18 fields tp_name .. tp_as_buffer.
    const TP_FLAGS_OFFSET: usize = (3 + 18) * std::mem::size_of::<usize>();
    if cls.py().version_info() < (3, 10) {
        return false;
    }
    let ty = cls.as_type_ptr();
    // SAFETY: the GIL is held (`cls` is bound to it) and `ty` points to the live
    // type object `cls` owns, which is larger than TP_FLAGS_OFFSET plus a word.
    // The word is only written after reading back as the type's flags, and
    // PyType_Modified drops any cached state derived from them.
    unsafe {
        let flags = pyo3::ffi::PyType_GetFlags(ty);
        let slot = ty
            .cast::<u8>()
            .add(TP_FLAGS_OFFSET)
            .cast::<std::ffi::c_ulong>();
        if slot.read() != flags {
            return false;
        }
        slot.write(flags | PY_TPFLAGS_IMMUTABLETYPE);
        pyo3::ffi::PyType_Modified(ty);
        pyo3::ffi::PyType_GetFlags(ty) & PY_TPFLAGS_IMMUTABLETYPE != 0
    }
}

/// Delimit the pickle at the start of `data` without running it: its length and the
/// number of out-of-band buffers it consumes.
#[pyfunction]
#[pyo3(signature = (data, offset=0))]
pub(super) fn delimit(data: &Bound<'_, PyAny>, offset: usize) -> Result<(usize, usize)> {
    let bytes = snapshot_bytes(data)?;
    let tail = bytes.as_bytes().get(offset..).unwrap_or_default();
    reader::delimit(tail)
        .map(|e| (e.len, e.out_of_band_buffers))
        .map_err(|e| GuardError::Read(e.map_source(|never| match never {})))
}

/// The identity pickleguard gives the pickle at the start of `data` (with the
/// out-of-band `buffers` it would consume), as `algorithm:<hex>`.
#[pyfunction]
#[pyo3(signature = (data, buffers=None, algorithm="sha256"))]
pub(super) fn identify(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    buffers: Option<Bound<'_, PyAny>>,
    algorithm: &str,
) -> Result<String> {
    let algorithm = parse_algorithm(algorithm)?;
    let bytes = snapshot_bytes(data)?;
    let extent = reader::delimit(bytes.as_bytes())
        .map_err(|e| PyErr::from(GuardError::Read(e.map_source(|never| match never {}))))?;
    let taken = buffers_for_identity(py, extent.out_of_band_buffers, buffers)?;
    let digest = hash(
        py,
        algorithm,
        &bytes.as_bytes()[..extent.len],
        &taken.slices(),
    );
    Ok(Id { algorithm, digest }.to_string())
}

/// Whether the gate may dry-run `data` to explain why it cannot be delimited.
#[pyfunction]
pub(super) fn dry_run_safe(data: &Bound<'_, PyAny>) -> Result<bool> {
    let bytes = snapshot_bytes(data)?;
    Ok(scan::dry_run_safe(bytes.as_bytes()))
}

/// The digest of `data` as hex (SHA-256 unless `algorithm` says "blake3"), with the
/// GIL released for large inputs.
#[pyfunction]
#[pyo3(signature = (data, algorithm="sha256"))]
pub(super) fn hexdigest(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    algorithm: &str,
) -> Result<String> {
    let algorithm = parse_algorithm(algorithm)?;
    let bytes = snapshot_bytes(data)?;
    Ok(to_hex(&hash(py, algorithm, bytes.as_bytes(), &[])))
}
