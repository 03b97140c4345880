//! The manifest: a reviewed TOML list of the pickles a program may load.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use crate::identity::{Algorithm, BuildDigestHasher, Id};
use crate::pattern::FramePattern;

mod fast;
pub mod index;

pub use crate::identity::Digest;

pub const SUPPORTED_VERSION: i64 = 1;

/// What an entry pins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `[[pickle]]`: one pickle stream, the exact bytes an unpickler consumes.
    Pickle,
    /// `[[artifact]]`: a whole file, as `sha256sum` hashes it, for loaders whose
    /// pickles do not stand alone (torch checkpoints, joblib files).
    Artifact,
}

impl Kind {
    pub fn table(self) -> &'static str {
        match self {
            Kind::Pickle => "pickle",
            Kind::Artifact => "artifact",
        }
    }
}

/// One `[[pickle]]` or `[[artifact]]` entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: Kind,
    /// One or two identities of the same content (sha256, blake3); any one matches.
    pub ids: Ids,
    /// `None` matches any caller. Shared by the entries with the same list.
    pub stack: Option<Arc<[FramePattern]>>,
    pub note: Option<String>,
    pub source: Option<String>,
    /// 1-based line of the entry's `sha256` key, for messages.
    pub line: usize,
}

/// An entry's identities, one or two (at most one an algorithm), kept inline
/// rather than allocated: a manifest may have tens of thousands of entries.
#[derive(Debug, Clone, Copy)]
pub struct Ids {
    ids: [Id; 2],
    len: usize,
}

impl Ids {
    fn new() -> Ids {
        let unused = Id {
            algorithm: Algorithm::Sha256,
            digest: [0; 32],
        };
        Ids {
            ids: [unused; 2],
            len: 0,
        }
    }

    /// Add the identity of one more algorithm (there are two).
    fn push(&mut self, id: Id) {
        self.ids[self.len] = id;
        self.len += 1;
    }
}

impl std::ops::Deref for Ids {
    type Target = [Id];
    fn deref(&self) -> &[Id] {
        &self.ids[..self.len]
    }
}

impl<'a> IntoIterator for &'a Ids {
    type Item = &'a Id;
    type IntoIter = std::slice::Iter<'a, Id>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// One `[[channel]]` rule: pickles loaded directly by one of `callers` (the innermost
/// frame outside pickle) are allowed whatever their hash. For a trusted transport,
/// such as multiprocessing's own pipes, whose messages change on every run.
#[derive(Debug, Clone)]
pub struct ChannelRule {
    pub name: String,
    pub callers: Vec<FramePattern>,
    /// When set, the caller must itself have been called by a function matching
    /// one of these: the transport's own code, not a user's direct call.
    pub called_from: Option<Vec<FramePattern>>,
    pub note: Option<String>,
    pub line: usize,
}

impl ChannelRule {
    /// Whether a load by `caller`, itself called by `called_from`, is this channel's.
    pub fn covers(&self, caller: &str, called_from: Option<&str>) -> bool {
        self.callers.iter().any(|p| p.matches(caller))
            && self.called_from.as_ref().is_none_or(|outer| {
                called_from.is_some_and(|name| outer.iter().any(|p| p.matches(name)))
            })
    }
}

#[derive(Debug, Clone, Default)]
pub struct Manifest {
    /// Where the manifest came from, as shown in messages (usually its path).
    pub origin: String,
    entries: Vec<Entry>,
    channels: Vec<ChannelRule>,
    by_id: HashMap<(Kind, Id), EntryIndices, BuildDigestHasher>,
    /// Which algorithms each kind's entries use, so a load hashes only with those.
    used: Vec<(Kind, Algorithm)>,
    /// Whether any entry has a `source` (kept, not searched: asked on every load).
    names_sources: bool,
}

/// The entries pinning one identity: almost always one, kept without a `Vec` of
/// its own (an allocation per entry is much of a large manifest's reading time).
#[derive(Debug, Clone)]
enum EntryIndices {
    One(usize),
    Many(Vec<usize>),
}

impl EntryIndices {
    fn push(&mut self, index: usize) {
        match self {
            EntryIndices::One(first) => *self = EntryIndices::Many(vec![*first, index]),
            EntryIndices::Many(indices) => indices.push(index),
        }
    }

    fn as_slice(&self) -> &[usize] {
        match self {
            EntryIndices::One(index) => std::slice::from_ref(index),
            EntryIndices::Many(indices) => indices,
        }
    }
}

/// A manifest that could not be read, with the position of the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    pub origin: String,
    /// 1-based; 0 when the problem has no position (the file could not be read).
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: String,
}

impl ManifestError {
    /// Where and what, without the hint: `origin:line:column: message`.
    pub fn located_message(&self) -> String {
        if self.line > 0 {
            format!(
                "{}:{}:{}: {}",
                self.origin, self.line, self.column, self.message
            )
        } else {
            format!("{}: {}", self.origin, self.message)
        }
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\nhint: {}", self.located_message(), self.hint)
    }
}

impl std::error::Error for ManifestError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest<'t> {
    version: Option<Spanned<i64>>,
    #[serde(default)]
    pickle: Vec<Spanned<RawEntry<'t>>>,
    #[serde(default)]
    artifact: Vec<Spanned<RawEntry<'t>>>,
    #[serde(default)]
    channel: Vec<RawChannel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    name: Spanned<String>,
    callers: Spanned<Vec<Spanned<String>>>,
    called_from: Option<Spanned<Vec<Spanned<String>>>>,
    note: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
