//! The manifest index: a manifest's entries in a binary form that is read in a
//! fraction of the time the TOML takes, written by `pickleguard index` beside the
//! manifest (`.NAME.index`).
//!
//! It is only ever a faster way to read the same manifest, never a second source
//! of policy:
//! - it names the SHA-256 of the exact manifest bytes it was built from, and is
//!   used only when the manifest read now has that hash, so an edit is never
//!   missed (the stale index is ignored and the TOML read instead);
//! - it is used only if its owner is the manifest's and it is writable by no one
//!   the manifest is not writable by (`trusted_like`), so whoever could forge one
//!   could as well rewrite the manifest;
//! - a BLAKE3 digest of its body catches a file damaged on disk, and anything
//!   that does not decode exactly (a short file, a bad tag, bytes left over) means
//!   "no index", never an allowed load.

use super::{ChannelRule, Entry, Ids, Kind, Manifest};
use crate::identity::{Algorithm, Id};
use crate::pattern::FramePattern;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The first bytes of an index; the number is the format's version.
const MAGIC: &[u8; 16] = b"pickleguard-ix1\n";
/// Then the version of pickleguard that wrote it: another version's index is not
/// read, whatever its format, so an upgrade never reads entries it may mean otherwise.
const WRITER: &str = env!("CARGO_PKG_VERSION");

/// Where the index of the manifest at `real_path` (symlinks resolved) lives.
pub fn index_path(real_path: &Path) -> PathBuf {
    let name = real_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    real_path.with_file_name(format!(".{name}.index"))
}

/// Whether an index file (owner, mode) may stand in for a manifest (owner, mode):
/// the same owner, and no group or other write bit the manifest lacks.
pub fn trusted_like(index: (u32, u32), manifest: (u32, u32)) -> bool {
    let extra_writers = index.1 & 0o022 & !manifest.1;
    index.0 == manifest.0 && extra_writers == 0
}

/// The index of `manifest`, parsed from text whose SHA-256 is `text_sha256`.
pub fn encode(manifest: &Manifest, text_sha256: &[u8; 32]) -> Vec<u8> {
    let mut body = Writer::default();
    // Stack lists are shared between entries (`record` writes one per caller):
    // each distinct list once, by its address.
    let mut stacks: HashMap<*const FramePattern, u32> = HashMap::new();
    let mut stack_lists: Vec<&Arc<[FramePattern]>> = Vec::new();
    let mut entry_stacks = Vec::with_capacity(manifest.entries.len());
    for entry in &manifest.entries {
        entry_stacks.push(entry.stack.as_ref().map(|stack| {
            *stacks.entry(stack.as_ptr()).or_insert_with(|| {
                stack_lists.push(stack);
                (stack_lists.len() - 1) as u32
            })
        }));
    }
    body.u32(stack_lists.len() as u32);
    for stack in &stack_lists {
        body.patterns(stack);
    }
    body.u32(manifest.entries.len() as u32);
    for (entry, stack) in manifest.entries.iter().zip(&entry_stacks) {
        body.u8(match entry.kind {
            Kind::Pickle => 0,
            Kind::Artifact => 1,
        });
        body.u8(entry.ids.len() as u8);
        for id in entry.ids.iter() {
            body.u8(match id.algorithm {
                Algorithm::Sha256 => 0,
                Algorithm::Blake3 => 1,
            });
            body.bytes.extend_from_slice(&id.digest);
        }
        body.u32(stack.map_or(0, |s| s + 1));
        body.optional_text(entry.note.as_deref());
        body.optional_text(entry.source.as_deref());
        body.u64(entry.line as u64);
    }
    body.u32(manifest.channels.len() as u32);
    for channel in &manifest.channels {
        body.text(&channel.name);
        body.patterns(&channel.callers);
        match &channel.called_from {
            None => body.u8(0),
            Some(outer) => {
                body.u8(1);
                body.patterns(outer);
            }
        }
        body.optional_text(channel.note.as_deref());
        body.u64(channel.line as u64);
    }
    let mut index = Vec::with_capacity(MAGIC.len() + 64 + body.bytes.len());
    index.extend_from_slice(MAGIC);
    index.extend_from_slice(text_sha256);
    // The body starts with the writer's version, so the checksum covers it too.
    let mut body_bytes = Vec::with_capacity(body.bytes.len() + 4 + WRITER.len());
    body_bytes.extend_from_slice(&(WRITER.len() as u32).to_le_bytes());
    body_bytes.extend_from_slice(WRITER.as_bytes());
    body_bytes.extend_from_slice(&body.bytes);
    let body = Writer { bytes: body_bytes };
    index.extend_from_slice(blake3::hash(&body.bytes).as_bytes());
    index.extend_from_slice(&body.bytes);
    index
}

