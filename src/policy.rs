//! The decision: may a pickle with this digest load here, given every active layer?
//!
//! A load is allowed only if every layer allows it. The layers are the process-wide
//! ones (from `activate()`), each checked against its rules, and the deny scopes
//! opened with `no_pickles()`. A layer is also lifted by a grant made with its token
//! in the current thread or task (`allow_pickles`).

use std::collections::HashSet;

use crate::identity::{Algorithm, Id, Identities};
use crate::manifest::{Kind, Manifest, ManifestError};
use crate::pattern::stack_matches;

pub type LayerId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Refuse what the layer does not allow.
    Enforce,
    /// Allow, but report what the layer would refuse.
    Warn,
}

impl Mode {
    pub fn parse(text: &str) -> Option<Mode> {
        match text {
            "enforce" => Some(Mode::Enforce),
            "warn" => Some(Mode::Warn),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Warn => "warn",
        }
    }
}

/// A manifest parsed on a background thread, so that activation at interpreter
/// start does not wait for a large file; the first decision that needs it waits.
#[derive(Debug)]
pub struct DeferredManifest {
    pub origin: String,
    result: std::sync::OnceLock<Result<Manifest, ManifestError>>,
    worker: parking_lot::Mutex<Option<std::thread::JoinHandle<Result<Manifest, ManifestError>>>>,
}

impl DeferredManifest {
    /// Start `load(origin)` on a new thread.
    pub fn start<F>(origin: String, load: F) -> std::sync::Arc<Self>
    where
        F: FnOnce(&str) -> Result<Manifest, ManifestError> + Send + 'static,
    {
        let path = origin.clone();
        let worker = std::thread::Builder::new()
            .name("pickleguard-manifest".into())
            .spawn(move || load(&path));
        let deferred = DeferredManifest {
            origin,
            result: std::sync::OnceLock::new(),
            worker: parking_lot::Mutex::new(None),
        };
        match worker {
            Ok(handle) => *deferred.worker.lock() = Some(handle),
            // No thread to be had: there is nothing to defer to; fail closed now.
            Err(e) => {
                let _ = deferred.result.set(Err(deferred.failure(&format!(
                    "could not start the thread that reads the manifest: {e}"
                ))));
            }
        }
        std::sync::Arc::new(deferred)
    }

    fn failure(&self, message: &str) -> ManifestError {
        ManifestError {
            origin: self.origin.clone(),
            line: 0,
            column: 0,
            message: message.to_owned(),
            hint: "please report this with the manifest attached".into(),
        }
    }

    /// The parsed manifest (or why it failed), waiting for the thread if needed.
    pub fn get(&self) -> &Result<Manifest, ManifestError> {
        self.result.get_or_init(|| match self.worker.lock().take() {
            Some(handle) => handle
                .join()
                .unwrap_or_else(|_| Err(self.failure("internal error while reading the manifest"))),
            None => Err(self.failure("the manifest reader went away")),
        })
    }
}

/// What a process layer lets through on its own, before grants.
#[derive(Debug)]
pub enum Rules {
    /// No manifest: nothing loads unless a grant lifts the layer.
    Nothing,
    Manifest(Manifest),
    /// The manifest failed to load; everything is refused and this says why.
    Broken(ManifestError),
    /// Everything loads (`pickleguard record`, which journals each load instead).
    Everything,
    /// A manifest still being read (activation at interpreter start).
    Deferred(std::sync::Arc<DeferredManifest>),
}

impl Rules {
    /// The manifest these rules hold, once it is read.
    pub fn manifest(&self) -> Option<&Manifest> {
        match self {
            Rules::Manifest(m) => Some(m),
            Rules::Deferred(d) => d.get().as_ref().ok(),
            Rules::Nothing | Rules::Broken(_) | Rules::Everything => None,
        }
    }
}

#[derive(Debug)]
pub struct ProcessLayer {
    pub id: LayerId,
    pub mode: Mode,
    pub rules: Rules,
}