// Digests and stack patterns are only read, so the fast reader lends them from
// the text (the toml crate's reader gives them owned).
struct RawEntry<'t> {
    sha256: Option<Spanned<Cow<'t, str>>>,
    blake3: Option<Spanned<Cow<'t, str>>>,
    stack: Option<Vec<Spanned<Cow<'t, str>>>>,
    note: Option<String>,
    source: Option<String>,
}

/// A key naming a list of pattern texts unambiguously (each length-prefixed: a
/// text may hold any character, escaped).
fn stack_key<'a>(key: &mut Vec<u8>, texts: impl Iterator<Item = &'a str>) {
    key.clear();
    for text in texts {
        key.extend_from_slice(&text.len().to_le_bytes());
        key.extend_from_slice(text.as_bytes());
    }
}

/// The newlines in `bytes`, counted in runs of 255 into a byte with wrapping adds,
/// which the compiler vectorizes (memchr would stop at each of them, and a `usize`
/// count with overflow checks stays a loop of one byte a step).
fn count_newlines(bytes: &[u8]) -> usize {
    bytes
        .chunks(255)
        .map(|run| {
            run.iter()
                .fold(0u8, |n, &b| n.wrapping_add(u8::from(b == b'\n'))) as usize
        })
        .sum()
}

/// Line and column (both 1-based, column in characters) of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The key whose value starts at `offset`: the name before the last `=` ahead of it,
/// and whether the value is an element of an array rather than the whole value.
fn key_before(text: &str, offset: usize) -> Option<(&str, bool)> {
    let before = text.get(..offset)?;
    let equals = before.rfind('=')?;
    let in_array = before[equals + 1..].contains('[');
    let name = before[..equals].trim_end();
    let start = name
        .rfind(|c: char| c.is_whitespace() || matches!(c, '{' | ',' | '[' | ']'))
        .map_or(0, |i| i + 1);
    let name = name[start..].trim_matches('"');
    (!name.is_empty()).then_some((name, in_array))
}

/// A serde type name (`string "1"`, `i64`, `a sequence`) as a manifest's reader says it.
fn toml_type(serde_name: &str) -> &'static str {
    const NAMES: [(&[&str], &str); 6] = [
        (&["string", "char"], "a string"),
        (&["integer", "i64", "u64", "i32", "u32"], "an integer"),
        (&["bool"], "a boolean (true or false)"),
        (&["floating", "f64", "f32"], "a number with a fraction"),
        (&["sequence", "array", "tuple"], "an array"),
        (&["map", "struct", "table"], "a table"),
    ];
    let words: Vec<&str> = serde_name.split_whitespace().collect();
    NAMES
        .iter()
        .find(|(keys, _)| words.iter().any(|w| keys.iter().any(|k| w.starts_with(k))))
        .map_or("another type", |(_, name)| name)
}

/// The toml crate's message with its serde vocabulary (`invalid type: string "1",
/// expected i64`) said in the manifest's own terms, naming the key.
fn plain_toml_message(message: &str, text: &str, span: Option<Range<usize>>) -> String {
    let at = span.as_ref().map(|s| s.start);
    if message == "duplicate key" {
        let key = at.and_then(|start| {
            let rest = text.get(start..)?;
            let end = rest.find(['=', '\n'])?;
            Some(rest[..end].trim().trim_matches('"').to_owned())
        });
        return match key {
            Some(key) if !key.is_empty() => {
                format!("duplicate key `{key}`: a key may appear only once in a table")
            }
            _ => "duplicate key: a key may appear only once in a table".to_owned(),
        };
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            let (expected, found) = (toml_type(expected), toml_type(found));
            return match at.and_then(|start| key_before(text, start)) {
                Some((key, true)) => {
                    format!("each item of `{key}` must be {expected}, not {found}")
                }
                Some((key, false)) => format!("`{key}` must be {expected}, not {found}"),
                None => format!("expected {expected} here, not {found}"),
            };
        }
    }
    message.to_owned()
}

/// Parse a `sha256` value: 64 hex digits, optionally prefixed `sha256:`.
pub fn parse_digest(text: &str) -> Result<Digest, String> {
    Id::parse_as(Algorithm::Sha256, text).map(|id| id.digest)
}

/// `Id::parse_as`, with a fast path for the common case of 64 lowercase or
/// uppercase hex digits, optionally behind the algorithm's own prefix: a
/// 10,000-entry manifest spends much of its reading time on its digests.
/// Each byte's value as a hex digit, or `NOT_HEX`: one table lookup a digit,
/// with no branch on the digit (64 of them an entry, in random order).
const NOT_HEX: u8 = 0xff;
const HEX_VALUE: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

fn parse_id(algorithm: Algorithm, text: &str) -> Result<Id, String> {
    let hex_part = text
        .strip_prefix(algorithm.name())
        .and_then(|rest| rest.strip_prefix(':'))
        .unwrap_or(text);
    if let Ok(pairs) = <&[u8; 64]>::try_from(hex_part.as_bytes()) {
        let mut digest = [0u8; 32];
        let mut seen = 0u8;
        for (byte, pair) in digest.iter_mut().zip(pairs.chunks_exact(2)) {
            let (high, low) = (HEX_VALUE[pair[0] as usize], HEX_VALUE[pair[1] as usize]);
            seen |= high | low;
            *byte = high << 4 | (low & 0x0f);
        }
        let decoded = seen & 0xf0 == 0;
        if decoded {
            return Ok(Id { algorithm, digest });
        }
    }
    // Anything else, errors included, as the identity module says it.
    Id::parse_as(algorithm, text)
}

