//! What a decision says: the denial a refused load raises (its text, its stable
//! code and the manifest entry to paste) and the warn-mode report of a load a
//! layer would refuse. Plain data; the binding raises or logs it.

use std::fmt::Write as _;

use crate::identity::{Algorithm, Id, Identities};
use crate::load::{Caller, Load, Origin};
use crate::manifest::Kind;
use crate::policy::{Reason, Refusal};

/// A refused (or, in warn mode, reported) load: the facts `NoPickleError` carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub message: String,
    pub kind: Kind,
    /// Hex SHA-256 of the payload if it was computed (the manifest pins with
    /// SHA-256), else empty.
    pub sha256_hex: String,
    /// The identity the suggested entry uses, as `algorithm:hex`; empty when no
    /// payload was identified (a backstop refusal).
    pub identity: String,
    pub size: usize,
    pub caller: String,
    pub code: &'static str,
    /// A manifest entry that would allow the load, ready to paste; may be empty.
    pub entry: String,
}

/// The stable code of a layer's or scope's reason, as docs/model.md lists them.
pub fn reason_code(reason: &Reason) -> &'static str {
    match reason {
        Reason::NotListed => "not-listed",
        Reason::StackMismatch { .. } => "stack-mismatch",
        Reason::NoManifest => "no-manifest",
        Reason::BrokenManifest(_) => "broken-manifest",
        Reason::Scope => "scope",
    }
}

/// The manifest entry that would allow `load` as `id`, for `caller` only if the
/// user keeps the optional stack line.
pub fn suggested_entry(load: &Load<'_>, id: &Id, caller: Option<&Caller>) -> String {
    if load.origin == Origin::Shared {
        // No hash pins bytes that stay shared: a channel rule for the loading caller.
        let caller = caller.map(|c| c.name.as_str()).unwrap_or("<caller>");
        return format!(
            "[[channel]]\nname = \"joblib\"\ncallers = [{}]\n\
             called_from = [\"<the function that received the message>\"]\n",
            toml_string(caller)
        );
    }
    let mut entry = format!(
        "[[{}]]\n{} = \"{}\"\n",
        load.kind.table(),
        id.algorithm.name(),
        id.hex()
    );
    if load.kind == Kind::Artifact {
        if let Some(source) = &load.source {
            let _ = writeln!(entry, "source = {}", toml_string(source));
        }
    }
    if let Some(c) = caller {
        let _ = writeln!(
            entry,
            "stack = [{}]  # optional: only this caller",
            toml_string(&c.name)
        );
    }
    entry
}

/// A TOML basic string: a JSON string literal is one.
fn toml_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// What is being loaded, for messages: `pickle sha256:… (12 bytes)` or
/// `artifact sha256:… (12 bytes, file ckpt.pt, read by torch.load)`.
pub fn describe_payload(load: &Load<'_>, id: &Id) -> String {
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

/// The payload's SHA-256 if it is known; never computed just for a report (a
/// second pass over a large checkpoint).
pub fn known_sha256_hex(ids: &Identities<'_>) -> String {
    ids.known(Algorithm::Sha256)
        .map(|id| id.hex())
        .unwrap_or_default()
}

/// What the refusing layer's manifest holds near a load it does not list: the same
/// hash under the other kind of entry, or another hash for the same file. A
/// reviewer who sees "not in the manifest" for a hash that is in it, or for a file
/// that was pinned, would otherwise be misled.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NearMiss {
    /// The kind and line of an entry with this very hash, of the other kind.
    pub other_kind: Option<(Kind, usize)>,
    /// The line and identity of an entry of this kind whose `source` names the file
    /// this load read, pinned with another hash.
    pub same_source: Option<(usize, String)>,
}

/// Whether two file names, as a manifest's `source` and a load's file name give
/// them, name the same file: equal, or one is the other's trailing path.
pub fn same_file(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_start_matches("./"), b.trim_start_matches("./"));
    a == b || a.ends_with(&format!("/{b}")) || b.ends_with(&format!("/{a}"))
}