/// A grant in force for the current thread or task.
#[derive(Debug, Clone, Copy)]
pub struct ActiveGrant<'a> {
    pub layer: LayerId,
    /// `None` lifts the layer for every payload.
    pub only: Option<&'a HashSet<Id>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The manifest has no entry with this digest.
    NotListed,
    /// Entries with this digest exist, but their stack patterns do not match.
    StackMismatch {
        patterns: Vec<Vec<String>>,
    },
    /// The layer has no manifest (nopickle) and no grant lifted it.
    NoManifest,
    BrokenManifest(String),
    /// A `no_pickles()` scope that no grant lifted.
    Scope,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub layer: LayerId,
    pub mode: Mode,
    /// The manifest's origin, for a process layer that has one.
    pub origin: Option<String>,
    pub reason: Reason,
    /// The algorithm an entry added to this layer's manifest should use.
    pub algorithm: Algorithm,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Decision {
    pub refusals: Vec<Refusal>,
}

impl Decision {
    /// The refusal that denies the load, if any layer enforces one.
    pub fn denial(&self) -> Option<&Refusal> {
        self.refusals.iter().find(|r| r.mode == Mode::Enforce)
    }

    /// Refusals from warn-mode layers: the load goes ahead, and these are reported.
    pub fn warnings(&self) -> impl Iterator<Item = &Refusal> {
        self.refusals.iter().filter(|r| r.mode == Mode::Warn)
    }

    pub fn allowed(&self) -> bool {
        self.denial().is_none()
    }
}

fn lifted(layer: LayerId, ids: &mut Identities<'_>, grants: &[ActiveGrant<'_>]) -> bool {
    grants.iter().any(|g| {
        g.layer == layer
            && g.only.is_none_or(|only| {
                only.iter()
                    .any(|listed| ids.get(listed.algorithm) == *listed)
            })
    })
}

/// The loading call stack as the policy sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallStack {
    /// `module:qualname` of each frame, outermost first, pickleguard's own left out.
    pub frames: Vec<std::sync::Arc<str>>,
    /// The innermost frame outside pickle and pickleguard: the code that loaded.
    pub caller: Option<std::sync::Arc<str>>,
    /// The frame that called `caller`, for channel rules with `called_from`.
    pub called_from: Option<std::sync::Arc<str>>,
}

/// The call stack, computed at most once and only if a rule needs it.
pub struct LazyFrames<'f> {
    compute: &'f mut dyn FnMut() -> CallStack,
    stack: Option<CallStack>,
}

impl<'f> LazyFrames<'f> {
    pub fn new(compute: &'f mut dyn FnMut() -> CallStack) -> Self {
        LazyFrames {
            compute,
            stack: None,
        }
    }

    pub fn get(&mut self) -> &CallStack {
        self.stack.get_or_insert_with(|| (self.compute)())
    }
}

fn check_rules(
    rules: &Rules,
    subject: Subject,
    ids: &mut Identities<'_>,
    frames: &mut LazyFrames<'_>,
) -> Option<Reason> {
    match rules {
        Rules::Nothing => Some(Reason::NoManifest),
        Rules::Everything => None,
        Rules::Broken(err) => Some(Reason::BrokenManifest(err.located_message())),
        Rules::Deferred(deferred) => match deferred.get() {
            Ok(manifest) => check_manifest(manifest, subject, ids, frames),
            Err(err) => Some(Reason::BrokenManifest(err.located_message())),
        },
        Rules::Manifest(manifest) => check_manifest(manifest, subject, ids, frames),
    }
}

