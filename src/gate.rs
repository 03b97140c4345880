//! The gate's verdict on one load: the call-site pin, then every process layer and
//! deny scope in force, with what to journal and report. The binding gathers the
//! facts (layers, scopes, grants, frames), then logs, journals and raises what the
//! verdict says.

use std::sync::Arc;

use crate::identity::{Id, Identities, KnownDigests};
use crate::load::{Caller, Load};
use crate::manifest::Kind;
use crate::policy::{
    decide, ActiveGrant, LayerId, LazyFrames, ProcessLayer, Reason, Refusal, Subject,
};
use crate::report::{describe, pin_mismatch, same_file, Denial, NearMiss};

/// The policy in force for one load, here and now.
pub struct Policy<'a> {
    pub layers: &'a [Arc<ProcessLayer>],
    /// The deny scopes of this thread or task, outermost first.
    pub scopes: &'a [LayerId],
    pub grants: &'a [ActiveGrant<'a>],
    /// `pickleguard record` journals this process's loads.
    pub journaling: bool,
}

/// A warn-mode report or a denial, with the manifest whose layer made it (for the
/// audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub denial: Denial,
    pub manifest: Option<String>,
}

/// What to do with one load.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Write it to `record`'s journal: it is allowed, and no verified artifact
    /// covers it.
    pub journal: bool,
    /// Loads that warn-mode layers would refuse, each to be reported.
    pub warnings: Vec<Report>,
    /// The refusal to raise, if an enforcing layer or a scope refuses it.
    pub denial: Option<Report>,
}

impl Verdict {
    /// Allowed with nothing to report: the load is logged as allowed.
    pub fn is_plain_allow(&self) -> bool {
        self.warnings.is_empty() && self.denial.is_none()
    }
}

/// The denial for a payload that does not match its call-site pin, or None.
pub fn check_pin(
    load: &Load<'_>,
    ids: &mut Identities<'_>,
    pin: &Id,
    caller: &mut dyn FnMut() -> Option<Caller>,
) -> Option<Denial> {
    let actual = ids.get(pin.algorithm);
    (actual != *pin).then(|| pin_mismatch(load, ids, &actual, pin, caller().as_ref()))
}

/// Decide `load` under `policy`. `covered` says a verified artifact covers this
/// pickle (its bytes are part of the artifact): it is decided with the artifact's
/// grants, and not journaled. `caller` is asked only when there is something to
/// report.
pub fn judge(
    load: &Load<'_>,
    ids: &mut Identities<'_>,
    frames: &mut LazyFrames<'_>,
    policy: &Policy<'_>,
    covered: bool,
    caller: &mut dyn FnMut() -> Option<Caller>,
) -> Verdict {
    let subject = Subject {
        kind: load.kind,
        channels: load.channel_rules_apply(),
        pins: load.pins_apply(),
    };
    let decision = decide(
        policy.layers,
        policy.scopes,
        policy.grants,
        subject,
        ids,
        frames,
    );
    let mut verdict = Verdict {
        journal: policy.journaling && decision.allowed() && !covered,
        ..Verdict::default()
    };
    if decision.refusals.is_empty() {
        return verdict;
    }
    let who = caller();
    let mut report = |refusal: &Refusal| {
        let near = match refusal.reason {
            Reason::NotListed => near_miss(policy.layers, refusal.layer, load, ids),
            _ => NearMiss::default(),
        };
        Report {
            denial: describe(refusal, load, ids, who.as_ref(), &near),
            manifest: refusal.origin.clone(),
        }
    };
    verdict.warnings = decision.warnings().map(&mut report).collect();
    verdict.denial = decision.denial().map(&mut report);
    verdict
}