/// The denial for a load that `refusal` refuses; `near` is what the manifest holds
/// near it (only for a load it does not list).
pub fn describe(
    refusal: &Refusal,
    load: &Load<'_>,
    ids: &mut Identities<'_>,
    caller: Option<&Caller>,
    near: &NearMiss,
) -> Denial {
    let id = ids.get(refusal.algorithm);
    let entry = suggested_entry(load, &id, caller);
    let whence = caller
        .map(|c| format!("{} ({}:{})", c.name, c.file, c.line))
        .unwrap_or_else(|| "<no Python caller>".into());
    let what = format!("{} loaded by {whence}", describe_payload(load, &id));
    let (why, hint) = match &refusal.reason {
        Reason::NotListed => not_listed(refusal, load, &id, &entry, near),
        _ => why_and_hint(refusal, load.kind, &id, &entry),
    };
    Denial {
        message: format!("{what} {why}.\nhint: {hint}"),
        kind: load.kind,
        sha256_hex: known_sha256_hex(ids),
        identity: id.to_string(),
        size: load.size(),
        caller: caller.map(|c| c.name.clone()).unwrap_or_default(),
        code: reason_code(&refusal.reason),
        entry,
    }
}

/// Why a load the manifest does not list is refused, and what to do, saying what
/// the manifest holds near it.
fn not_listed(
    refusal: &Refusal,
    load: &Load<'_>,
    id: &Id,
    entry: &str,
    near: &NearMiss,
) -> (String, String) {
    let noun = load.kind.table();
    let origin = refusal.origin.as_deref().unwrap_or("<no manifest>");
    if load.origin == Origin::Shared {
        return (
            format!(
                "is not admitted by a [[channel]] rule of the manifest {origin}: the file is \
                 shared by an engine's processes and mapped in place, so its bytes can change \
                 after any check and no hash pins it"
            ),
            format!(
                "if the message that named this file came from your own workers, run the \
                 program under `pickleguard record`, which writes the engine's [[channel]] rules \
                 (docs/manifest.md#channel-rules), or add one to {origin}:\n\n{entry}"
            ),
        );
    }
    if let Some((line, pinned)) = &near.same_source {
        let file = load.source.as_deref().unwrap_or("this file");
        return (
            format!(
                "is not in the manifest {origin}: {file} was pinned with another hash \
                 ({origin}:{line} has {pinned}; the file now has {id})"
            ),
            format!(
                "the file changed since it was pinned. If the change is trusted, replace the \
                 entry at {origin}:{line} with this one; otherwise do not load it:\n\n{entry}"
            ),
        );
    }
    if let Some((other, line)) = near.other_kind {
        let (covers, needs) = match other {
            Kind::Artifact => (
                "a whole file read by torch.load or joblib.load",
                "pickle.load reads it as one pickle, which a [[pickle]] entry pins",
            ),
            Kind::Pickle => (
                "one pickle read by pickle.load",
                "this loader reads the whole file, which an [[artifact]] entry pins",
            ),
        };
        return (
            format!(
                "is not in the manifest {origin} as a [[{noun}]] entry: its hash is there as \
                 an [[{}]] entry ({origin}:{line}), which covers {covers}",
                other.table()
            ),
            format!("{needs}; if it is trusted, add this entry to {origin}:\n\n{entry}"),
        );
    }
    why_and_hint(refusal, load.kind, id, entry)
}

fn why_and_hint(refusal: &Refusal, kind: Kind, id: &Id, entry: &str) -> (String, String) {
    let noun = kind.table();
    let origin = refusal.origin.as_deref().unwrap_or("<no manifest>");
    match &refusal.reason {
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
    }
}

/// The denial for a call-site pin (`pickleguard.loads(data, sha256=...)`) that the
/// payload does not match: `actual` is its identity in the pin's algorithm.
pub fn pin_mismatch(
    load: &Load<'_>,
    ids: &Identities<'_>,
    actual: &Id,
    expected: &Id,
    caller: Option<&Caller>,
) -> Denial {
    Denial {
        message: format!(
            "{} does not match the pinned {expected}.\nhint: the data changed since it was pinned; if the new data is trusted, update the pin",
            describe_payload(load, actual),
        ),
        kind: load.kind,
        sha256_hex: known_sha256_hex(ids),
        identity: actual.to_string(),
        size: load.size(),
        caller: caller.map(|c| c.name.clone()).unwrap_or_default(),
        code: "pin-mismatch",
        entry: String::new(),
    }
}

/// Why the backstop refused a global import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackstopReason {
    /// An import no load may make (pickleguard's own modules, a special-attribute
    /// walk); the text says which.
    AlwaysRefused,
    /// An import by an unpickler the gate did not start on judged bytes.
    NotAdmitted,
}

