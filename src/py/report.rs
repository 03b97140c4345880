//! What a decision says: the denial's text, its code and the entry to paste, and
//! the `pickleguard` logger it is reported to.

use super::error::NoPickleError;
use super::frames::FrameInfo;
use super::judge::Load;
use crate::identity::{Algorithm, Id, Identities};
use crate::manifest::Kind;
use crate::policy::{Reason, Refusal};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;
use std::fmt::Write as _;

pub(super) struct Denial {
    pub(super) message: String,
    pub(super) kind: Kind,
    /// Hex SHA-256 of the payload if it was computed (the manifest pins with
    /// SHA-256), else empty.
    pub(super) sha256_hex: String,
    /// The identity the suggested entry uses, as `algorithm:hex`.
    pub(super) identity: String,
    pub(super) size: usize,
    pub(super) caller: String,
    pub(super) code: &'static str,
    pub(super) entry: String,
}

impl Denial {
    pub(super) fn into_pyerr(self, py: Python<'_>) -> PyErr {
        let build = || -> PyResult<PyErr> {
            let kwargs = PyDict::new(py);
            kwargs.set_item("sha256", &self.sha256_hex)?;
            kwargs.set_item("identity", &self.identity)?;
            kwargs.set_item("kind", self.kind.table())?;
            kwargs.set_item("size", self.size)?;
            kwargs.set_item("caller", &self.caller)?;
            kwargs.set_item("code", self.code)?;
            kwargs.set_item("entry", &self.entry)?;
            let exc = py
                .get_type::<NoPickleError>()
                .call((self.message.as_str(),), Some(&kwargs))?;
            Ok(PyErr::from_value(exc))
        };
        build().unwrap_or_else(|e| e)
    }
}

pub(super) fn reason_code(reason: &Reason) -> &'static str {
    match reason {
        Reason::NotListed => "not-listed",
        Reason::StackMismatch { .. } => "stack-mismatch",
        Reason::NoManifest => "no-manifest",
        Reason::BrokenManifest(_) => "broken-manifest",
        Reason::Scope => "scope",
        // Call-site pins are checked before the layers, in `judge`.
    }
}

pub(super) fn suggested_entry(load: &Load<'_>, id: &Id, caller: Option<&FrameInfo>) -> String {
    let mut entry = format!(
        "[[{}]]\n{} = \"{}\"\n",
        load.kind.table(),
        id.algorithm.name(),
        id.hex()
    );
    if load.kind == Kind::Artifact {
        if let Some(source) = &load.source {
            let _ = writeln!(
                entry,
                "source = {}",
                serde_json::Value::from(source.as_str())
            );
        }
    }
    if let Some(c) = caller {
        let _ = writeln!(
            entry,
            "stack = [\"{}\"]  # optional: only this caller",
            c.name
        );
    }
    entry
}

/// What is being loaded, for messages: `pickle sha256:… (12 bytes)` or
/// `artifact sha256:… (12 bytes, file ckpt.pt, read by torch.load)`.
pub(super) fn describe_payload(load: &Load<'_>, id: &Id) -> String {
    let mut details = format!("{} bytes", load.size());
    if load.kind == Kind::Artifact {
        if let Some(source) = &load.source {
            let _ = write!(details, ", file {source}");
        }
        if let Some(loader) = load.loader {
            let _ = write!(details, ", read by {loader}");
        }
    }
    format!("{} {id} ({details})", load.kind.table())
}

pub(super) fn known_sha256_hex(ids: &Identities<'_>) -> String {
    ids.known(Algorithm::Sha256)
        .map(|id| id.hex())
        .unwrap_or_default()
}

