//! A verified copy of a whole file: read once, with large sequential reads, into
//! memory that nothing can change afterwards, and hashed while it is read.
//!
//! On Linux the copy is a memfd sealed against writes, growing and shrinking
//! (`F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK`, then `F_SEAL_SEAL`). A loader that
//! maps its file or opens it by name is given `/proc/self/fd/N` of that memfd: it
//! maps or reads exactly the bytes that were hashed, never the original path again.
//! A read-only shared or a private (copy-on-write) mapping of a sealed memfd is
//! allowed; a writable shared one is not, so nothing can write through to it.
//!
//! The copy is made by one thread (reading the file into a few buffers of its own
//! and writing each into the memfd) while the calling thread hashes each buffer
//! once it has been written: what is hashed is what the loader gets.
//! Elsewhere, `copy_verified` says `Unsupported`, and the caller falls back to
//! reading the file into memory of its own.

use crate::identity::{Algorithm, Digest, KnownDigests};
use std::io;

/// Bytes read, written and hashed at a time: small enough that a buffer is still
/// in the cache when it is hashed, large enough that system calls cost nothing.
pub const CHUNK: usize = 1 << 20;

/// Buffers in flight between the copying thread and the hasher.
const BUFFERS: usize = 4;

/// What went wrong making a verified copy.
#[derive(Debug)]
pub enum CopyError {
    /// This platform has no sealable memory (or the kernel refused to make it);
    /// the caller reads the file into its own memory instead.
    Unsupported(io::Error),
    /// Reading the file or writing the copy failed.
    Io(io::Error),
}

impl std::fmt::Display for CopyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CopyError::Unsupported(e) => write!(f, "no sealed memory on this system: {e}"),
            CopyError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// Digests of a stream, updated as its bytes arrive.
pub struct StreamDigests {
    sha256: Option<sha2::Sha256>,
    blake3: Option<blake3::Hasher>,
}

impl StreamDigests {
    pub fn new(algorithms: &[Algorithm]) -> Self {
        use sha2::Digest as _;
        StreamDigests {
            sha256: algorithms
                .contains(&Algorithm::Sha256)
                .then(sha2::Sha256::new),
            blake3: algorithms
                .contains(&Algorithm::Blake3)
                .then(blake3::Hasher::new),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        use sha2::Digest as _;
        if let Some(h) = &mut self.sha256 {
            h.update(data);
        }
        if let Some(h) = &mut self.blake3 {
            h.update(data);
        }
    }

    pub fn finish(self) -> KnownDigests {
        use sha2::Digest as _;
        let mut known = KnownDigests::NONE;
        if let Some(h) = self.sha256 {
            let digest: Digest = h.finalize().into();
            known = known.with(Algorithm::Sha256, digest);
        }
        if let Some(h) = self.blake3 {
            known = known.with(Algorithm::Blake3, *h.finalize().as_bytes());
        }
        known
    }
}

#[cfg(target_os = "linux")]
pub use linux::{copy_verified, VerifiedCopy};

#[cfg(not(target_os = "linux"))]
pub use elsewhere::{copy_verified, VerifiedCopy};

#[cfg(not(target_os = "linux"))]
mod elsewhere {
    use super::*;

    /// Never made off Linux: `copy_verified` says `Unsupported`.
    #[derive(Debug)]
    pub struct VerifiedCopy(std::convert::Infallible);

    impl VerifiedCopy {
        pub fn bytes(&self) -> &[u8] {
            match self.0 {}
        }
        pub fn digests(&self) -> KnownDigests {
            match self.0 {}
        }
        pub fn raw_fd(&self) -> i32 {
            match self.0 {}
        }
    }