/// One manifest's text while it is parsed: errors name its origin and point into
/// it; entries get the line they start on.
struct ManifestText<'t> {
    text: &'t str,
    origin: &'t str,
    seen_patterns: std::cell::RefCell<HashMap<String, FramePattern>>,
    /// Each distinct `stack` list, parsed once and shared: `record` writes the same
    /// list for every pickle one caller loads. Keyed by `stack_key`.
    seen_stacks: std::cell::RefCell<HashMap<Vec<u8>, Arc<[FramePattern]>>>,
    /// The offset `line_of` was last asked about, and the newlines before it:
    /// entries come in file order, so each answer goes on from the previous one
    /// and the whole text is scanned once.
    lines_before: std::cell::Cell<(usize, usize)>,
    /// Reused for each `stack_key`, so that looking up a known stack allocates nothing.
    stack_key: std::cell::RefCell<Vec<u8>>,
}

impl<'t> ManifestText<'t> {
    fn new(text: &'t str, origin: &'t str) -> Self {
        ManifestText {
            text,
            origin,
            seen_patterns: Default::default(),
            seen_stacks: Default::default(),
            lines_before: Default::default(),
            stack_key: Default::default(),
        }
    }

    fn fail(&self, span: Option<Range<usize>>, message: String, hint: &str) -> ManifestError {
        let (line, column) = span.map_or((1, 1), |s| position(self.text, s.start));
        ManifestError {
            origin: self.origin.to_owned(),
            line,
            column,
            message,
            hint: hint.to_owned(),
        }
    }

    fn line_of(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        let (mut from, mut before) = self.lines_before.get();
        if offset < from {
            (from, before) = (0, 0);
        }
        before += count_newlines(&self.text.as_bytes()[from..offset]);
        self.lines_before.set((offset, before));
        before + 1
    }

    fn patterns<S: AsRef<str>>(
        &self,
        patterns: &[Spanned<S>],
    ) -> Result<Vec<FramePattern>, ManifestError> {
        let mut parsed = Vec::with_capacity(patterns.len());
        for p in patterns {
            parsed.push(self.pattern(p)?);
        }
        Ok(parsed)
    }

    /// An entry's `stack` list, the same `Arc` for every entry with the same list.
    fn stack<S: AsRef<str>>(
        &self,
        patterns: &[Spanned<S>],
    ) -> Result<Arc<[FramePattern]>, ManifestError> {
        let mut key = self.stack_key.borrow_mut();
        stack_key(&mut key, patterns.iter().map(|p| p.get_ref().as_ref()));
        if let Some(known) = self.seen_stacks.borrow().get(key.as_slice()) {
            return Ok(known.clone());
        }
        let parsed: Arc<[FramePattern]> = self.patterns(patterns)?.into();
        self.seen_stacks
            .borrow_mut()
            .insert(key.clone(), parsed.clone());
        Ok(parsed)
    }

    fn pattern<S: AsRef<str>>(&self, p: &Spanned<S>) -> Result<FramePattern, ManifestError> {
        // Many entries share their patterns (a recorded caller pins all its
        // pickles): parse each distinct one once.
        let mut seen = self.seen_patterns.borrow_mut();
        let text = p.get_ref().as_ref();
        if let Some(known) = seen.get(text) {
            return Ok(known.clone());
        }
        let parsed = FramePattern::parse(text);
        if let Ok(pattern) = &parsed {
            seen.insert(text.to_owned(), pattern.clone());
        }
        parsed.map_err(|e| {
            // +1 skips the opening quote. An escape sequence in the TOML
            // string shifts this; stay inside the string then.
            let span = p.span();
            let at = (span.start + 1 + e.offset).min(span.end.saturating_sub(1));
            self.fail(
                Some(at..at),
                e.message,
                "stack patterns look like \"package.module:function\" and may use * and ?",
            )
        })
    }

    fn check_version(&self, version: &Option<Spanned<i64>>) -> Result<(), ManifestError> {
        match version {
            None => Err(self.fail(
                Some(0..0),
                "the manifest has no `version` key".into(),
                "add `version = 1` at the top of the file",
            )),
            Some(v) if *v.get_ref() != SUPPORTED_VERSION => Err(self.fail(
                Some(v.span()),
                format!("unsupported manifest version {}", v.get_ref()),
                "this pickleguard reads `version = 1`",
            )),
            Some(_) => Ok(()),
        }
    }