fn check_manifest(
    manifest: &Manifest,
    subject: Subject,
    ids: &mut Identities<'_>,
    frames: &mut LazyFrames<'_>,
) -> Option<Reason> {
    let kind = subject.kind;
    let mut patterns = Vec::new();
    // Hashes already computed first, then the cheapest: a second hash is paid for
    // only when the first found no entry.
    for algorithm in ids.lookup_order() {
        if !subject.pins || !manifest.uses(kind, algorithm) {
            continue;
        }
        let id = ids.get(algorithm);
        for entry in manifest.entries_for(kind, &id) {
            match &entry.stack {
                None => return None,
                Some(stack) if stack_matches(stack, &frames.get().frames) => return None,
                Some(stack) => patterns.push(stack.iter().map(|p| p.as_str().to_owned()).collect()),
            }
        }
    }
    if subject.channels && !manifest.channels().is_empty() {
        let stack = frames.get();
        if let Some(caller) = stack.caller.as_deref() {
            if manifest
                .channel_for(caller, stack.called_from.as_deref())
                .is_some()
            {
                return None;
            }
        }
    }
    Some(if patterns.is_empty() {
        Reason::NotListed
    } else {
        Reason::StackMismatch { patterns }
    })
}

fn suggested_algorithm(rules: &Rules, kind: Kind) -> Algorithm {
    match rules {
        Rules::Manifest(m) => m.preferred_algorithm(kind),
        Rules::Deferred(d) => match d.get() {
            Ok(m) => m.preferred_algorithm(kind),
            Err(_) => Algorithm::Sha256,
        },
        _ => Algorithm::Sha256,
    }
}

/// The algorithms a load of `kind` is first looked up by under `process`: for
/// each layer with a manifest, the cheapest algorithm that manifest pins `kind`
/// with. A caller that hashes a large input while reading it (a verified copy)
/// computes these on the way; any other digest a decision asks for is still
/// computed when asked.
pub fn first_algorithms(process: &[std::sync::Arc<ProcessLayer>], kind: Kind) -> Vec<Algorithm> {
    let mut wanted = Vec::new();
    for layer in process {
        let manifest = match &layer.rules {
            Rules::Manifest(m) => m,
            Rules::Deferred(d) => match d.get() {
                Ok(m) => m,
                Err(_) => continue,
            },
            _ => continue,
        };
        let first = Algorithm::CHEAPEST_FIRST
            .into_iter()
            .find(|&a| manifest.uses(kind, a));
        if let Some(algorithm) = first {
            if !wanted.contains(&algorithm) {
                wanted.push(algorithm);
            }
        }
    }
    wanted
}

/// What a load is judged as: the manifest table its entries are in, and whether
/// `[[channel]]` rules may cover it (see `Load::channel_rules_apply`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject {
    pub kind: Kind,
    pub channels: bool,
    /// Whether the kind's entries (hash pins) may admit it.
    pub pins: bool,
}

impl Subject {
    pub const PICKLE: Subject = Subject {
        kind: Kind::Pickle,
        channels: true,
        pins: true,
    };
    /// An artifact file: its hash alone decides.
    pub const ARTIFACT: Subject = Subject {
        kind: Kind::Artifact,
        channels: false,
        pins: true,
    };
    /// An artifact the program holds in memory: channel rules cover it too.
    pub const ARTIFACT_IN_MEMORY: Subject = Subject {
        kind: Kind::Artifact,
        channels: true,
        pins: true,
    };
    /// An artifact an engine's processes share and map in place: channel rules
    /// alone decide.
    pub const ARTIFACT_SHARED: Subject = Subject {
        kind: Kind::Artifact,
        channels: true,
        pins: false,
    };
}

