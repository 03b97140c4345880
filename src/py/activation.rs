//! Activation: the process layers `activate()` adds (from a manifest, deferred or
//! not), and the status questions the front asks (enforcing? journaling? in an
//! artifact?).

use super::error::{GuardError, Result};
use super::journal::JOURNAL;
use super::scopes::{
    active_scopes, add_process_layer, next_layer_id, push_node, ScopeNode, ScopeState,
    PROCESS_LAYERS,
};
use super::tokens::{Token, TokenKind};
use crate::manifest::{Manifest, ManifestError as CoreManifestError};
use crate::policy::{Mode, ProcessLayer, Rules};
use pyo3::prelude::*;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Whether some layer refuses what it does not list, here and now: an enforcing
/// process layer other than `record`'s, or a deny scope in this thread or task.
#[pyfunction]
pub(super) fn enforcing(py: Python<'_>) -> Result<bool> {
    let process = PROCESS_LAYERS
        .read()
        .iter()
        .any(|l| l.mode == Mode::Enforce && !matches!(l.rules, Rules::Everything));
    Ok(process || !active_scopes(py)?.scopes.is_empty())
}

/// Whether `pickleguard record` is journaling this process's loads.
#[pyfunction]
pub(super) fn journaling() -> bool {
    JOURNAL.get().is_some()
}

/// Whether this thread or task is inside a verified artifact's with-block.
#[pyfunction]
pub(super) fn in_artifact(py: Python<'_>) -> Result<bool> {
    Ok(!active_scopes(py)?.artifacts.is_empty())
}

/// Open a deny scope in this thread or task and return its token.
#[pyfunction]
pub(super) fn no_pickles(py: Python<'_>) -> Result<Token> {
    let scope = Arc::new(ScopeState {
        id: next_layer_id(),
        open: AtomicBool::new(true),
    });
    push_node(py, ScopeNode::Deny(scope.clone()))?;
    Ok(Token {
        kind: TokenKind::Scope(scope),
    })
}

/// Add a process-wide layer. Layers only ever add up, so a later call can only tighten.
#[pyfunction]
#[pyo3(signature = (manifest=None, mode="enforce"))]
pub(super) fn activate(manifest: Option<std::path::PathBuf>, mode: &str) -> Result<Token> {
    let mode = Mode::parse(mode).ok_or_else(|| GuardError::BadMode(mode.to_owned()))?;
    let (rules, failure) = match manifest {
        None => (Rules::Nothing, None),
        Some(path) => {
            // A panic while reading must still leave a closed layer, never none at all.
            match load_manifest(&path.to_string_lossy()) {
                Ok(m) => (Rules::Manifest(m), None),
                Err(e) => (Rules::Broken(e.clone()), Some(e)),
            }
        }
    };
    let id = next_layer_id();
    add_process_layer(ProcessLayer { id, mode, rules });
    if let Some(e) = failure {
        // The layer stays: in enforce mode it refuses every load and says why.
        return Err(GuardError::Manifest(e));
    }
    Ok(Token {
        kind: TokenKind::Process(id),
    })
}

/// Add a process layer whose manifest is read on a background thread, for
/// activation at interpreter start; the first load that needs it waits for it. A
/// manifest that fails to read refuses every load, as with `activate()`.
#[pyfunction]
#[pyo3(signature = (manifest, mode="enforce"))]
pub(super) fn activate_deferred(manifest: std::path::PathBuf, mode: &str) -> Result<()> {
    let mode = Mode::parse(mode).ok_or_else(|| GuardError::BadMode(mode.to_owned()))?;
    let origin = manifest.to_string_lossy().into_owned();
    let deferred = crate::policy::DeferredManifest::start(origin, |origin| {
        let loaded = load_manifest(origin);
        if let Err(error) = &loaded {
            // Started from the environment, the process cannot stop here (the
            // manifest is read in the background); say it once, as the start would.
            eprintln!(
                "pickleguard: error: {}\npickleguard: hint: {}; until then every load is refused",
                error.located_message(),
                error.hint
            );
        }
        loaded
    });
    add_process_layer(ProcessLayer {
        id: next_layer_id(),
        mode,
        rules: Rules::Deferred(deferred),
    });
    Ok(())
}