/// Why an index was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    /// It was built from other manifest bytes: the manifest changed since.
    Stale,
    /// Not an index of this version, or damaged.
    Damaged,
}

/// The manifest an index holds, if it was built from text whose SHA-256 is
/// `text_sha256` and decodes exactly; `origin` names it in messages.
pub fn decode(index: &[u8], text_sha256: &[u8; 32], origin: &str) -> Result<Manifest, Unusable> {
    let Some(rest) = index.strip_prefix(MAGIC.as_slice()) else {
        return Err(Unusable::Damaged);
    };
    if rest.len() < 64 {
        return Err(Unusable::Damaged);
    }
    let (hashes, body) = rest.split_at(64);
    if hashes[..32] != text_sha256[..] {
        return Err(Unusable::Stale);
    }
    if hashes[32..] != blake3::hash(body).as_bytes()[..] {
        return Err(Unusable::Damaged);
    }
    let mut reader = Reader { bytes: body };
    if reader.text() != Some(WRITER) {
        return Err(Unusable::Damaged);
    }
    read_body(&mut reader, origin).ok_or(Unusable::Damaged)
}

fn read_body(r: &mut Reader<'_>, origin: &str) -> Option<Manifest> {
    let stack_count = r.u32()? as usize;
    let mut stacks: Vec<Arc<[FramePattern]>> = Vec::with_capacity(stack_count.min(r.left()));
    for _ in 0..stack_count {
        stacks.push(r.patterns()?.into());
    }
    let entry_count = r.u32()? as usize;
    let mut manifest = Manifest {
        origin: origin.to_owned(),
        ..Manifest::default()
    };
    // Bounded by the bytes left, so a damaged count cannot reserve gigabytes.
    let capacity = entry_count.min(r.left() / 40);
    manifest.entries.reserve(capacity);
    manifest.by_id.reserve(capacity);
    for _ in 0..entry_count {
        let kind = match r.u8()? {
            0 => Kind::Pickle,
            1 => Kind::Artifact,
            _ => return None,
        };
        let mut ids = Ids::new();
        let id_count = r.u8()?;
        if !(1..=2).contains(&id_count) {
            return None;
        }
        for _ in 0..id_count {
            let algorithm = match r.u8()? {
                0 => Algorithm::Sha256,
                1 => Algorithm::Blake3,
                _ => return None,
            };
            let digest = r.take(32)?.try_into().ok()?;
            if ids.iter().any(|id| id.algorithm == algorithm) {
                return None;
            }
            ids.push(Id { algorithm, digest });
        }
        let stack = match r.u32()? {
            0 => None,
            n => Some(stacks.get(n as usize - 1)?.clone()),
        };
        let note = r.optional_text()?;
        let source = r.optional_text()?;
        let line = usize::try_from(r.u64()?).ok()?;
        manifest.push(Entry {
            kind,
            ids,
            stack,
            note,
            source,
            line,
        });
    }
    let channel_count = r.u32()? as usize;
    for _ in 0..channel_count {
        let name = r.text()?.to_owned();
        let callers = r.patterns()?;
        let called_from = match r.u8()? {
            0 => None,
            1 => Some(r.patterns()?),
            _ => return None,
        };
        let note = r.optional_text()?;
        let line = usize::try_from(r.u64()?).ok()?;
        manifest.channels.push(ChannelRule {
            name,
            callers,
            called_from,
            note,
            line,
        });
    }
    r.bytes.is_empty().then_some(manifest)
}

#[derive(Default)]
struct Writer {
    bytes: Vec<u8>,
}

impl Writer {
    fn u8(&mut self, value: u8) {
        self.bytes.push(value);
    }

    fn u32(&mut self, value: u32) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    fn u64(&mut self, value: u64) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    fn text(&mut self, text: &str) {
        self.u32(text.len() as u32);
        self.bytes.extend_from_slice(text.as_bytes());
    }

    fn optional_text(&mut self, text: Option<&str>) {
        match text {
            None => self.u8(0),
            Some(text) => {
                self.u8(1);
                self.text(text);
            }
        }
    }

    fn patterns(&mut self, patterns: &[FramePattern]) {
        self.u32(patterns.len() as u32);
        for pattern in patterns {
            self.text(pattern.as_str());
        }
    }
}

struct Reader<'b> {
    bytes: &'b [u8],
}

impl<'b> Reader<'b> {
    fn left(&self) -> usize {
        self.bytes.len()
    }

    fn take(&mut self, n: usize) -> Option<&'b [u8]> {
        if n > self.bytes.len() {
            return None;
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(taken)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn text(&mut self) -> Option<&'b str> {
        let len = self.u32()? as usize;
        std::str::from_utf8(self.take(len)?).ok()
    }