    /// One `[[pickle]]` or `[[artifact]]` table.
    fn entry(&self, kind: Kind, spanned: Spanned<RawEntry<'_>>) -> Result<Entry, ManifestError> {
        let table_span = spanned.span();
        let entry = spanned.into_inner();
        let mut ids = Ids::new();
        let mut first_key = None;
        for (algorithm, value) in [
            (Algorithm::Sha256, &entry.sha256),
            (Algorithm::Blake3, &entry.blake3),
        ] {
            let Some(value) = value else { continue };
            first_key.get_or_insert(value.span().start);
            let id = parse_id(algorithm, value.get_ref()).map_err(|message| {
                self.fail(
                    Some(value.span()),
                    message,
                    match algorithm {
                        Algorithm::Sha256 => "copy the digest from `pickleguard hash FILE`, `sha256sum FILE` or the denial message",
                        Algorithm::Blake3 => "copy the digest from `pickleguard hash --identity blake3 FILE`, `b3sum FILE` or the denial message",
                    },
                )
            })?;
            ids.push(id);
        }
        let Some(first_key) = first_key else {
            return Err(self.fail(
                Some(table_span),
                format!(
                    "a [[{}]] entry needs a `sha256` or `blake3` key",
                    kind.table()
                ),
                "add sha256 = \"<64 hex digits>\" (what `sha256sum` or `pickleguard hash` prints)",
            ));
        };
        let stack = match entry.stack {
            None => None,
            Some(patterns) => Some(self.stack(&patterns)?),
        };
        Ok(Entry {
            kind,
            ids,
            stack,
            note: entry.note,
            source: entry.source,
            line: self.line_of(first_key),
        })
    }

    /// One `[[channel]]` table.
    fn channel(&self, channel: RawChannel) -> Result<ChannelRule, ManifestError> {
        if channel.name.get_ref().trim().is_empty() {
            return Err(self.fail(
                Some(channel.name.span()),
                "a channel needs a name".into(),
                "name the transport, e.g. name = \"multiprocessing\"",
            ));
        }
        if channel.callers.get_ref().is_empty() {
            return Err(self.fail(
                Some(channel.callers.span()),
                "a channel needs at least one caller".into(),
                "list the functions that load the channel's messages, as `pickleguard record` writes them",
            ));
        }
        let called_from = match &channel.called_from {
            None => None,
            Some(outer) if outer.get_ref().is_empty() => {
                return Err(self.fail(
                    Some(outer.span()),
                    "called_from is empty, so no load could match this channel".into(),
                    "list the functions that call the channel's callers, or leave called_from out to allow any",
                ))
            }
            Some(outer) => Some(self.patterns(outer.get_ref())?),
        };
        Ok(ChannelRule {
            line: self.line_of(channel.name.span().start),
            name: channel.name.into_inner(),
            callers: self.patterns(channel.callers.get_ref())?,
            called_from,
            note: channel.note,
        })
    }
}

impl Manifest {
    /// Parse manifest `text`; `origin` names it in errors (a path, usually).
    ///
    /// A manifest in the plain shape that `record` and `pin` write is read by a
    /// fast reader of that subset of TOML; anything else, and any manifest with a
    /// problem, by the toml crate, so that every error is the toml crate's (or
    /// ours, on its values) with its position.
    pub fn parse(text: &str, origin: &str) -> Result<Manifest, ManifestError> {
        let source = ManifestText::new(text, origin);
        if let Some(raw) = fast::parse(text) {
            if let Ok(manifest) = Manifest::from_raw(raw, &source) {
                return Ok(manifest);
            }
        }
        Manifest::parse_with_toml(&source)
    }

    /// Parse with the toml crate alone.
    fn parse_with_toml(source: &ManifestText<'_>) -> Result<Manifest, ManifestError> {
        let text = source.text;
        let raw: RawManifest = toml::from_str(text).map_err(|e| {
            source.fail(
                e.span(),
                plain_toml_message(e.message().trim_end(), text, e.span()),
                "a manifest has `version = 1`, [[pickle]] and [[artifact]] tables (sha256 or blake3, stack, note, source) and [[channel]] tables (name, callers, called_from, note); see docs/manifest.md",
            )
        })?;
        Manifest::from_raw(raw, source)
    }

    /// Check the values of a parsed manifest and index its entries.
    fn from_raw(
        raw: RawManifest<'_>,
        source: &ManifestText<'_>,
    ) -> Result<Manifest, ManifestError> {
        source.check_version(&raw.version)?;
        let mut manifest = Manifest {
            origin: source.origin.to_owned(),
            ..Manifest::default()
        };
        let (pickles, artifacts) = (raw.pickle.len(), raw.artifact.len());
        manifest.entries.reserve(pickles + artifacts);
        manifest.by_id.reserve(pickles.saturating_add(artifacts));
        let tables = raw
            .pickle
            .into_iter()
            .map(|e| (Kind::Pickle, e))
            .chain(raw.artifact.into_iter().map(|e| (Kind::Artifact, e)));
        for (kind, spanned) in tables {
            manifest.push(source.entry(kind, spanned)?);
        }
        for channel in raw.channel {
            manifest.channels.push(source.channel(channel)?);
        }
        Ok(manifest)
    }

    pub fn channels(&self) -> &[ChannelRule] {
        &self.channels
    }

    /// The channel rule, if any, that covers a load by `caller` (`module:qualname`),
    /// itself called by `called_from`.
    pub fn channel_for(&self, caller: &str, called_from: Option<&str>) -> Option<&ChannelRule> {
        self.channels.iter().find(|c| c.covers(caller, called_from))
    }

    /// Read and parse the manifest at `path`.
    pub fn load(path: &str) -> Result<Manifest, ManifestError> {
        let (text, _) = read_manifest(path)?;
        Manifest::parse(&text, path)
    }