/// Wait for manifests still being read (before a fork: a child has no thread to
/// wait for).
#[pyfunction]
pub(super) fn settle_manifests(py: Python<'_>) {
    let layers = PROCESS_LAYERS.read().clone();
    py.detach(|| {
        for layer in layers.iter() {
            if let Rules::Deferred(d) = &layer.rules {
                let _ = d.get();
            }
        }
    });
}

/// Add a process layer that allows every load (`pickleguard record`).
#[pyfunction]
pub(super) fn record_layer() {
    add_process_layer(ProcessLayer {
        id: next_layer_id(),
        mode: Mode::Enforce,
        rules: Rules::Everything,
    });
}

/// Validate a manifest file, raising ManifestError; returns its entry count.
#[pyfunction]
pub(super) fn check_manifest(path: std::path::PathBuf) -> Result<usize> {
    // The text itself, never the index: this is what validates a manifest.
    read_catching_panics(&path.to_string_lossy(), Manifest::load)
        .map(|m| m.entries().len() + m.channels().len())
        .map_err(GuardError::Manifest)
}

/// The index of the manifest at `path` (see `manifest::index`), built from the
/// text read now, and the number of entries and channels in it. Raises
/// ManifestError if the manifest is invalid: an index is only ever built from a
/// manifest that parses.
#[pyfunction]
pub(super) fn manifest_index(path: std::path::PathBuf) -> Result<(Vec<u8>, usize)> {
    let origin = path.to_string_lossy();
    let text = std::fs::read(&path).map_err(|error| GuardError::Io {
        what: "read",
        path: path.clone(),
        error,
    })?;
    let manifest = std::str::from_utf8(&text)
        .map_err(|_| "the file is not UTF-8 text")
        .map_err(|message| {
            GuardError::Manifest(CoreManifestError {
                origin: origin.to_string(),
                line: 0,
                column: 0,
                message: format!("could not read the manifest: {message}"),
                hint: "check the path given to activate()".into(),
            })
        })
        .and_then(|text| {
            std::panic::catch_unwind(|| Manifest::parse(text, &origin))
                .unwrap_or_else(|_| Err(panic_error(&origin)))
                .map_err(GuardError::Manifest)
        })?;
    let count = manifest.entries().len() + manifest.channels().len();
    let sha256 = crate::identity::sha256(&text);
    Ok((crate::manifest::index::encode(&manifest, &sha256), count))
}

/// What is beside the manifest at `path`: "absent", "untrusted" (another owner,
/// or writable by more people than the manifest), "stale", "damaged" or
/// "current" (enforcement reads the index instead of the text).
#[pyfunction]
pub(super) fn manifest_index_status(path: std::path::PathBuf) -> Result<&'static str> {
    crate::manifest::index::status(&path.to_string_lossy())
        .map(|s| s.name())
        .map_err(|error| GuardError::Io {
            what: "read",
            path,
            error,
        })
}

/// Read a manifest to enforce it (from its index if it has a current, trusted
/// one); a panic while reading becomes a ManifestError, never a pass.
pub(super) fn load_manifest(origin: &str) -> std::result::Result<Manifest, CoreManifestError> {
    read_catching_panics(origin, Manifest::load_for_enforcement)
}

fn read_catching_panics(
    origin: &str,
    read: fn(&str) -> std::result::Result<Manifest, CoreManifestError>,
) -> std::result::Result<Manifest, CoreManifestError> {
    std::panic::catch_unwind(|| read(origin)).unwrap_or_else(|_| Err(panic_error(origin)))
}

fn panic_error(origin: &str) -> CoreManifestError {
    CoreManifestError {
        origin: origin.to_owned(),
        line: 0,
        column: 0,
        message: "internal error while reading the manifest".into(),
        hint: "please report this with the manifest attached".into(),
    }
}