/// Decide a load of the payload with identities `ids` (a pickle or a whole
/// artifact) under `process` layers and the deny `scopes` active in this thread or
/// task, lifted by `grants`.
pub fn decide(
    process: &[std::sync::Arc<ProcessLayer>],
    scopes: &[LayerId],
    grants: &[ActiveGrant<'_>],
    subject: Subject,
    ids: &mut Identities<'_>,
    frames: &mut LazyFrames<'_>,
) -> Decision {
    let kind = subject.kind;
    let mut decision = Decision::default();
    for layer in process {
        if lifted(layer.id, ids, grants) {
            continue;
        }
        if let Some(reason) = check_rules(&layer.rules, subject, ids, frames) {
            decision.refusals.push(Refusal {
                layer: layer.id,
                mode: layer.mode,
                origin: match &layer.rules {
                    Rules::Manifest(m) => Some(m.origin.clone()),
                    Rules::Deferred(d) => Some(d.origin.clone()),
                    Rules::Broken(e) => Some(e.origin.clone()),
                    Rules::Nothing | Rules::Everything => None,
                },
                reason,
                algorithm: suggested_algorithm(&layer.rules, kind),
            });
        }
    }
    for &scope in scopes {
        if !lifted(scope, ids, grants) {
            decision.refusals.push(Refusal {
                layer: scope,
                mode: Mode::Enforce,
                origin: None,
                reason: Reason::Scope,
                algorithm: Algorithm::Sha256,
            });
        }
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const HASH: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn sha256_of_payload() -> Id {
        Id::parse(HASH).unwrap()
    }

    fn decide_pickle(
        process: &[Arc<ProcessLayer>],
        scopes: &[LayerId],
        grants: &[ActiveGrant<'_>],
        frames: &mut LazyFrames<'_>,
    ) -> Decision {
        let mut compute = |a: Algorithm| match a {
            Algorithm::Sha256 => sha256_of_payload().digest,
            Algorithm::Blake3 => [3u8; 32],
        };
        let mut ids = Identities::new(&mut compute);
        decide(process, scopes, grants, Subject::PICKLE, &mut ids, frames)
    }

    fn layer(id: LayerId, mode: Mode, text: Option<&str>) -> Arc<ProcessLayer> {
        let rules = match text {
            None => Rules::Nothing,
            Some(t) => Rules::Manifest(Manifest::parse(t, "m.toml").unwrap()),
        };
        Arc::new(ProcessLayer { id, mode, rules })
    }

    fn run(
        process: &[Arc<ProcessLayer>],
        scopes: &[LayerId],
        grants: &[ActiveGrant<'_>],
        frames: &[&str],
    ) -> Decision {
        let owned = CallStack {
            frames: frames.iter().map(|&s| Arc::from(s)).collect(),
            caller: frames.last().map(|&s| Arc::from(s)),
            called_from: frames.iter().rev().nth(1).map(|&s| Arc::from(s)),
        };
        let mut compute = move || owned.clone();
        let mut lazy = LazyFrames::new(&mut compute);
        decide_pickle(process, scopes, grants, &mut lazy)
    }

    #[test]
    fn listed_digest_loads_unlisted_is_denied() {
        let listed = layer(
            1,
            Mode::Enforce,
            Some(&format!("version = 1\n[[pickle]]\nsha256 = \"{HASH}\"\n")),
        );
        assert!(run(&[listed], &[], &[], &[]).allowed());
        let empty = layer(1, Mode::Enforce, Some("version = 1\n"));
        let d = run(&[empty], &[], &[], &[]);
        assert_eq!(d.denial().unwrap().reason, Reason::NotListed);
    }

    #[test]
    fn stack_patterns_restrict_the_caller() {
        let m = format!("version = 1\n[[pickle]]\nsha256 = \"{HASH}\"\nstack = [\"app:load_*\"]\n");
        let l = layer(1, Mode::Enforce, Some(&m));
        assert!(run(
            std::slice::from_ref(&l),
            &[],
            &[],
            &["__main__:<module>", "app:load_ckpt"]
        )
        .allowed());
        let d = run(&[l], &[], &[], &["__main__:<module>", "other:f"]);
        assert!(matches!(
            d.denial().unwrap().reason,
            Reason::StackMismatch { .. }
        ));
    }

    #[test]
    fn frames_are_not_computed_without_patterns() {
        let l = layer(
            1,
            Mode::Enforce,
            Some(&format!("version = 1\n[[pickle]]\nsha256 = \"{HASH}\"\n")),
        );
        let mut calls = 0;
        let mut compute = || {
            calls += 1;
            CallStack::default()
        };
        let mut lazy = LazyFrames::new(&mut compute);
        assert!(decide_pickle(&[l], &[], &[], &mut lazy).allowed());
        drop(lazy);
        assert_eq!(calls, 0);
    }

    #[test]
    fn every_layer_must_allow() {
        let open = layer(
            1,
            Mode::Enforce,
            Some(&format!("version = 1\n[[pickle]]\nsha256 = \"{HASH}\"\n")),
        );
        // A library scope denies even what the operator allows ...
        let d = run(std::slice::from_ref(&open), &[7], &[], &[]);
        assert_eq!(d.denial().unwrap().reason, Reason::Scope);
        // ... until the library lifts its own scope.
        let g = [ActiveGrant {
            layer: 7,
            only: None,
        }];
        assert!(run(&[open], &[7], &g, &[]).allowed());
        // Lifting its own scope never lifts the operator's layer.
        let closed = layer(1, Mode::Enforce, None);
        let d = run(&[closed], &[7], &g, &[]);
        assert_eq!(d.denial().unwrap().reason, Reason::NoManifest);
    }

    #[test]
    fn grants_can_be_limited_to_digests() {
        let closed = layer(1, Mode::Enforce, None);
        let mut only = HashSet::new();
        only.insert(Id {
            algorithm: Algorithm::Sha256,
            digest: [0u8; 32],
        });
        let g = [ActiveGrant {
            layer: 1,
            only: Some(&only),
        }];
        assert!(!run(std::slice::from_ref(&closed), &[], &g, &[]).allowed());
        only.insert(sha256_of_payload());
        let g = [ActiveGrant {
            layer: 1,
            only: Some(&only),
        }];
        assert!(run(&[closed], &[], &g, &[]).allowed());
    }

    #[test]
    fn channel_rules_allow_only_their_callers() {
        let m = "version = 1\n[[channel]]\nname = \"mp\"\ncallers = [\"multiprocessing.connection:Connection.recv\"]\n";
        let l = layer(1, Mode::Enforce, Some(m));
        let recv = [
            "__main__:<module>",
            "multiprocessing.connection:Connection.recv",
        ];
        assert!(run(std::slice::from_ref(&l), &[], &[], &recv).allowed());
        // User code below a worker's frames is not the channel.
        let user = ["multiprocessing.pool:worker", "app:task"];
        assert!(!run(&[l], &[], &[], &user).allowed());
    }

    #[test]
    fn channel_rules_with_called_from_allow_only_the_transports_own_calls() {
        let m = "version = 1\n[[channel]]\nname = \"dask\"\ncallers = [\"distributed.protocol.pickle:loads\"]\ncalled_from = [\"distributed.*:*\"]\n";
        let l = layer(1, Mode::Enforce, Some(m));
        let transport = [
            "distributed.worker:Worker.handle_stream",
            "distributed.protocol.serialize:pickle_loads",
            "distributed.protocol.pickle:loads",
        ];
        assert!(run(std::slice::from_ref(&l), &[], &[], &transport).allowed());
        // A task calling the same function itself is not the transport.
        let task = [
            "distributed.worker:_run_task_simple",
            "app:task",
            "distributed.protocol.pickle:loads",
        ];
        assert!(!run(std::slice::from_ref(&l), &[], &[], &task).allowed());
        assert!(!run(&[l], &[], &[], &["distributed.protocol.pickle:loads"]).allowed());
    }

    #[test]
    fn deferred_manifests_decide_like_loaded_ones() {
        let text = format!("version = 1\n[[pickle]]\nsha256 = \"{HASH}\"\n");
        let deferred = DeferredManifest::start("m.toml".into(), move |origin| {
            Manifest::parse(&text, origin)
        });
        let l = Arc::new(ProcessLayer {
            id: 1,
            mode: Mode::Enforce,
            rules: Rules::Deferred(deferred),
        });
        assert!(run(&[l], &[], &[], &[]).allowed());
        let broken =
            DeferredManifest::start("bad.toml".into(), |origin| Manifest::parse("nope", origin));
        let l = Arc::new(ProcessLayer {
            id: 2,
            mode: Mode::Enforce,
            rules: Rules::Deferred(broken),
        });
        assert!(matches!(
            run(&[l], &[], &[], &[]).denial().unwrap().reason,
            Reason::BrokenManifest(_)
        ));
    }

    #[test]
    fn a_second_hash_is_paid_for_only_when_the_first_finds_nothing() {
        let both = format!(
            "version = 1\n[[pickle]]\nblake3 = \"{}\"\n[[pickle]]\nsha256 = \"{HASH}\"\n",
            "03".repeat(32)
        );
        let layers = [layer(1, Mode::Enforce, Some(&both))];
        let mut calls = Vec::new();
        let mut compute = |a: Algorithm| {
            calls.push(a);
            match a {
                Algorithm::Sha256 => sha256_of_payload().digest,
                Algorithm::Blake3 => [3u8; 32],
            }
        };
        let mut ids = Identities::new(&mut compute);
        let mut no_frames = CallStack::default;
        let mut frames = LazyFrames::new(&mut no_frames);
        assert!(decide(&layers, &[], &[], Subject::PICKLE, &mut ids, &mut frames).allowed());
        assert_eq!(calls, [Algorithm::Blake3]);

        // A payload the BLAKE3 entries do not list is looked up by SHA-256 too.
        let mut calls = Vec::new();
        let mut compute = |a: Algorithm| {
            calls.push(a);
            match a {
                Algorithm::Sha256 => sha256_of_payload().digest,
                Algorithm::Blake3 => [9u8; 32],
            }
        };
        let mut ids = Identities::new(&mut compute);
        assert!(decide(&layers, &[], &[], Subject::PICKLE, &mut ids, &mut frames).allowed());
        assert_eq!(calls, [Algorithm::Blake3, Algorithm::Sha256]);
    }

    #[test]
    fn artifact_pins_do_not_cover_pickles_and_channels_do_not_cover_artifacts() {
        let m = format!(
            "version = 1\n[[artifact]]\nsha256 = \"{HASH}\"\n[[channel]]\nname = \"mp\"\ncallers = [\"mp:recv\"]\n"
        );
        let layers = [layer(1, Mode::Enforce, Some(&m))];
        let mut compute = |_: Algorithm| sha256_of_payload().digest;
        let mut stack = || CallStack {
            frames: vec![Arc::from("mp:recv")],
            caller: None,
            called_from: None,
        };
        let mut frames = LazyFrames::new(&mut stack);
        let mut ids = Identities::new(&mut compute);
        assert!(decide(&layers, &[], &[], Subject::ARTIFACT, &mut ids, &mut frames).allowed());
        let d = decide(&layers, &[], &[], Subject::PICKLE, &mut ids, &mut frames);
        assert_eq!(d.denial().unwrap().reason, Reason::NotListed);
        let mut channel = || CallStack {
            frames: vec![Arc::from("mp:recv")],
            caller: Some(Arc::from("mp:recv")),
            called_from: None,
        };
        let mut frames = LazyFrames::new(&mut channel);
        let other = "version = 1\n[[channel]]\nname = \"mp\"\ncallers = [\"mp:recv\"]\n";
        let layers = [layer(1, Mode::Enforce, Some(other))];
        assert!(decide(&layers, &[], &[], Subject::PICKLE, &mut ids, &mut frames).allowed());
        assert!(!decide(&layers, &[], &[], Subject::ARTIFACT, &mut ids, &mut frames).allowed());
        // An engine's own message decoded from memory by an artifact loader
        // (torch.load of a buffer) is the channel's, as a pickle would be.
        let in_memory = Subject::ARTIFACT_IN_MEMORY;
        assert!(decide(&layers, &[], &[], in_memory, &mut ids, &mut frames).allowed());
        let mut user = || CallStack {
            frames: vec![Arc::from("app:load")],
            caller: Some(Arc::from("app:load")),
            called_from: None,
        };
        let mut frames = LazyFrames::new(&mut user);
        assert!(!decide(&layers, &[], &[], in_memory, &mut ids, &mut frames).allowed());
    }

    #[test]
    fn a_shared_artifact_is_admitted_by_a_channel_rule_and_never_by_its_hash() {
        let m = format!(
            "version = 1\n[[artifact]]\nsha256 = \"{HASH}\"\n[[channel]]\nname = \"joblib\"\ncallers = [\"joblib:tmp\"]\n"
        );
        let layers = [layer(1, Mode::Enforce, Some(&m))];
        let hashed = std::cell::Cell::new(false);
        let mut compute = |_: Algorithm| {
            hashed.set(true);
            sha256_of_payload().digest
        };
        let mut ids = Identities::new(&mut compute);
        let shared = Subject::ARTIFACT_SHARED;
        let mut user = || CallStack {
            frames: vec![Arc::from("app:load")],
            caller: Some(Arc::from("app:load")),
            called_from: None,
        };
        let mut frames = LazyFrames::new(&mut user);
        // Its hash is pinned, but the bytes stay writable after the check.
        let d = decide(&layers, &[], &[], shared, &mut ids, &mut frames);
        assert_eq!(d.denial().unwrap().reason, Reason::NotListed);
        let mut engine = || CallStack {
            frames: vec![Arc::from("joblib:tmp")],
            caller: Some(Arc::from("joblib:tmp")),
            called_from: None,
        };
        let mut frames = LazyFrames::new(&mut engine);
        assert!(decide(&layers, &[], &[], shared, &mut ids, &mut frames).allowed());
        assert!(
            !hashed.get(),
            "no hash is computed for a rule that does not use it"
        );
    }

    #[test]
    fn warn_layers_report_without_denying() {
        let w = layer(1, Mode::Warn, None);
        let d = run(&[w], &[], &[], &[]);
        assert!(d.allowed());
        assert_eq!(d.warnings().count(), 1);
    }

    #[test]
    fn the_first_algorithms_are_the_cheapest_each_manifest_pins_the_kind_with() {
        let both = format!(
            "version = 1\n[[artifact]]\nsha256 = \"{HASH}\"\n[[artifact]]\nblake3 = \"{HASH}\"\n"
        );
        let sha = format!(
            "version = 1\n[[artifact]]\nsha256 = \"{HASH}\"\n[[pickle]]\nblake3 = \"{HASH}\"\n"
        );
        let layers = [layer(1, Mode::Enforce, Some(&both))];
        assert_eq!(
            first_algorithms(&layers, Kind::Artifact),
            [Algorithm::Blake3]
        );
        let layers = [
            layer(1, Mode::Enforce, Some(&sha)),
            layer(2, Mode::Warn, None),
        ];
        assert_eq!(
            first_algorithms(&layers, Kind::Artifact),
            [Algorithm::Sha256]
        );
        assert_eq!(first_algorithms(&layers, Kind::Pickle), [Algorithm::Blake3]);
        let layers = [
            layer(1, Mode::Enforce, Some(&sha)),
            layer(2, Mode::Enforce, Some(&both)),
        ];
        assert_eq!(
            first_algorithms(&layers, Kind::Artifact),
            [Algorithm::Sha256, Algorithm::Blake3]
        );
        assert!(first_algorithms(&[], Kind::Artifact).is_empty());
    }
}