    /// Read the manifest at `path` to enforce it: from its index when one beside
    /// it was built from exactly these bytes and is trusted like the manifest
    /// (see `index`), by parsing the text otherwise.
    pub fn load_for_enforcement(path: &str) -> Result<Manifest, ManifestError> {
        if let Some(manifest) = index::load_trusted(path) {
            return Ok(manifest);
        }
        Manifest::load(path)
    }

    pub fn push(&mut self, entry: Entry) {
        for id in &entry.ids {
            if !self.used.contains(&(entry.kind, id.algorithm)) {
                self.used.push((entry.kind, id.algorithm));
            }
            let index = self.entries.len();
            self.by_id
                .entry((entry.kind, *id))
                .and_modify(|indices| indices.push(index))
                .or_insert(EntryIndices::One(index));
        }
        self.names_sources |= entry.source.is_some();
        self.entries.push(entry);
    }

    /// Whether any entry names the file it was pinned from (`source`), so that a
    /// refused load of that file can say the file changed.
    pub fn names_sources(&self) -> bool {
        self.names_sources
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entries of `kind` pinning `id`, in file order.
    pub fn entries_for<'a>(&'a self, kind: Kind, id: &Id) -> impl Iterator<Item = &'a Entry> + 'a {
        self.by_id
            .get(&(kind, *id))
            .map(EntryIndices::as_slice)
            .unwrap_or(&[])
            .iter()
            .map(|&i| &self.entries[i])
    }

    /// The algorithms the entries of `kind` use, cheapest first.
    pub fn algorithms(&self, kind: Kind) -> Vec<Algorithm> {
        Algorithm::CHEAPEST_FIRST
            .into_iter()
            .filter(|a| self.uses(kind, *a))
            .collect()
    }

    /// Whether some entry of `kind` is identified with `algorithm`.
    pub fn uses(&self, kind: Kind, algorithm: Algorithm) -> bool {
        self.used.contains(&(kind, algorithm))
    }

    /// The algorithm a new entry of `kind` should use: BLAKE3 if the manifest pins
    /// that kind with BLAKE3 alone, SHA-256 otherwise.
    pub fn preferred_algorithm(&self, kind: Kind) -> Algorithm {
        match self.algorithms(kind).as_slice() {
            [Algorithm::Blake3] => Algorithm::Blake3,
            _ => Algorithm::Sha256,
        }
    }
}

/// The text of the manifest at `path`, and its metadata (for its index's trust).
fn read_manifest(path: &str) -> Result<(String, std::fs::Metadata), ManifestError> {
    let fail = |e: &std::io::Error| ManifestError {
        origin: path.to_owned(),
        line: 0,
        column: 0,
        message: format!("could not read the manifest: {}", io_reason(e)),
        hint: "check the path given to activate()".into(),
    };
    let mut file = std::fs::File::open(path).map_err(|e| fail(&e))?;
    let metadata = file.metadata().map_err(|e| fail(&e))?;
    let mut text = String::with_capacity(metadata.len() as usize);
    std::io::Read::read_to_string(&mut file, &mut text).map_err(|e| fail(&e))?;
    Ok((text, metadata))
}

