//! A payload's identity: SHA-256 over the exact bytes the unpickler consumes.

use sha2::{Digest as _, Sha256};

use crate::manifest::Digest;

pub fn sha256(data: &[u8]) -> Digest {
    Sha256::digest(data).into()
}

/// The identity of a pickle that consumes protocol-5 out-of-band buffers: the
/// pickle's bytes, then each buffer as its length (u64, little-endian) and its bytes.
/// Lengths make the boundaries unambiguous.
pub fn sha256_with_buffers<'a>(
    pickle: &[u8],
    buffers: impl IntoIterator<Item = &'a [u8]>,
) -> Digest {
    let mut hasher = Sha256::new();
    hasher.update(pickle);
    for buffer in buffers {
        hasher.update((buffer.len() as u64).to_le_bytes());
        hasher.update(buffer);
    }
    hasher.finalize().into()
}

pub fn to_hex(digest: &Digest) -> String {
    hex::encode(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        assert_eq!(
            to_hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn buffers_change_the_identity_and_boundaries_matter() {
        let a = sha256_with_buffers(b"p", [b"ab".as_slice(), b"c".as_slice()]);
        let b = sha256_with_buffers(b"p", [b"a".as_slice(), b"bc".as_slice()]);
        assert_ne!(a, b);
        assert_ne!(a, sha256(b"p"));
    }
}
