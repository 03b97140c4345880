//! Judging one load: its hash, the core's decision over the layers and scopes in
//! force, and the check that allows a large input by the hash of all of it.

use super::error::{GuardError, Result};
use super::frames::{call_stack, caller};
use super::journal::{audit, JOURNAL};
use super::log::{log_allowed, log_denial, report_warning};
use super::scopes::{active_scopes, PROCESS_LAYERS};
use crate::gate::{self, Policy, WholeInputVerdict};
use crate::identity::{digest_with_buffers, Algorithm, Digest, Id, Identities};
use crate::load::Load;
use crate::manifest::Kind;
use crate::policy::LazyFrames;
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

/// Apply the call-site pin, then every layer; log; journal; refuse or return.
pub(super) fn judge(py: Python<'_>, load: &Load<'_>, pin: Option<&str>) -> Result<()> {
    let mut compute = |algorithm| hash(py, algorithm, load.data, load.buffers);
    let mut ids = Identities::seeded(&mut compute, load.known);
    if let Some(pin) = pin {
        let expected = Id::parse(pin).map_err(|e| GuardError::BadArgument(format!("pin: {e}")))?;
        if let Some(denial) = gate::check_pin(load, &mut ids, &expected, &mut || caller(py)) {
            log_denial(py, &denial)?;
            return Err(GuardError::Denied(Box::new(denial)));
        }
    }
    let layers = PROCESS_LAYERS.read().clone();
    let scopes = active_scopes(py)?;
    let journal = JOURNAL.get();
    if layers.is_empty() && scopes.scopes.is_empty() && journal.is_none() {
        return log_allowed(py, load, &mut ids);
    }
    // Inside a verified artifact, a pickle is covered by its entry only if the
    // pickle's bytes are part of the artifact; anything else the loader reads (a
    // file next to it, a cache) is judged like any load.
    let covering = match load.kind {
        Kind::Pickle if !scopes.artifacts.is_empty() => scopes.covering_artifact(py, load.data),
        _ => None,
    };
    let grants = scopes.grants_for(covering);
    let policy = Policy {
        layers: &layers,
        scopes: &scopes.scopes,
        grants: &grants,
        journaling: journal.is_some(),
    };
    let mut stack = || call_stack(py);
    let mut frames = LazyFrames::new(&mut stack);
    let verdict = gate::judge(
        load,
        &mut ids,
        &mut frames,
        &policy,
        covering.is_some(),
        &mut || caller(py),
    );
    if let (true, Some(journal)) = (verdict.journal, journal) {
        journal.record(load, &mut ids, frames.get());
    }
    if verdict.is_plain_allow() {
        return log_allowed(py, load, &mut ids);
    }
    for warning in &verdict.warnings {
        audit(warning, "warn", load);
        report_warning(py, &warning.denial)?;
    }
    if let Some(refusal) = verdict.denial {
        audit(&refusal, "deny", load);
        log_denial(py, &refusal.denial)?;
        return Err(GuardError::Denied(Box::new(refusal.denial)));
    }
    Ok(())
}

/// Inputs at least this long may be allowed by the hash of the whole input.
/// Below it, delimiting costs less than the admitted unpickler that a load
/// allowed this way runs through (it cannot know whether the pickle names
/// globals without delimiting it).
pub(super) const WHOLE_HASH_FROM: usize = 4096;

/// Whether `data` is allowed by the hash of the whole input (see
/// `gate::allow_whole_input_by_hash`); an allowed input is logged as allowed.
pub(super) fn allow_whole_input_by_hash(py: Python<'_>, data: &[u8]) -> Result<WholeInputVerdict> {
    let layers = PROCESS_LAYERS.read().clone();
    let scopes = active_scopes(py)?;
    let grants = scopes.grants_for(None);
    let policy = Policy {
        layers: &layers,
        scopes: &scopes.scopes,
        grants: &grants,
        journaling: JOURNAL.get().is_some(),
    };
    let mut compute = |algorithm| hash(py, algorithm, data, &[]);
    let mut ids = Identities::new(&mut compute);
    let mut stack = || call_stack(py);
    let mut frames = LazyFrames::new(&mut stack);
    let in_artifact = !scopes.artifacts.is_empty();
    let verdict = gate::allow_whole_input_by_hash(&mut ids, &mut frames, &policy, in_artifact);
    if verdict == WholeInputVerdict::Allowed {
        log_allowed(py, &Load::pickle(data, &[], None), &mut ids)?;
    }
    Ok(verdict)
}