/// What the manifest of layer `layer` holds near a load it does not list.
fn near_miss(
    layers: &[Arc<ProcessLayer>],
    layer: LayerId,
    load: &Load<'_>,
    ids: &mut Identities<'_>,
) -> NearMiss {
    let Some(manifest) = layers
        .iter()
        .find(|l| l.id == layer)
        .and_then(|l| l.rules.manifest())
    else {
        return NearMiss::default();
    };
    let other = match load.kind {
        Kind::Pickle => Kind::Artifact,
        Kind::Artifact => Kind::Pickle,
    };
    let other_kind = manifest
        .algorithms(other)
        .into_iter()
        .find_map(|algorithm| {
            let id = ids.get(algorithm);
            let entry = manifest.entries_for(other, &id).next()?;
            Some((other, entry.line))
        });
    let same_source = load.source.as_deref().and_then(|file| {
        manifest
            .entries()
            .iter()
            .filter(|e| e.kind == load.kind)
            .find(|e| e.source.as_deref().is_some_and(|s| same_file(s, file)))
            .and_then(|e| Some((e.line, e.ids.first()?.to_string())))
    });
    NearMiss {
        other_kind,
        same_source,
    }
}

/// Whether a whole input is allowed by its hash alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WholeInputVerdict {
    /// Allowed as it is, by every layer and scope, with nothing to report.
    Allowed,
    /// Not decided this way: delimit and judge the pickle. The digests of the
    /// whole input, if it turns out to be exactly the pickle.
    Delimit(KnownDigests),
}