    pub fn copy_verified(
        _source: std::fs::File,
        _algorithms: &[Algorithm],
    ) -> Result<VerifiedCopy, CopyError> {
        Err(CopyError::Unsupported(io::Error::from(
            io::ErrorKind::Unsupported,
        )))
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use super::*;
    use std::fs::File;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::sync::mpsc;

    /// The sealed copy of a file: its memfd, mapped read-only, and the digests
    /// computed while it was copied.
    pub struct VerifiedCopy {
        fd: OwnedFd,
        map: Mapping,
        digests: KnownDigests,
    }

    impl std::fmt::Debug for VerifiedCopy {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "VerifiedCopy(fd {}, {} bytes)",
                self.raw_fd(),
                self.bytes().len()
            )
        }
    }

    impl VerifiedCopy {
        /// The verified bytes.
        pub fn bytes(&self) -> &[u8] {
            self.map.bytes()
        }

        /// The digests computed while copying (those asked for).
        pub fn digests(&self) -> KnownDigests {
            self.digests
        }

        /// The sealed memfd: `/proc/self/fd/N` opens or maps the verified bytes.
        pub fn raw_fd(&self) -> RawFd {
            self.fd.as_raw_fd()
        }
    }

    /// A read-only shared mapping of a whole memfd.
    struct Mapping {
        start: *const u8,
        len: usize,
    }

    // SAFETY: the mapping is read-only and its memory is sealed against writes (or,
    // before sealing, written only by the thread that made it, through the fd):
    // sharing a pointer to it between threads is as safe as sharing `&[u8]`.
    unsafe impl Send for Mapping {}
    // SAFETY: as above; nothing mutates through the mapping.
    unsafe impl Sync for Mapping {}

