//! Judging one load: its hash, the core's decision over the layers and scopes in
//! force, and the whole-input look that admits a large input by its hash alone.

use super::error::{GuardError, Result};
use super::frames::{call_stack, caller};
use super::journal::{audit, JOURNAL};
use super::report::{describe, describe_payload, known_sha256_hex, log_allowed, logger, Denial};
use super::scopes::{active_scopes, PROCESS_LAYERS};
use crate::identity::{digest_with_buffers, Algorithm, Digest, Id, Identities, KnownDigests};
use crate::manifest::Kind;
use crate::policy::{decide, Decision, LazyFrames};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// Buffers larger than this are hashed with the GIL released.
pub(super) const DETACH_THRESHOLD: usize = 1 << 16;

/// Hash `data` (and out-of-band `buffers`), releasing the GIL when they are large.
/// Callers pass only memory that no other thread can change: `bytes` objects or
/// buffers this module owns.
pub(super) fn hash(py: Python<'_>, algorithm: Algorithm, data: &[u8], buffers: &[&[u8]]) -> Digest {
    let size = data.len() + buffers.iter().map(|b| b.len()).sum::<usize>();
    let run = || digest_with_buffers(algorithm, data, buffers.iter().copied());
    if size >= DETACH_THRESHOLD {
        py.detach(run)
    } else {
        run()
    }
}

/// What the gate knows about one load, for the decision, the journal and the logs.
pub(super) struct Load<'a> {
    pub(super) kind: Kind,
    /// The pickle's bytes, or the whole artifact file.
    pub(super) data: &'a [u8],
    /// Out-of-band buffers the pickle consumes; part of its identity.
    pub(super) buffers: &'a [&'a [u8]],
    /// The file's name, when the payload came from a file object that has one.
    pub(super) source: Option<String>,
    /// For artifacts: the loader that reads it (`torch.load`).
    pub(super) loader: Option<&'a str>,
    /// For artifacts: the globals its pickles import, found by the adapter, with
    /// whether each is risky (for the journal, so `record` can flag them).
    pub(super) artifact_imports: &'a [(String, bool)],
    /// Digests of exactly these bytes already computed by a first look.
    pub(super) known: KnownDigests,
}