/// Decide `data` as though it were exactly one pickle, without delimiting it and
/// with no side effect. Every pin and manifest entry is the hash of exactly one
/// pickle, so a listed hash of the whole input means the input is that pickle, and
/// the unpickler consumes it whole: the identity is the same as delimiting gives.
/// (Were an entry the hash of a pickle followed by other bytes, the unpickler
/// would still run only bytes the entry names.) Anything short of a plain allow
/// (a refusal, a warning, a journal to write, a load inside an artifact) goes the
/// delimiting way, which decides, reports and records with the exact identity.
pub fn allow_whole_input_by_hash(
    ids: &mut Identities<'_>,
    frames: &mut LazyFrames<'_>,
    policy: &Policy<'_>,
    in_artifact: bool,
) -> WholeInputVerdict {
    let unguarded = policy.layers.is_empty() && policy.scopes.is_empty();
    if policy.journaling || unguarded || in_artifact {
        return WholeInputVerdict::Delimit(KnownDigests::NONE);
    }
    let decision = decide(
        policy.layers,
        policy.scopes,
        policy.grants,
        Subject::PICKLE,
        ids,
        frames,
    );
    if decision.refusals.is_empty() {
        WholeInputVerdict::Allowed
    } else {
        WholeInputVerdict::Delimit(ids.computed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{digest, Algorithm};
    use crate::manifest::Manifest;
    use crate::policy::{CallStack, Mode, Rules};

    const DATA: &[u8] = b"\x80\x04K\x01.";

    fn layer(id: LayerId, mode: Mode, listed: bool) -> Arc<ProcessLayer> {
        let hex = crate::identity::to_hex(&digest(Algorithm::Sha256, DATA));
        // Unlisted: the manifest pins another pickle, so the lookup hashes this one.
        let hex = if listed { hex } else { "00".repeat(32) };
        let entry = format!("[[pickle]]\nsha256 = \"{hex}\"\n");
        let manifest = Manifest::parse(&format!("version = 1\n{entry}"), "m.toml").unwrap();
        Arc::new(ProcessLayer {
            id,
            mode,
            rules: Rules::Manifest(manifest),
        })
    }

    fn run(policy: &Policy<'_>, covered: bool) -> Verdict {
        let load = Load::pickle(DATA, &[], None);
        let mut compute = |a| digest(a, DATA);
        let mut ids = Identities::new(&mut compute);
        let mut stack = CallStack::default;
        let mut frames = LazyFrames::new(&mut stack);
        let mut asked = 0;
        let verdict = judge(&load, &mut ids, &mut frames, policy, covered, &mut || {
            asked += 1;
            None
        });
        assert_eq!(
            asked,
            usize::from(!verdict.is_plain_allow()),
            "caller asked once, only to report"
        );
        verdict
    }

    fn policy<'a>(layers: &'a [Arc<ProcessLayer>], journaling: bool) -> Policy<'a> {
        Policy {
            layers,
            scopes: &[],
            grants: &[],
            journaling,
        }
    }

    #[test]
    fn a_listed_load_is_allowed_and_journaled_when_recording() {
        let layers = [layer(1, Mode::Enforce, true)];
        let verdict = run(&policy(&layers, true), false);
        assert!(verdict.is_plain_allow() && verdict.journal);
        assert!(!run(&policy(&layers, false), false).journal);
        // Covered by a verified artifact: its entry covers it; nothing to journal.
        assert!(!run(&policy(&layers, true), true).journal);
    }

    #[test]
    fn an_unlisted_load_is_denied_naming_the_refusing_manifest() {
        let layers = [layer(1, Mode::Enforce, false)];
        let verdict = run(&policy(&layers, true), false);
        let denial = verdict.denial.expect("refused");
        assert_eq!(denial.denial.code, "not-listed");
        assert_eq!(denial.manifest.as_deref(), Some("m.toml"));
        assert!(verdict.warnings.is_empty() && !verdict.journal);
    }

    #[test]
    fn warn_layers_report_and_allow() {
        let layers = [layer(1, Mode::Warn, false), layer(2, Mode::Enforce, true)];
        let verdict = run(&policy(&layers, false), false);
        assert!(verdict.denial.is_none());
        assert_eq!(verdict.warnings.len(), 1);
        assert_eq!(verdict.warnings[0].denial.code, "not-listed");
    }

    #[test]
    fn a_pin_is_checked_in_its_own_algorithm() {
        let load = Load::pickle(DATA, &[], None);
        let mut compute = |a| digest(a, DATA);
        let mut ids = Identities::new(&mut compute);
        let right = ids.get(Algorithm::Blake3);
        assert_eq!(check_pin(&load, &mut ids, &right, &mut || None), None);
        let wrong = Id::parse(&format!("sha256:{}", "00".repeat(32))).unwrap();
        let denial = check_pin(&load, &mut ids, &wrong, &mut || None).unwrap();
        assert_eq!(denial.code, "pin-mismatch");
    }

    #[test]
    fn a_whole_input_is_allowed_by_its_hash_only_on_a_plain_allow() {
        let mut compute = |a| digest(a, DATA);
        let mut ids = Identities::new(&mut compute);
        let mut stack = CallStack::default;
        let mut frames = LazyFrames::new(&mut stack);
        let listed = [layer(1, Mode::Enforce, true)];
        let verdict = |p: &Policy<'_>, art, ids: &mut Identities<'_>, f: &mut LazyFrames<'_>| {
            allow_whole_input_by_hash(ids, f, p, art)
        };
        assert_eq!(
            verdict(&policy(&listed, false), false, &mut ids, &mut frames),
            WholeInputVerdict::Allowed
        );
        // Recording, unguarded, or inside an artifact: always delimited, hashing nothing.
        for (p, art) in [
            (policy(&listed, true), false),
            (policy(&[], false), false),
            (policy(&listed, false), true),
        ] {
            assert_eq!(
                verdict(&p, art, &mut ids, &mut frames),
                WholeInputVerdict::Delimit(KnownDigests::NONE)
            );
        }
        let unlisted = [layer(1, Mode::Enforce, false)];
        let mut compute = |a| digest(a, DATA);
        let mut fresh = Identities::new(&mut compute);
        let WholeInputVerdict::Delimit(known) =
            verdict(&policy(&unlisted, false), false, &mut fresh, &mut frames)
        else {
            panic!("an unlisted input must be delimited");
        };
        assert_eq!(
            known.get(Algorithm::Sha256),
            Some(digest(Algorithm::Sha256, DATA))
        );
    }
}