/// Why a file could not be read, in the words of the system's error message and
/// without Rust's decoration: "No such file or directory", not "... (os error 2)";
/// "the file is not UTF-8 text", not "stream did not contain valid UTF-8".
fn io_reason(error: &std::io::Error) -> String {
    if error.kind() == std::io::ErrorKind::InvalidData {
        return "the file is not UTF-8 text".into();
    }
    let text = error.to_string();
    match error.raw_os_error() {
        Some(code) => text
            .strip_suffix(&format!(" (os error {code})"))
            .unwrap_or(&text)
            .to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_errors_are_said_without_rust_decoration() {
        let dir = std::env::temp_dir().join(format!("pickleguard-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.toml");
        let latin1 = dir.join("latin1.toml");
        std::fs::write(&latin1, b"version = 1\n# caf\xe9\n").unwrap();
        let error = |path: &std::path::Path| Manifest::load(path.to_str().unwrap()).unwrap_err();
        assert_eq!(
            error(&missing).message,
            "could not read the manifest: No such file or directory"
        );
        assert_eq!(
            error(&latin1).message,
            "could not read the manifest: the file is not UTF-8 text"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    const HASH: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_entries_with_and_without_stack() {
        let text = format!(
            "version = 1\n[[pickle]]\nsha256 = \"{HASH}\"\n\n[[pickle]]\nsha256 = \"sha256:{HASH}\"\nstack = [\"app:main\", \"app.models:load_*\"]\nnote = \"weights\"\nsource = \"ckpt.pkl\"\n"
        );
        let m = Manifest::parse(&text, "m.toml").unwrap();
        assert_eq!(m.entries().len(), 2);
        let id = Id::parse(HASH).unwrap();
        let found: Vec<_> = m.entries_for(Kind::Pickle, &id).collect();
        assert_eq!(found.len(), 2);
        assert!(found[0].stack.is_none());
        assert_eq!(found[1].stack.as_ref().unwrap().len(), 2);
        assert_eq!(found[1].line, 6);
    }

    #[test]
    fn artifacts_and_blake3_entries_are_kept_apart() {
        let text = format!(
            "version = 1\n[[artifact]]\nsha256 = \"{HASH}\"\nnote = \"resnet\"\n[[pickle]]\nblake3 = \"{HASH}\"\n"
        );
        let m = Manifest::parse(&text, "m").unwrap();
        let sha = Id::parse(HASH).unwrap();
        let b3 = Id::parse(&format!("blake3:{HASH}")).unwrap();
        assert_eq!(m.entries_for(Kind::Artifact, &sha).count(), 1);
        assert_eq!(m.entries_for(Kind::Pickle, &sha).count(), 0);
        assert_eq!(m.entries_for(Kind::Pickle, &b3).count(), 1);
        assert_eq!(m.algorithms(Kind::Pickle), [Algorithm::Blake3]);
        assert_eq!(m.algorithms(Kind::Artifact), [Algorithm::Sha256]);
        assert_eq!(m.preferred_algorithm(Kind::Pickle), Algorithm::Blake3);
        assert_eq!(m.preferred_algorithm(Kind::Artifact), Algorithm::Sha256);
    }

    #[test]
    fn an_entry_may_carry_both_identities() {
        let text = format!("version = 1\n[[pickle]]\nsha256 = \"{HASH}\"\nblake3 = \"{HASH}\"\n");
        let m = Manifest::parse(&text, "m").unwrap();
        assert_eq!(m.entries()[0].ids.len(), 2);
        assert_eq!(
            m.algorithms(Kind::Pickle),
            [Algorithm::Blake3, Algorithm::Sha256]
        );
        assert_eq!(m.preferred_algorithm(Kind::Pickle), Algorithm::Sha256);
    }

    #[test]
    fn an_entry_without_a_hash_is_an_error_at_its_table() {
        let err = Manifest::parse("version = 1\n\n[[artifact]]\nnote = \"x\"\n", "m").unwrap_err();
        assert!(err.message.contains("[[artifact]]"), "{}", err.message);
        assert!(err.message.contains("sha256"), "{}", err.message);
        assert!(err.line >= 3, "{err}");
        let err = Manifest::parse("version = 1\n[[pickle]]\nblake3 = \"00\"\n", "m").unwrap_err();
        assert_eq!((err.line, err.column), (3, 10));
        assert!(err.message.contains("blake3"), "{}", err.message);
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let text = format!("version = 1\n[[pickle]]\nsha256 = \"{HASH}\"\nstak = []\n");
        let err = Manifest::parse(&text, "m.toml").unwrap_err();
        assert_eq!((err.line, err.column), (4, 1));
        assert!(err.message.contains("stak"), "{}", err.message);
        assert!(err.to_string().starts_with("m.toml:4:1: "));
    }

    #[test]
    fn bad_hex_and_bad_pattern_positions() {
        let err = Manifest::parse("version = 1\n[[pickle]]\nsha256 = \"xyz\"\n", "m").unwrap_err();
        assert_eq!((err.line, err.column), (3, 10));
        let text = format!("version = 1\n[[pickle]]\nsha256 = \"{HASH}\"\nstack = [\"a:b c\"]\n");
        let err = Manifest::parse(&text, "m").unwrap_err();
        assert_eq!((err.line, err.column), (4, 14));
    }

    #[test]
    fn non_ascii_pattern_errors_point_inside_the_string() {
        let text = format!("version = 1\n[[pickle]]\nsha256 = \"{HASH}\"\nstack = [\"a:é-\"]\n");
        let err = Manifest::parse(&text, "m").unwrap_err();
        assert_eq!((err.line, err.column), (4, 14));
        let text =
            format!("version = 1\n[[pickle]]\nsha256 = \"{HASH}\"\nstack = [\"a:\\u00e9-\"]\n");
        let err = Manifest::parse(&text, "m").unwrap_err();
        assert_eq!(err.line, 4);
    }

    #[test]
    fn channel_rules_match_the_innermost_caller() {
        let text = "version = 1\n[[channel]]\nname = \"multiprocessing\"\ncallers = [\"multiprocessing.connection:Connection.recv\"]\n";
        let m = Manifest::parse(text, "m").unwrap();
        assert_eq!(m.channels().len(), 1);
        assert!(m
            .channel_for("multiprocessing.connection:Connection.recv", None)
            .is_some());
        assert!(m.channel_for("app:load", None).is_none());
        let err = Manifest::parse(
            "version = 1\n[[channel]]\nname = \"x\"\ncallers = []\n",
            "m",
        )
        .unwrap_err();
        assert_eq!(err.line, 4);
    }

    #[test]
    fn version_is_required_and_checked() {
        assert!(Manifest::parse("", "m")
            .unwrap_err()
            .message
            .contains("version"));
        let err = Manifest::parse("\nversion = 2\n", "m").unwrap_err();
        assert_eq!((err.line, err.column), (2, 11));
    }

    #[test]
    fn type_errors_name_the_key_in_manifest_terms() {
        let message = |text: &str| Manifest::parse(text, "m.toml").unwrap_err().message;
        assert_eq!(
            message("version = \"1\"\n"),
            "`version` must be an integer, not a string"
        );
        assert_eq!(
            message("version = 1\n[[pickle]]\nsha256 = 5\n"),
            "`sha256` must be a string, not an integer"
        );
        assert_eq!(
            message("version = 1\n[[pickle]]\nsha256 = \"ab\"\nstack = [\"a:b\", 3]\n"),
            "each item of `stack` must be a string, not an integer"
        );
        assert_eq!(
            message("version = 1\npickle = 3\n"),
            "`pickle` must be an array, not an integer"
        );
        assert_eq!(
            message("version = true\n"),
            "`version` must be an integer, not a boolean (true or false)"
        );
    }

    #[test]
    fn a_duplicate_key_is_named() {
        let error = Manifest::parse("version = 1\nversion = 1\n", "m.toml").unwrap_err();
        assert_eq!(
            error.message,
            "duplicate key `version`: a key may appear only once in a table"
        );
        assert_eq!((error.line, error.column), (2, 1));
        let error = Manifest::parse(
            "version = 1\n[[pickle]]\nsha256 = \"aa\"\nsha256 = \"bb\"\n",
            "m.toml",
        )
        .unwrap_err();
        assert!(
            error.message.starts_with("duplicate key `sha256`"),
            "{}",
            error.message
        );
    }

    /// Both readers' results, for comparing them: `None` where a reader refused.
    fn both_readers(text: &str) -> (Option<String>, Result<String, ManifestError>) {
        let source = ManifestText::new(text, "m.toml");
        let fast = fast::parse(text)
            .and_then(|raw| Manifest::from_raw(raw, &source).ok())
            .map(|m| format!("{:?}", (m.entries, m.channels, m.used, m.names_sources)));
        let toml = Manifest::parse_with_toml(&source)
            .map(|m| format!("{:?}", (m.entries, m.channels, m.used, m.names_sources)));
        (fast, toml)
    }

    const SHAPES: &str = "# a comment\r\nversion = 1\n\n# recorded by record\n[[pickle]]\nsha256 = \"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"\nstack = [\n    \"app.models:load_*\",\n    \"app:main\",  # why\n]\nsource = \"ckpt caf\u{e9}.pkl\"\nnote = \"weights\"\n\n[[artifact]]\t# torch\nblake3 = \"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"\nsha256 = \"E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855\"\n[[pickle]]\nblake3 = \"blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262\"\nstack = [\"a:b\",\"c:d\",]\n[[channel]]\nname = \"multiprocessing\"\ncallers = [\"multiprocessing.connection:Connection.recv\"]\ncalled_from = []\nnote = \"\"\n[[channel]]\ncallers = [ \"x:y\" ]\nname = \"dask\"\ncalled_from = [\"dask.*:*\"]\n";

    #[test]
    fn the_fast_reader_reads_what_the_toml_crate_reads() {
        let (fast, toml) = both_readers(SHAPES);
        // The fast reader reads this one itself (an empty called_from is an error
        // of ours, so take it out), and agrees with the toml crate.
        let text = SHAPES.replace("called_from = []\n", "");
        assert!(fast::parse(&text).is_some());
        let (fast_ok, toml_ok) = both_readers(&text);
        assert_eq!(fast_ok.as_ref(), toml_ok.as_ref().ok());
        assert!(fast_ok.is_some());
        // With the error, the fast reader's result is refused and the error is the
        // toml path's.
        assert!(fast.is_none());
        assert!(toml.is_err());
        assert_eq!(
            Manifest::parse(SHAPES, "m.toml").unwrap_err(),
            Manifest::parse_with_toml(&ManifestText::new(SHAPES, "m.toml")).unwrap_err()
        );
    }

    #[test]
    fn the_fast_reader_refuses_what_is_outside_its_subset() {
        let entry = format!("version = 1\n[[pickle]]\nsha256 = \"{HASH}\"\n");
        for extra in [
            "note = \"a\\\"b\"\n", // an escape
            "note = 'literal'\n",
            "note = \"\"\"multi\"\"\"\n",
            "\"note\" = \"x\"\n", // a quoted key
            "note.x = \"x\"\n",   // a dotted key
            "Note = \"x\"\n",
            "note = \"x\" note = \"y\"\n",
            "note = \"x\"\nnote = \"y\"\n", // a duplicate key
            "stack = [\"a:b\" \"c:d\"]\n",
            "stack = [,]\n",
            "stack = [\"a:b\",,]\n",
            "stack = \"a:b\"\n",
            "note = [\"x\"]\n",
            "other = \"x\"\n",
            "[pickle]\n",
            "[[ pickle ]]\n",
            "[[pickles]]\n",
            "[[pickle]] x\n",
            "note = \"tab\tok but bell \u{7}\"\n",
            "# bell \u{7} in a comment\n",
            "note = \"x\"\r\n\r",
            "note = \"unterminated\n",
            "stack = [\"a:b\"\n",
            "note = { x = 1 }\n",
        ] {
            let text = format!("{entry}{extra}");
            assert!(fast::parse(&text).is_none(), "{text:?}");
        }
        for version in [
            "version = 01",
            "version = +1",
            "version = 1_0",
            "version = 1.0",
            "version = 0x1",
            "version = \"1\"",
            "version = 99999999999999999999",
            "version = 1\nversion = 1",
        ] {
            assert!(fast::parse(version).is_none(), "{version:?}");
        }
        assert!(fast::parse("[[channel]]\nname = \"x\"\n").is_none()); // no callers
        assert!(fast::parse("\u{feff}version = 1\n").is_none());
        assert!(fast::parse("[[pickle]]\nversion = 1\n").is_none());
    }

    #[test]
    fn mutated_manifests_read_alike_by_both_readers() {
        // Whatever the fast reader accepts, the toml crate must accept with the same
        // result: mutate a manifest of every shape byte by byte, many times over.
        let base: Vec<u8> = SHAPES.replace("called_from = []\n", "").into_bytes();
        let alphabet = b" \t\n\r#[]\"',=._-:*?\\{}0123456789abcdefxyzABC";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut fast_read, mut compared) = (0, 0);
        for _ in 0..20_000 {
            let mut text = base.clone();
            for _ in 0..1 + next() % 3 {
                let at = (next() as usize) % (text.len() + 1);
                let byte = alphabet[(next() as usize) % alphabet.len()];
                match next() % 3 {
                    0 if at < text.len() => text[at] = byte,
                    1 if at < text.len() => {
                        text.remove(at);
                    }
                    _ => text.insert(at, byte),
                }
            }
            let Ok(text) = String::from_utf8(text) else {
                continue;
            };
            compared += 1;
            let (fast, toml) = both_readers(&text);
            if let Some(fast) = fast {
                fast_read += 1;
                assert_eq!(Ok(&fast), toml.as_ref(), "{text:?}");
            }
            // And the whole parse agrees with the toml path, errors included.
            let shown = |m: Manifest| format!("{:?}", (m.entries, m.channels));
            assert_eq!(
                Manifest::parse(&text, "m.toml").map(shown),
                Manifest::parse_with_toml(&ManifestText::new(&text, "m.toml")).map(shown),
                "{text:?}"
            );
        }
        assert!(
            compared > 15_000 && fast_read > 2_000,
            "{compared} {fast_read}"
        );
    }

    #[test]
    fn the_fast_digest_parse_agrees_with_the_identity_module() {
        let mixed = "E3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85F";
        for text in [
            HASH.to_owned(),
            mixed.to_owned(),
            format!("sha256:{HASH}"),
            format!("blake3:{HASH}"),
            format!("sha256:{}", &HASH[1..]),
            format!("{}g", &HASH[1..]),
            format!("{}é", &HASH[2..]),
            "sha256:".to_owned(),
            String::new(),
        ] {
            for algorithm in [Algorithm::Sha256, Algorithm::Blake3] {
                assert_eq!(
                    parse_id(algorithm, &text),
                    Id::parse_as(algorithm, &text),
                    "{text:?}"
                );
            }
        }
    }

    #[test]
    fn every_ascii_byte_in_a_digest_is_decoded_as_the_identity_module_does() {
        for byte in 0u8..128 {
            let c = char::from(byte);
            for text in [format!("{c}{}", &HASH[1..]), format!("{}{c}", &HASH[..63])] {
                assert_eq!(
                    parse_id(Algorithm::Sha256, &text),
                    Id::parse_as(Algorithm::Sha256, &text),
                    "{text:?}"
                );
            }
        }
    }

    #[test]
    fn entries_know_their_lines_whatever_the_order_of_their_kinds() {
        // Pickles are read before artifacts: the lines are asked for out of order.
        let mut text = String::from("version = 1\n");
        let mut expected = Vec::new();
        for i in 0..12 {
            let table = if i % 3 == 1 { "artifact" } else { "pickle" };
            let digest = format!("{i:064x}");
            text.push_str(&format!("\n# entry {i}\n[[{table}]]\n"));
            expected.push((digest.clone(), text.lines().count() + 1));
            text.push_str(&format!("sha256 = \"{digest}\"\n"));
        }
        let m = Manifest::parse(&text, "m.toml").unwrap();
        for (digest, line) in expected {
            let id = Id::parse(&digest).unwrap();
            let found: Vec<_> = [Kind::Pickle, Kind::Artifact]
                .into_iter()
                .flat_map(|kind| m.entries_for(kind, &id))
                .collect();
            assert_eq!(found.len(), 1, "{digest}");
            assert_eq!(found[0].line, line, "{digest}");
        }
    }

    #[test]
    fn entries_with_the_same_stack_share_it_and_no_other() {
        let stacks = [
            r#"["a.b:c", "d:e"]"#,
            r#"["a.b:c"]"#,
            r#"["d:e", "a.b:c"]"#,
            r#"["a.b:c", "d:e"]"#,
            r#"["a.b:c"]"#,
            r#"["x.y:z*"]"#,
        ];
        let mut text = String::from("version = 1\n");
        for (i, stack) in stacks.iter().enumerate() {
            text.push_str(&format!(
                "[[pickle]]\nsha256 = \"{i:064x}\"\nstack = {stack}\n"
            ));
        }
        let m = Manifest::parse(&text, "m.toml").unwrap();
        let lists: Vec<_> = m
            .entries()
            .iter()
            .map(|e| e.stack.clone().expect("a stack"))
            .collect();
        for (list, stack) in lists.iter().zip(stacks) {
            let texts: Vec<String> = list.iter().map(|p| format!("\"{}\"", p.as_str())).collect();
            assert_eq!(format!("[{}]", texts.join(", ")), stack);
        }
        assert!(Arc::ptr_eq(&lists[0], &lists[3]) && Arc::ptr_eq(&lists[1], &lists[4]));
        assert!(!Arc::ptr_eq(&lists[0], &lists[2]) && !Arc::ptr_eq(&lists[1], &lists[5]));
    }

    #[test]
    fn syntax_error_has_position() {
        let err = Manifest::parse("version = 1\n[[pickle]\n", "m").unwrap_err();
        assert_eq!(err.line, 2);
    }
}