impl<'a> Load<'a> {
    pub(super) fn pickle(data: &'a [u8], buffers: &'a [&'a [u8]], source: Option<String>) -> Self {
        Load {
            kind: Kind::Pickle,
            data,
            buffers,
            source,
            loader: None,
            artifact_imports: &[],
            known: [None, None],
        }
    }

    pub(super) fn knowing(mut self, known: KnownDigests) -> Self {
        self.known = known;
        self
    }

    pub(super) fn size(&self) -> usize {
        self.data.len()
    }
}

/// Apply the call-site pin, then every layer; log; journal; refuse or return.
pub(super) fn judge(py: Python<'_>, load: &Load<'_>, pin: Option<&str>) -> Result<()> {
    let mut compute = |algorithm| hash(py, algorithm, load.data, load.buffers);
    let mut ids = Identities::seeded(&mut compute, load.known);
    if let Some(pin) = pin {
        let expected = Id::parse(pin)
            .map_err(|e| GuardError::Py(PyValueError::new_err(format!("pin: {e}"))))?;
        let actual = ids.get(expected.algorithm);
        if actual != expected {
            let who = caller(py);
            let denial = Denial {
                message: format!(
                    "{} does not match the pinned {expected}.\nhint: the data changed since it was pinned; if the new data is trusted, update the pin",
                    describe_payload(load, &actual),
                ),
                kind: load.kind,
                sha256_hex: known_sha256_hex(&ids),
                identity: actual.to_string(),
                size: load.size(),
                caller: who.map(|c| c.name).unwrap_or_default(),
                code: "pin-mismatch",
                entry: String::new(),
            };
            logger(py)?.call_method1("error", ("%s", denial.message.as_str()))?;
            return Err(GuardError::Denied(Box::new(denial)));
        }
    }
    let layers = PROCESS_LAYERS.read().clone();
    let scopes = active_scopes(py)?;
    let journal = JOURNAL.get();
    if layers.is_empty() && scopes.scopes.is_empty() && journal.is_none() {
        return Ok(log_allowed(py, load, &mut ids)?);
    }
    // Inside an admitted artifact, a pickle is covered by its entry only if the
    // pickle's bytes are part of the artifact; anything else the loader reads (a
    // file next to it, a cache) is judged like any load.
    let covering = match load.kind {
        Kind::Pickle if !scopes.artifacts.is_empty() => scopes.covering_artifact(py, load.data),
        _ => None,
    };
    let grants = scopes.grants_for(covering);
    let mut stack = || call_stack(py);
    let mut frames = LazyFrames::new(&mut stack);
    let decision: Decision = decide(
        &layers,
        &scopes.scopes,
        &grants,
        load.kind,
        &mut ids,
        &mut frames,
    );
    if decision.allowed() && covering.is_none() {
        if let Some(journal) = journal {
            journal.record(load, &mut ids, frames.get());
        }
    }
    if decision.refusals.is_empty() {
        return Ok(log_allowed(py, load, &mut ids)?);
    }
    let who = caller(py);
    for warning in decision.warnings() {
        let d = describe(warning, load, &mut ids, who.as_ref());
        audit(&d, "warn", warning, load);
        logger(py)?.call_method1(
            "warning",
            ("warn mode, allowed anyway: %s", d.message.as_str()),
        )?;
    }
    if let Some(refusal) = decision.denial() {
        let d = describe(refusal, load, &mut ids, who.as_ref());
        audit(&d, "deny", refusal, load);
        logger(py)?.call_method1("error", ("%s", d.message.as_str()))?;
        return Err(GuardError::Denied(Box::new(d)));
    }
    Ok(())
}

/// Inputs at least this long get a first look by the hash of the whole input.
/// Below it, delimiting costs less than the admitted unpickler that a load
/// admitted this way runs through (it cannot know whether the pickle names
/// globals without delimiting it).
pub(super) const WHOLE_LOOK_FROM: usize = 4096;

/// What a first look at a whole input found.
pub(super) enum WholeLook {
    /// Allowed as it is, by every layer and scope, with nothing to report.
    Allowed,
    /// Not decided this way: delimit and judge the pickle. The digests of the
    /// whole input, if it turns out to be exactly the pickle.
    Judge(KnownDigests),
}

/// Decide `data` as though it were exactly one pickle, without delimiting it and
/// with no side effect. Every pin and manifest entry is the hash of exactly one
/// pickle, so a listed hash of the whole input means the input is that pickle, and
/// the unpickler consumes it whole: the identity is the same as delimiting gives.
/// (Were an entry the hash of a pickle followed by other bytes, the unpickler
/// would still run only bytes the entry names.) Anything short of a plain allow
/// (a refusal, a warning, a journal to write, a load inside an artifact) goes the
/// delimiting way, which decides, reports and records with the exact identity.
pub(super) fn whole_look(py: Python<'_>, data: &[u8]) -> PyResult<WholeLook> {
    if JOURNAL.get().is_some() {
        return Ok(WholeLook::Judge([None, None]));
    }
    let layers = PROCESS_LAYERS.read().clone();
    let scopes = active_scopes(py)?;
    if (layers.is_empty() && scopes.scopes.is_empty()) || !scopes.artifacts.is_empty() {
        return Ok(WholeLook::Judge([None, None]));
    }
    let mut compute = |algorithm| hash(py, algorithm, data, &[]);
    let mut ids = Identities::new(&mut compute);
    let grants = scopes.grants_for(None);
    let mut stack = || call_stack(py);
    let mut frames = LazyFrames::new(&mut stack);
    let decision = decide(
        &layers,
        &scopes.scopes,
        &grants,
        Kind::Pickle,
        &mut ids,
        &mut frames,
    );
    if !decision.refusals.is_empty() {
        return Ok(WholeLook::Judge(ids.computed()));
    }
    log_allowed(py, &Load::pickle(data, &[], None), &mut ids)?;
    Ok(WholeLook::Allowed)
}