    fn optional_text(&mut self) -> Option<Option<String>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.text()?.to_owned())),
            _ => None,
        }
    }

    /// A list of stack patterns, each parsed again as the manifest's were: an
    /// index cannot hold a pattern the manifest reader would have refused.
    fn patterns(&mut self) -> Option<Vec<FramePattern>> {
        let count = self.u32()? as usize;
        let mut patterns = Vec::with_capacity(count.min(self.left() / 4));
        for _ in 0..count {
            patterns.push(FramePattern::parse(self.text()?).ok()?);
        }
        Some(patterns)
    }
}

/// The manifest at `path`, read from its index, if it has one that may stand in
/// for it and was built from exactly the bytes the manifest holds now. The
/// manifest is hashed as it is read, a block at a time, without keeping its text:
/// at start-up, fresh memory is much of the cost.
pub fn load_trusted(path: &str) -> Option<Manifest> {
    let mut file = std::fs::File::open(path).ok()?;
    let metadata = file.metadata().ok()?;
    let IndexFile::Trusted(index) = open_trusted(path, &metadata) else {
        return None;
    };
    let sha256 = crate::identity::sha256_of_reader(&mut file).ok()?;
    decode(&index, &sha256, path).ok()
}

/// What is beside a manifest, for `read_trusted` and `status`.
enum IndexFile {
    Absent,
    /// There, but not owned like the manifest, or writable by more people.
    Untrusted,
    Trusted(Vec<u8>),
}

#[cfg(unix)]
fn open_trusted(path: &str, manifest: &std::fs::Metadata) -> IndexFile {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let Ok(real) = std::fs::canonicalize(path) else {
        return IndexFile::Absent;
    };
    let Ok(mut file) = std::fs::File::open(index_path(&real)) else {
        return IndexFile::Absent;
    };
    // The metadata of what was opened (a symlink's target), not of the name.
    let Ok(metadata) = file.metadata() else {
        return IndexFile::Absent;
    };
    let owner_and_mode = |m: &std::fs::Metadata| (m.uid(), m.mode());
    if !metadata.is_file() || !trusted_like(owner_and_mode(&metadata), owner_and_mode(manifest)) {
        return IndexFile::Untrusted;
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    match file.read_to_end(&mut bytes) {
        Ok(_) => IndexFile::Trusted(bytes),
        Err(_) => IndexFile::Absent,
    }
}

/// Without owners and modes to compare, no index is trusted.
#[cfg(not(unix))]
fn open_trusted(_path: &str, _manifest: &std::fs::Metadata) -> IndexFile {
    IndexFile::Absent
}

/// What `pickleguard check` says of a manifest's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Absent,
    /// Not owned by the manifest's owner, or writable by someone the manifest is not.
    Untrusted,
    Stale,
    Damaged,
    /// Built from the manifest as it is now: enforcement reads it instead.
    Current,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Absent => "absent",
            Status::Untrusted => "untrusted",
            Status::Stale => "stale",
            Status::Damaged => "damaged",
            Status::Current => "current",
        }
    }
}