pub(super) fn describe(
    refusal: &Refusal,
    load: &Load<'_>,
    ids: &mut Identities<'_>,
    caller: Option<&FrameInfo>,
) -> Denial {
    let id = ids.get(refusal.algorithm);
    // Not computed just for the message: a second pass over a large checkpoint.
    let sha256_hex = known_sha256_hex(ids);
    let entry = suggested_entry(load, &id, caller);
    let whence = caller
        .map(|c| format!("{} ({}:{})", c.name, c.file, c.line))
        .unwrap_or_else(|| "<no Python caller>".into());
    let what = format!("{} loaded by {whence}", describe_payload(load, &id));
    let noun = load.kind.table();
    let origin = refusal.origin.as_deref().unwrap_or("<no manifest>");
    let (why, hint) = match &refusal.reason {
        Reason::NotListed => (
            format!("is not in the manifest {origin}"),
            format!("if this {noun} is trusted, add this entry to {origin}:\n\n{entry}"),
        ),
        Reason::StackMismatch { patterns } => (
            format!(
                "is in the manifest {origin}, but only for callers matching {}",
                patterns
                    .iter()
                    .map(|p| format!("{p:?}"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
            format!("if this caller is trusted too, add this entry to {origin}:\n\n{entry}"),
        ),
        Reason::NoManifest => (
            "is not allowed: pickleguard was activated with no manifest, so nothing loads unless allow_pickles() lifts it".into(),
            format!("if this {noun} is trusted, enforce a manifest holding this entry instead (PICKLEGUARD_MANIFEST, or activate(manifest=...)); code holding this layer's token can also lift it with `with allow_pickles(token, only_objects=[\"{id}\"]):`\n\n{entry}"),
        ),
        Reason::BrokenManifest(err) => (
            format!("is not allowed: the manifest failed to load ({err}), and until it loads this layer allows no pickle"),
            "fix the manifest (pickleguard check MANIFEST) and restart the process".into(),
        ),
        Reason::Scope => (
            "is not allowed by a no_pickles() scope active in this thread or task".into(),
            format!("the code that opened the scope can allow it with `with allow_pickles(token, only_objects=[\"{id}\"]):`"),
        ),
    };
    Denial {
        message: format!("{what} {why}.\nhint: {hint}"),
        kind: load.kind,
        sha256_hex,
        identity: id.to_string(),
        size: load.size(),
        caller: caller.map(|c| c.name.clone()).unwrap_or_default(),
        code: reason_code(&refusal.reason),
        entry,
    }
}

pub(super) static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

pub(super) fn logger(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    LOGGER
        .get_or_try_init(py, || -> PyResult<Py<PyAny>> {
            Ok(py
                .import("logging")?
                .call_method1("getLogger", ("pickleguard",))?
                .unbind())
        })
        .map(|l| l.bind(py))
}

pub(super) const DEBUG: i32 = 10;

/// The logger's per-level cache of isEnabledFor answers (`Logger._cache`). logging
/// clears it in place whenever levels change, so the dict object itself is stable.
pub(super) static LOGGER_CACHE: PyOnceLock<Option<Py<PyDict>>> = PyOnceLock::new();

pub(super) fn debug_enabled(py: Python<'_>, logger: &Bound<'_, PyAny>) -> PyResult<bool> {
    let cache = LOGGER_CACHE.get_or_init(py, || {
        logger
            .getattr(pyo3::intern!(py, "_cache"))
            .ok()
            .and_then(|c| c.cast_into::<PyDict>().ok())
            .map(Bound::unbind)
    });
    // Reading the cached answer skips a Python-level call on every load; without
    // it, ask isEnabledFor, which fills it.
    if let Some(flag) = cache
        .as_ref()
        .and_then(|c| c.bind(py).get_item(DEBUG).ok().flatten())
    {
        return flag.is_truthy();
    }
    logger.call_method1("isEnabledFor", (DEBUG,))?.is_truthy()
}

pub(super) fn log_allowed(
    py: Python<'_>,
    load: &Load<'_>,
    ids: &mut Identities<'_>,
) -> PyResult<()> {
    let logger = logger(py)?;
    if debug_enabled(py, logger)? {
        let id = ids
            .any_known()
            .unwrap_or_else(|| ids.get(Algorithm::Sha256));
        logger.call_method1("debug", ("allowed %s", describe_payload(load, &id)))?;
    }
    Ok(())
}