/// The denial the backstop raises for an import of `module.name`. `why` is the
/// fixed rule's text for `AlwaysRefused` (see `names::refused_even_when_admitted`).
pub fn backstop_denial(
    reason: BackstopReason,
    module: &str,
    name: &str,
    why: Option<&str>,
    caller: Option<&Caller>,
) -> Denial {
    let (code, why) = match reason {
        BackstopReason::AlwaysRefused => ("backstop-self", why.unwrap_or_default().to_owned()),
        BackstopReason::NotAdmitted => (
            "backstop",
            format!(
                "an unpickler that pickleguard did not admit tried to import {module}.{name}; \
                 something loaded a pickle through a path the gate does not cover (a function \
                 bound before activation, a second copy of _pickle, a subclass of the original \
                 C Unpickler, a load() loop of its own) or called find_class outside a load \
                 the gate judged"
            ),
        ),
    };
    Denial {
        message: format!(
            "pickleguard refused a global import: {why}.\nhint: load pickles through pickle.load/loads/Unpickler after activation, or activate pickleguard at interpreter start (PICKLEGUARD_MANIFEST) so no loader is bound before it"
        ),
        kind: Kind::Pickle,
        sha256_hex: String::new(),
        identity: String::new(),
        size: 0,
        caller: caller.map(|c| c.name.clone()).unwrap_or_default(),
        code,
        entry: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::digest;
    use crate::manifest::Manifest;

    fn caller() -> Caller {
        Caller {
            name: "app.models:load_model".into(),
            file: "/srv/app/models.py".into(),
            line: 12,
        }
    }

    fn refusal(reason: Reason) -> Refusal {
        Refusal {
            origin: Some("/etc/pg.toml".into()),
            algorithm: Algorithm::Sha256,
            layer: 1,
            mode: crate::policy::Mode::Enforce,
            reason,
        }
    }

    fn deny(load: &Load<'_>, reason: Reason) -> Denial {
        let data = load.data.to_vec();
        let mut compute = |a| digest(a, &data);
        let mut ids = Identities::new(&mut compute);
        describe(
            &refusal(reason),
            load,
            &mut ids,
            Some(&caller()),
            &NearMiss::default(),
        )
    }

    #[test]
    fn a_changed_file_names_both_hashes_and_the_entry_line() {
        let data = b"\x80\x04K\x02.";
        let load = Load::pickle(data, &[], Some("models/ranker.pkl".into()));
        let mut compute = |a| digest(a, data);
        let mut ids = Identities::new(&mut compute);
        let near = NearMiss {
            other_kind: None,
            same_source: Some((7, format!("sha256:{}", "ab".repeat(32)))),
        };
        let d = describe(
            &refusal(Reason::NotListed),
            &load,
            &mut ids,
            Some(&caller()),
            &near,
        );
        assert_eq!(d.code, "not-listed");
        assert!(d.message.contains(&format!(
            "is not in the manifest /etc/pg.toml: models/ranker.pkl was pinned with another hash (/etc/pg.toml:7 has sha256:{}; the file now has {})",
            "ab".repeat(32),
            d.identity
        )), "{}", d.message);
        assert!(d.message.contains("replace the entry at /etc/pg.toml:7"));
        assert!(d.message.ends_with(&d.entry));
    }

    #[test]
    fn a_hash_listed_under_the_other_kind_says_so() {
        let data = b"\x80\x04K\x02.";
        let load = Load::pickle(data, &[], None);
        let mut compute = |a| digest(a, data);
        let mut ids = Identities::new(&mut compute);
        let near = NearMiss {
            other_kind: Some((Kind::Artifact, 3)),
            same_source: None,
        };
        let d = describe(&refusal(Reason::NotListed), &load, &mut ids, None, &near);
        assert!(d.message.contains(
            "is not in the manifest /etc/pg.toml as a [[pickle]] entry: its hash is there as an [[artifact]] entry (/etc/pg.toml:3)"
        ), "{}", d.message);
        assert!(d.entry.starts_with("[[pickle]]\n"));
    }

    #[test]
    fn same_file_matches_trailing_paths_only_at_a_separator() {
        assert!(same_file("model.pkl", "model.pkl"));
        assert!(same_file(
            "./artifacts/model.pkl",
            "/srv/app/artifacts/model.pkl"
        ));
        assert!(same_file("/srv/app/model.pkl", "model.pkl"));
        assert!(!same_file("model.pkl", "old_model.pkl"));
        assert!(!same_file("a/model.pkl", "b/model.pkl"));
    }

    #[test]
    fn a_denial_names_hash_size_caller_and_a_pasteable_entry() {
        let data = b"\x80\x04K\x01.";
        let d = deny(&Load::pickle(data, &[], None), Reason::NotListed);
        let hex = crate::identity::to_hex(&digest(Algorithm::Sha256, data));
        assert_eq!(d.code, "not-listed");
        assert_eq!(d.sha256_hex, hex);
        assert_eq!(d.identity, format!("sha256:{hex}"));
        assert_eq!((d.size, d.caller.as_str()), (5, "app.models:load_model"));
        assert!(d.message.starts_with(&format!(
            "pickle sha256:{hex} (5 bytes) loaded by app.models:load_model (/srv/app/models.py:12) is not in the manifest /etc/pg.toml.\nhint: "
        )));
        assert!(d.message.ends_with(&d.entry));
        // The entry is a manifest entry as written: it parses and lists this hash.
        let manifest = Manifest::parse(&format!("version = 1\n{}", d.entry), "m.toml").unwrap();
        assert_eq!(manifest.entries().len(), 1);
        assert_eq!(manifest.entries()[0].ids[0].hex(), hex);
    }

    #[test]
    fn an_artifact_entry_quotes_its_source_and_names_the_loader() {
        let imports = [];
        let load = Load::artifact(
            b"PK",
            Some("dir/\"odd\".pt".into()),
            Some("torch.load"),
            &imports,
        );
        let d = deny(&load, Reason::NotListed);
        assert!(d
            .message
            .contains("(2 bytes, file dir/\"odd\".pt, read by torch.load)"));
        assert!(d.entry.starts_with("[[artifact]]\n"));
        assert!(d.entry.contains("source = \"dir/\\\"odd\\\".pt\"\n"));
        Manifest::parse(&format!("version = 1\n{}", d.entry), "m.toml").unwrap();
    }

    #[test]
    fn each_reason_has_its_code_and_its_hint() {
        let load = Load::pickle(b"N.", &[], None);
        let cases = [
            (
                Reason::NotListed,
                "not-listed",
                "add this entry to /etc/pg.toml",
            ),
            (
                Reason::StackMismatch {
                    patterns: vec![vec!["app.*:*".into()]],
                },
                "stack-mismatch",
                "only for callers matching [\"app.*:*\"]",
            ),
            (
                Reason::NoManifest,
                "no-manifest",
                "allow_pickles(token, only_objects=[\"sha256:",
            ),
            (
                Reason::BrokenManifest("line 3: bad".into()),
                "broken-manifest",
                "the manifest failed to load (line 3: bad)",
            ),
            (Reason::Scope, "scope", "a no_pickles() scope"),
        ];
        for (reason, code, text) in cases {
            let d = deny(&load, reason);
            assert_eq!(d.code, code);
            assert!(d.message.contains(text), "{code}: {}", d.message);
            assert!(d.message.contains("\nhint: "), "{code}");
        }
    }

    #[test]
    fn a_pin_mismatch_names_both_identities() {
        let load = Load::pickle(b"N.", &[], None);
        let mut compute = |a| digest(a, b"N.");
        let mut ids = Identities::new(&mut compute);
        let actual = ids.get(Algorithm::Sha256);
        let expected = Id::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap();
        let d = pin_mismatch(&load, &ids, &actual, &expected, None);
        assert_eq!(d.code, "pin-mismatch");
        assert!(d.message.contains(&format!(
            "{actual} (2 bytes) does not match the pinned {expected}"
        )));
        assert!(d.entry.is_empty());
    }

    #[test]
    fn backstop_denials_carry_no_identity() {
        let d = backstop_denial(BackstopReason::NotAdmitted, "os", "system", None, None);
        assert_eq!(d.code, "backstop");
        assert!(d.message.contains("tried to import os.system"));
        assert!(d.identity.is_empty() && d.sha256_hex.is_empty());
        let d = backstop_denial(
            BackstopReason::AlwaysRefused,
            "pickleguard._core",
            "x",
            Some("a pickle may not import pickleguard's own pickleguard._core.x"),
            Some(&caller()),
        );
        assert_eq!(
            (d.code, d.caller.as_str()),
            ("backstop-self", "app.models:load_model")
        );
        assert!(d.message.contains("pickleguard's own pickleguard._core.x"));
    }
}