/// The state of the index of the manifest at `path`, read as enforcement reads it.
pub fn status(path: &str) -> std::io::Result<Status> {
    let mut file = std::fs::File::open(path)?;
    let metadata = file.metadata()?;
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut text)?;
    Ok(match open_trusted(path, &metadata) {
        IndexFile::Absent => Status::Absent,
        IndexFile::Untrusted => Status::Untrusted,
        IndexFile::Trusted(bytes) => match decode(&bytes, &crate::identity::sha256(&text), path) {
            Ok(_) => Status::Current,
            Err(Unusable::Stale) => Status::Stale,
            Err(Unusable::Damaged) => Status::Damaged,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"version = 1

[[pickle]]
sha256 = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
stack = ["app.train:load_*", "app.*:main"]
note = "a note"

[[pickle]]
sha256 = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
blake3 = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"
stack = ["app.train:load_*", "app.*:main"]

[[artifact]]
sha256 = "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd"
source = "weights/model.bin"

[[pickle]]
sha256 = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

[[channel]]
name = "multiprocessing"
callers = ["multiprocessing.connection:Connection.recv"]
called_from = ["multiprocessing.pool:*"]
note = "pools"
"#;

    fn parsed() -> Manifest {
        Manifest::parse(MANIFEST, "m.toml").unwrap()
    }

    fn sha() -> [u8; 32] {
        crate::identity::sha256(MANIFEST.as_bytes())
    }

    /// Everything a decision reads: entries, channels, and the lookups.
    fn same(a: &Manifest, b: &Manifest) {
        assert_eq!(format!("{:?}", a.entries), format!("{:?}", b.entries));
        assert_eq!(format!("{:?}", a.channels), format!("{:?}", b.channels));
        assert_eq!(a.used, b.used);
        assert_eq!(a.names_sources, b.names_sources);
        assert_eq!(a.origin, b.origin);
        assert_eq!(a.by_id.len(), b.by_id.len());
        for (key, indices) in &a.by_id {
            assert_eq!(indices.as_slice(), b.by_id[key].as_slice());
        }
    }

    #[test]
    fn an_index_decodes_to_the_manifest_it_was_built_from() {
        let manifest = parsed();
        let index = encode(&manifest, &sha());
        let decoded = decode(&index, &sha(), "m.toml").unwrap();
        same(&manifest, &decoded);
        // Entries that shared a stack list still share it.
        let stacks: Vec<_> = decoded.entries[..2]
            .iter()
            .map(|e| e.stack.as_ref().unwrap().as_ptr())
            .collect();
        assert_eq!(stacks[0], stacks[1]);
    }

    #[test]
    fn the_manifest_hashed_as_it_is_read_is_hashed_as_a_whole() {
        let big = MANIFEST.repeat(2000); // past one 64 KiB block
        for text in [MANIFEST, big.as_str()] {
            let streamed = crate::identity::sha256_of_reader(&mut text.as_bytes()).unwrap();
            assert_eq!(streamed, crate::identity::sha256(text.as_bytes()));
        }
    }

    #[test]
    fn an_index_of_other_bytes_is_stale() {
        let index = encode(&parsed(), &sha());
        let mut other = sha();
        other[0] ^= 1;
        assert_eq!(
            decode(&index, &other, "m.toml").unwrap_err(),
            Unusable::Stale
        );
    }

    #[test]
    fn every_damaged_or_cut_index_is_refused() {
        let index = encode(&parsed(), &sha());
        for cut in 0..index.len() {
            assert!(
                decode(&index[..cut], &sha(), "m.toml").is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = index.clone();
        longer.push(0);
        assert!(decode(&longer, &sha(), "m.toml").is_err());
        for at in 0..index.len() {
            for bit in [0x01u8, 0x80] {
                let mut flipped = index.clone();
                flipped[at] ^= bit;
                assert!(
                    decode(&flipped, &sha(), "m.toml").is_err(),
                    "bit {bit} at {at}"
                );
            }
        }
    }

    #[test]
    fn a_body_that_passes_its_checksum_must_still_decode_exactly() {
        // A body rewritten with a fresh checksum (a forger the owner check would
        // stop) still cannot hold what the manifest reader refuses.
        let manifest = parsed();
        let good = encode(&manifest, &sha());
        let body = &good[MAGIC.len() + 64..];
        let reseal = |body: &[u8]| {
            let mut index = MAGIC.to_vec();
            index.extend_from_slice(&sha());
            index.extend_from_slice(blake3::hash(body).as_bytes());
            index.extend_from_slice(body);
            index
        };
        assert!(decode(&reseal(body), &sha(), "m.toml").is_ok());
        let pattern = body
            .windows(b"app.*:main".len())
            .position(|w| w == b"app.*:main")
            .unwrap();
        let mut bad_pattern = body.to_vec();
        bad_pattern[pattern + 6] = b':'; // "app.*::ain": not a pattern
        assert!(decode(&reseal(&bad_pattern), &sha(), "m.toml").is_err());
        let mut trailing = body.to_vec();
        trailing.push(7);
        assert!(decode(&reseal(&trailing), &sha(), "m.toml").is_err());
        // Another version's index, however well formed.
        let mut other_version = body.to_vec();
        other_version[4 + WRITER.len() - 1] ^= 1;
        assert!(decode(&reseal(&other_version), &sha(), "m.toml").is_err());
    }

    #[test]
    fn an_index_is_trusted_only_like_its_manifest() {
        assert!(trusted_like((1000, 0o100644), (1000, 0o100644)));
        assert!(trusted_like((1000, 0o100600), (1000, 0o100644)));
        assert!(trusted_like((0, 0o100664), (0, 0o100664)));
        assert!(
            !trusted_like((1001, 0o100644), (1000, 0o100644)),
            "another owner"
        );
        assert!(
            !trusted_like((1000, 0o100664), (1000, 0o100644)),
            "group-writable"
        );
        assert!(
            !trusted_like((1000, 0o100646), (1000, 0o100644)),
            "world-writable"
        );
        assert!(
            !trusted_like((1000, 0o100666), (1000, 0o100664)),
            "world-writable"
        );
    }

    #[test]
    fn the_index_lives_beside_the_real_manifest() {
        assert_eq!(
            index_path(Path::new("/etc/app/pickleguard.toml")),
            PathBuf::from("/etc/app/.pickleguard.toml.index")
        );
    }
}
