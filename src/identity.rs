//! A payload's identity: a cryptographic hash over the exact bytes the unpickler
//! consumes (or, for an artifact, over the whole file). SHA-256 is the default and
//! what `sha256sum` and model hubs print; BLAKE3 is the faster alternative.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// A digest; both algorithms produce 32 bytes.
pub type Digest = [u8; 32];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Sha256,
    Blake3,
}

impl Algorithm {
    /// Every algorithm, cheapest first: the order a load tries them in.
    pub const CHEAPEST_FIRST: [Algorithm; 2] = [Algorithm::Blake3, Algorithm::Sha256];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Blake3 => "blake3",
        }
    }

    pub fn parse(name: &str) -> Option<Algorithm> {
        match name {
            "sha256" => Some(Algorithm::Sha256),
            "blake3" => Some(Algorithm::Blake3),
            _ => None,
        }
    }

    fn index(self) -> usize {
        match self {
            Algorithm::Sha256 => 0,
            Algorithm::Blake3 => 1,
        }
    }
}

/// One identity: an algorithm and the digest it gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Id {
    pub algorithm: Algorithm,
    pub digest: Digest,
}

impl Id {
    /// Parse `algorithm:hex`; bare hex is SHA-256, as `sha256sum` prints it.
    pub fn parse(text: &str) -> Result<Id, String> {
        match text.split_once(':') {
            Some((name, _)) => match Algorithm::parse(name) {
                Some(algorithm) => Id::parse_as(algorithm, text),
                None => Err(format!(
                    "unknown hash algorithm {name:?} in {text:?}: use sha256 or blake3"
                )),
            },
            None => Id::parse_as(Algorithm::Sha256, text),
        }
    }

    /// Parse the value of a manifest key named after `algorithm`: 64 hex digits,
    /// optionally prefixed with `algorithm:`.
    pub fn parse_as(algorithm: Algorithm, text: &str) -> Result<Id, String> {
        let name = algorithm.name();
        if let Some((prefix, _)) = text.split_once(':') {
            if prefix != name {
                return Err(match Algorithm::parse(prefix) {
                    Some(_) => format!(
                        "{text:?} is a {prefix} digest, but this is a {name} value; write it as {prefix} = \"...\""
                    ),
                    None => format!("{name} value {text:?} has an unknown prefix {prefix:?}"),
                });
            }
        }
        let hex_part = text
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .unwrap_or(text);
        if hex_part.len() != 64 {
            return Err(format!(
                "{name} must be 64 hex digits, got {} characters in {text:?}",
                hex_part.chars().count()
            ));
        }
        let mut digest = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut digest)
            .map_err(|_| format!("{name} {text:?} is not hexadecimal"))?;
        Ok(Id { algorithm, digest })
    }

    pub fn hex(&self) -> String {
        to_hex(&self.digest)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex())
    }
}

enum Hasher {
    Sha256(Box<Sha256>),
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Box::default()),
            Algorithm::Blake3 => Hasher::Blake3(Box::default()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Blake3(h) => {
                h.update(data);
            }
        }
    }

    fn finalize(self) -> Digest {
        match self {
            Hasher::Sha256(h) => h.finalize().into(),
            Hasher::Blake3(h) => *h.finalize().as_bytes(),
        }
    }
}

pub fn digest(algorithm: Algorithm, data: &[u8]) -> Digest {
    match algorithm {
        Algorithm::Sha256 => Sha256::digest(data).into(),
        Algorithm::Blake3 if data.len() >= BLAKE3_TWO_THREADS_FROM => blake3_on_two_threads(data),
        Algorithm::Blake3 => *blake3::hash(data).as_bytes(),
    }
}

/// Inputs at least this large are hashed with BLAKE3 on two threads.
const BLAKE3_TWO_THREADS_FROM: usize = 4 << 20;

fn subtree_value(data: &[u8], offset: u64) -> blake3::hazmat::ChainingValue {
    use blake3::hazmat::HasherExt as _;
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(offset);
    hasher.update(data);
    hasher.finalize_non_root()
}

/// The chaining values of two adjacent subtrees, the left one on a scoped thread
/// of its own (a fresh thread, not a pool: a forked child has no pool threads),
/// or both on this thread if none can be started.
fn subtree_values_side_by_side(
    left: &[u8],
    right: &[u8],
    offset: u64,
) -> [blake3::hazmat::ChainingValue; 2] {
    let right_offset = offset + left.len() as u64;
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("pickleguard-blake3".into())
            .spawn_scoped(scope, || subtree_value(left, offset));
        let right_value = subtree_value(right, right_offset);
        let left_value = spawned
            .ok()
            .and_then(|handle| handle.join().ok())
            .unwrap_or_else(|| subtree_value(left, offset));
        [left_value, right_value]
    })
}