    impl Mapping {
        fn new(fd: RawFd, len: usize) -> io::Result<Mapping> {
            if len == 0 {
                return Ok(Mapping {
                    start: std::ptr::NonNull::dangling().as_ptr(),
                    len: 0,
                });
            }
            // SAFETY: a fresh mapping chosen by the kernel (no address given), of an
            // fd we own; the result is checked against MAP_FAILED.
            let start = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    fd,
                    0,
                )
            };
            if start == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            Ok(Mapping {
                start: start as *const u8,
                len,
            })
        }

        fn bytes(&self) -> &[u8] {
            // SAFETY: `start` maps `len` readable bytes for as long as `self` lives
            // (unmapped only in `drop`), and the memfd is never shrunk below `len`
            // while it is mapped. For `len == 0`, a dangling aligned pointer is a
            // valid empty slice.
            unsafe { std::slice::from_raw_parts(self.start, self.len) }
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            if self.len > 0 {
                // SAFETY: exactly the range `Mapping::new` mapped, unmapped once.
                unsafe { libc::munmap(self.start as *mut libc::c_void, self.len) };
            }
        }
    }

    fn check(result: libc::c_int) -> io::Result<libc::c_int> {
        if result < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(result)
        }
    }

    fn new_memfd() -> Result<OwnedFd, CopyError> {
        let name = c"pickleguard-verified";
        // SAFETY: a NUL-terminated name and flags; the result is checked.
        let fd = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        let fd = check(fd).map_err(CopyError::Unsupported)?;
        // SAFETY: memfd_create returned a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// The seals that make a memfd's contents final.
    pub const SEALS: libc::c_int =
        libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;

    fn seal(fd: RawFd) -> io::Result<()> {
        // SAFETY: fcntl on an fd we own; the result is checked.
        check(unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, SEALS) })?;
        // SAFETY: as above.
        let seals = check(unsafe { libc::fcntl(fd, libc::F_GET_SEALS) })?;
        if seals & SEALS != SEALS {
            return Err(io::Error::other("the kernel did not keep the seals"));
        }
        Ok(())
    }

    /// Read from `source` into `buffer` until it is full or the file ends; the
    /// number of bytes read (fewer than the buffer only at end of file).
    fn fill(source: &mut File, buffer: &mut [u8]) -> io::Result<usize> {
        use std::io::Read as _;
        let mut filled = 0;
        while filled < buffer.len() {
            match source.read(&mut buffer[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    }

    /// Copy all of `source` (from its current offset) into a new memfd, hashing
    /// it with each of `algorithms` as it arrives; seal it, and map it read-only.
    ///
    /// A copying thread reads each chunk into one of a few buffers of its own,
    /// writes it into the memfd, and hands the buffer to the calling thread, which
    /// hashes it and hands it back. A buffer is refilled only after it was both
    /// written and hashed, so the hashed bytes are exactly the memfd's bytes; the
    /// hash reads a buffer still in the cache, and the memfd's pages are never
    /// mapped for it.
    pub fn copy_verified(
        mut source: File,
        algorithms: &[Algorithm],
    ) -> Result<VerifiedCopy, CopyError> {
        let memfd = new_memfd()?;
        let mut digests = StreamDigests::new(algorithms);
        let (hand_over, filled) = mpsc::sync_channel::<(Vec<u8>, usize)>(BUFFERS);
        let (hand_back, free) = mpsc::sync_channel::<Vec<u8>>(BUFFERS);
        for _ in 0..BUFFERS {
            // Cannot fail: the channel has room for every buffer.
            let _ = hand_back.send(vec![0; CHUNK]);
        }
        let total = std::thread::scope(|scope| -> io::Result<usize> {
            let copier = std::thread::Builder::new()
                .name("pickleguard-copy".into())
                .spawn_scoped(scope, || -> io::Result<usize> {
                    use std::io::Write as _;
                    // Dropped when the copy ends, which ends the hasher's loop.
                    let (hand_over, free) = (hand_over, free);
                    let mut out = File::from(memfd.try_clone()?);
                    let mut total = 0usize;
                    // A hasher that has gone (it cannot) would end the copy here.
                    while let Ok(mut buffer) = free.recv() {
                        let n = fill(&mut source, &mut buffer)?;
                        if n == 0 {
                            break;
                        }
                        out.write_all(&buffer[..n])?;
                        total += n;
                        if hand_over.send((buffer, n)).is_err() {
                            break;
                        }
                    }
                    Ok(total)
                })
                .map_err(io::Error::other)?;
            for (buffer, n) in filled.iter() {
                digests.update(&buffer[..n]);
                // The copier may have finished and gone: nothing to hand back to.
                let _ = hand_back.send(buffer);
            }
            copier
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the copying thread panicked")))
        })
        .map_err(CopyError::Io)?;
        seal(memfd.as_raw_fd()).map_err(CopyError::Io)?;
        let map = Mapping::new(memfd.as_raw_fd(), total).map_err(CopyError::Io)?;
        Ok(VerifiedCopy {
            fd: memfd,
            map,
            digests: digests.finish(),
        })
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::identity::digest;
    use std::io::Write as _;
    use std::path::PathBuf;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "pickleguard-verified-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    const BOTH: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Blake3];

    fn assert_digests(copy: &VerifiedCopy, data: &[u8]) {
        for algorithm in BOTH {
            assert_eq!(copy.digests().get(algorithm), Some(digest(algorithm, data)));
        }
    }

    #[test]
    fn copies_and_hashes_files_of_every_size() {
        let dir = scratch("sizes");
        for len in [0, 1, 4095, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 77] {
            let data = pattern(len);
            let path = dir.join(format!("f{len}"));
            std::fs::write(&path, &data).unwrap();
            let copy = copy_verified(std::fs::File::open(&path).unwrap(), &BOTH).unwrap();
            assert_eq!(copy.bytes(), &data[..], "length {len}");
            assert_digests(&copy, &data);
            // The same bytes through the path a loader is given.
            let again = std::fs::read(format!("/proc/self/fd/{}", copy.raw_fd())).unwrap();
            assert_eq!(again, data);
        }
    }

    #[test]
    fn only_the_digests_asked_for_are_computed() {
        let dir = scratch("some");
        let path = dir.join("f");
        std::fs::write(&path, b"abc").unwrap();
        let copy =
            copy_verified(std::fs::File::open(&path).unwrap(), &[Algorithm::Blake3]).unwrap();
        assert_eq!(copy.digests().get(Algorithm::Sha256), None);
        assert!(copy.digests().get(Algorithm::Blake3).is_some());
    }

    #[test]
    fn the_copy_is_sealed_against_every_change() {
        let dir = scratch("sealed");
        let path = dir.join("f");
        std::fs::write(&path, pattern(3 * 4096)).unwrap();
        let copy = copy_verified(std::fs::File::open(&path).unwrap(), &BOTH).unwrap();
        let fd = copy.raw_fd();
        // SAFETY: fcntl on an fd the copy owns.
        let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
        assert_eq!(seals & linux_seals(), linux_seals());
        let proc_path = format!("/proc/self/fd/{fd}");
        let mut writer = std::fs::OpenOptions::new()
            .write(true)
            .open(&proc_path)
            .unwrap();
        assert!(writer.write_all(b"x").is_err());
        assert!(writer.set_len(1).is_err());
        assert!(writer.set_len(1 << 20).is_err());
        // A writable shared mapping is refused; a private one (copy on write, what
        // torch's mmap=True asks for) is allowed, and writes to it stay private.
        // SAFETY: mapping an fd the copy owns; results are checked, and the private
        // mapping is unmapped before the test ends.
        unsafe {
            let shared = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            assert_eq!(shared, libc::MAP_FAILED);
            let private = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                fd,
                0,
            );
            assert_ne!(private, libc::MAP_FAILED);
            *(private as *mut u8) = 0xAA;
            libc::munmap(private, 4096);
        }
        assert_eq!(copy.bytes(), &pattern(3 * 4096)[..]);
    }

    fn linux_seals() -> i32 {
        libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL
    }

    #[test]
    fn changing_the_file_afterwards_changes_nothing_in_the_copy() {
        let dir = scratch("swap");
        let path = dir.join("f");
        let data = pattern(CHUNK + 5);
        std::fs::write(&path, &data).unwrap();
        let copy = copy_verified(std::fs::File::open(&path).unwrap(), &BOTH).unwrap();
        // Rewritten in place, then replaced by rename.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all(b"changed")
            .unwrap();
        std::fs::write(dir.join("g"), b"other").unwrap();
        std::fs::rename(dir.join("g"), &path).unwrap();
        assert_eq!(copy.bytes(), &data[..]);
        let again = std::fs::read(format!("/proc/self/fd/{}", copy.raw_fd())).unwrap();
        assert_eq!(again, data);
    }

    #[test]
    fn a_fifo_is_copied_whole_then_hashed() {
        let dir = scratch("fifo");
        let path = dir.join("p");
        let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path; the result is checked.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let data = pattern(2 * CHUNK + 3);
        let writer = {
            let (path, data) = (path.clone(), data.clone());
            std::thread::spawn(move || {
                let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
                for piece in data.chunks(100_000) {
                    f.write_all(piece).unwrap();
                }
            })
        };
        let copy = copy_verified(std::fs::File::open(&path).unwrap(), &BOTH).unwrap();
        writer.join().unwrap();
        assert_eq!(copy.bytes(), &data[..]);
        assert_digests(&copy, &data);
    }

    #[test]
    fn a_file_changed_after_it_was_opened_is_copied_as_read() {
        // Opened at one size, then changed before the copy starts: the copy is
        // what reading from the open file gives, and its digest is of the copy.
        let dir = scratch("grow");
        let path = dir.join("f");
        std::fs::write(&path, pattern(10)).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let longer = pattern(CHUNK + 10);
        std::fs::write(&path, &longer).unwrap();
        let copy = copy_verified(file, &BOTH).unwrap();
        assert_eq!(copy.bytes(), &longer[..]);
        assert_digests(&copy, &longer);

        std::fs::write(&path, pattern(CHUNK + 10)).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(7)
            .unwrap();
        let copy = copy_verified(file, &BOTH).unwrap();
        assert_eq!(copy.bytes(), &pattern(7)[..]);
        assert_digests(&copy, &pattern(7));
    }
}