/// BLAKE3 of `data` with both halves of its tree hashed at once. The root joins
/// the largest power-of-two run of chunks with the rest; when the rest is small
/// (a pickle is mostly one big bytes object plus a few header bytes), the
/// power-of-two part is split into its two halves instead.
fn blake3_on_two_threads(data: &[u8]) -> Digest {
    use blake3::hazmat::{left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, Mode};
    let split = left_subtree_len(data.len() as u64) as usize;
    let (left, right) = data.split_at(split);
    let root = if right.len() * 4 >= data.len() {
        let [l, r] = subtree_values_side_by_side(left, right, 0);
        merge_subtrees_root(&l, &r, Mode::Hash)
    } else {
        let (left_left, left_right) = left.split_at(left.len() / 2);
        let [ll, lr] = subtree_values_side_by_side(left_left, left_right, 0);
        let left_value = merge_subtrees_non_root(&ll, &lr, Mode::Hash);
        merge_subtrees_root(&left_value, &subtree_value(right, split as u64), Mode::Hash)
    };
    *root.as_bytes()
}

pub fn sha256(data: &[u8]) -> Digest {
    digest(Algorithm::Sha256, data)
}

/// The SHA-256 of everything `reader` yields, read 64 KiB at a time into one
/// buffer rather than into memory the size of the input.
pub fn sha256_of_reader(reader: &mut impl std::io::Read) -> std::io::Result<Digest> {
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut block) {
            Ok(0) => return Ok(hasher.finalize().into()),
            Ok(n) => hasher.update(&block[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The identity of a pickle that consumes protocol-5 out-of-band buffers: the
/// pickle's bytes, then each buffer as its length (u64, little-endian) and its bytes.
/// Lengths make the boundaries unambiguous.
pub fn digest_with_buffers<'a>(
    algorithm: Algorithm,
    pickle: &[u8],
    buffers: impl IntoIterator<Item = &'a [u8]>,
) -> Digest {
    let mut buffers = buffers.into_iter().peekable();
    if buffers.peek().is_none() {
        return digest(algorithm, pickle);
    }
    let mut hasher = Hasher::new(algorithm);
    hasher.update(pickle);
    for buffer in buffers {
        hasher.update(&(buffer.len() as u64).to_le_bytes());
        hasher.update(buffer);
    }
    hasher.finalize()
}

pub fn to_hex(digest: &Digest) -> String {
    hex::encode(digest)
}

/// The digests of one payload already computed, one slot per algorithm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KnownDigests([Option<Digest>; 2]);

impl KnownDigests {
    /// Nothing computed yet.
    pub const NONE: KnownDigests = KnownDigests([None, None]);

    pub fn get(&self, algorithm: Algorithm) -> Option<Digest> {
        self.0[algorithm.index()]
    }

    /// These digests and `digest` for `algorithm`, computed elsewhere (while a
    /// file was copied).
    pub fn with(mut self, algorithm: Algorithm, digest: Digest) -> Self {
        *self.slot(algorithm) = Some(digest);
        self
    }

    fn slot(&mut self, algorithm: Algorithm) -> &mut Option<Digest> {
        &mut self.0[algorithm.index()]
    }
}

/// The identities of one payload, each computed at most once and only when a rule
/// asks for it: a load pays for a second hash only if the first did not decide.
pub struct Identities<'f> {
    compute: &'f mut dyn FnMut(Algorithm) -> Digest,
    known: KnownDigests,
}

impl<'f> Identities<'f> {
    pub fn new(compute: &'f mut dyn FnMut(Algorithm) -> Digest) -> Self {
        Identities {
            compute,
            known: KnownDigests::NONE,
        }
    }

    /// Identities of which some are known already,
    /// from an earlier look at the same bytes.
    pub fn seeded(compute: &'f mut dyn FnMut(Algorithm) -> Digest, known: KnownDigests) -> Self {
        Identities { compute, known }
    }

    /// What has been computed so far, to seed a later look at the same bytes.
    pub fn computed(&self) -> KnownDigests {
        self.known
    }

    pub fn get(&mut self, algorithm: Algorithm) -> Id {
        let slot = self.known.slot(algorithm);
        let digest = *slot.get_or_insert_with(|| (self.compute)(algorithm));
        Id { algorithm, digest }
    }

    pub fn known(&self, algorithm: Algorithm) -> Option<Id> {
        self.known
            .get(algorithm)
            .map(|digest| Id { algorithm, digest })
    }

    /// The identity already computed, if any (SHA-256 first), for messages.
    pub fn any_known(&self) -> Option<Id> {
        self.known(Algorithm::Sha256)
            .or_else(|| self.known(Algorithm::Blake3))
    }

    /// Every algorithm, those already computed first, then the cheapest: the order
    /// to look a payload up in, so a second hash is computed only if needed.
    pub fn lookup_order(&self) -> [Algorithm; 2] {
        let mut order = Algorithm::CHEAPEST_FIRST;
        if self.known(order[0]).is_none() && self.known(order[1]).is_some() {
            order.swap(0, 1);
        }
        order
    }
}

/// A hasher for maps keyed by digests (uniformly distributed already, and not
/// chosen by whoever supplies the payload, so a few of their bytes make the hash)
/// or by object addresses.
#[derive(Default)]
pub struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(7) ^ u64::from_le_bytes(word);
    }

    fn write_u8(&mut self, value: u8) {
        self.0 = self.0.rotate_left(7) ^ u64::from(value);
    }

    fn write_usize(&mut self, value: usize) {
        // Fibonacci hashing spreads addresses, whose low bits are all zero.
        self.0 = self.0.rotate_left(7) ^ (value as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub type BuildDigestHasher = std::hash::BuildHasherDefault<DigestHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        assert_eq!(
            to_hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            to_hex(&digest(Algorithm::Blake3, b"abc")),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
    }

    #[test]
    fn buffers_change_the_identity_and_boundaries_matter() {
        for algorithm in Algorithm::CHEAPEST_FIRST {
            let a = digest_with_buffers(algorithm, b"p", [b"ab".as_slice(), b"c".as_slice()]);
            let b = digest_with_buffers(algorithm, b"p", [b"a".as_slice(), b"bc".as_slice()]);
            assert_ne!(a, b);
            assert_ne!(a, digest(algorithm, b"p"));
            assert_eq!(
                digest_with_buffers(algorithm, b"p", []),
                digest(algorithm, b"p")
            );
        }
    }

    #[test]
    fn blake3_on_two_threads_is_blake3() {
        // Around the threshold, powers of two of chunks, and lopsided splits.
        let chunk = blake3::CHUNK_LEN;
        let base = BLAKE3_TWO_THREADS_FROM;
        let data: Vec<u8> = (0..(3 * base + 5 * chunk + 77))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        for len in [
            base,
            base + 1,
            base + 14,
            base + chunk,
            base + base / 4,
            base + base / 4 - 1,
            2 * base - 1,
            3 * base + 5 * chunk + 77,
        ] {
            let input = &data[..len];
            assert_eq!(
                blake3_on_two_threads(input),
                *blake3::hash(input).as_bytes(),
                "length {len}"
            );
        }
    }

    #[test]
    fn ids_parse_with_and_without_prefix() {
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let bare = Id::parse(hex).unwrap();
        assert_eq!(bare.algorithm, Algorithm::Sha256);
        assert_eq!(Id::parse(&format!("sha256:{hex}")).unwrap(), bare);
        let b3 = Id::parse(&format!("blake3:{hex}")).unwrap();
        assert_eq!(b3.algorithm, Algorithm::Blake3);
        assert_eq!(b3.to_string(), format!("blake3:{hex}"));
        assert!(Id::parse(&format!("md5:{hex}"))
            .unwrap_err()
            .contains("md5"));
        assert!(Id::parse_as(Algorithm::Blake3, &format!("sha256:{hex}")).is_err());
        assert!(Id::parse("abc").is_err());
    }

    #[test]
    fn identities_are_computed_once_and_on_demand() {
        let calls = std::cell::RefCell::new(Vec::new());
        let mut compute = |a: Algorithm| {
            calls.borrow_mut().push(a);
            digest(a, b"x")
        };
        let mut ids = Identities::new(&mut compute);
        assert!(ids.any_known().is_none());
        let first = ids.get(Algorithm::Blake3);
        assert_eq!(ids.get(Algorithm::Blake3), first);
        assert_eq!(ids.lookup_order(), [Algorithm::Blake3, Algorithm::Sha256]);
        assert_eq!(*calls.borrow(), [Algorithm::Blake3]);
        let known = ids.computed();
        let mut again = Identities::seeded(&mut compute, known);
        assert_eq!(again.get(Algorithm::Blake3), first);
        assert_eq!(again.lookup_order(), [Algorithm::Blake3, Algorithm::Sha256]);
        again.get(Algorithm::Sha256);
        assert_eq!(*calls.borrow(), [Algorithm::Blake3, Algorithm::Sha256]);
    }
}
