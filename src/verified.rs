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
//! The copy is made by one thread (`sendfile` from the page cache into the memfd,
//! in chunks) while the calling thread hashes each chunk as soon as it is in the
//! memfd, through a read-only mapping: what is hashed is what the loader gets.
//! Elsewhere, `copy_verified` says `Unsupported`, and the caller falls back to
//! reading the file into memory of its own.

use crate::identity::{Algorithm, Digest, KnownDigests};
use std::io;

/// Bytes copied between two looks by the hasher: large enough that the system
/// calls cost nothing next to the copy, small enough to overlap well.
pub const CHUNK: usize = 8 << 20;

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

        /// Map in the pages of `range` at once (`MADV_POPULATE_READ`, Linux 5.14),
        /// rather than one fault per page as they are hashed; a kernel without it
        /// faults them in as before.
        fn populate(&self, range: std::ops::Range<usize>) {
            const MADV_POPULATE_READ: libc::c_int = 22;
            if range.is_empty() {
                return;
            }
            // Down to a page boundary (4 KiB pages; on larger ones madvise fails
            // with EINVAL, which is ignored like any other failure).
            let start = range.start & !4095;
            // SAFETY: `start..range.end` lies inside the mapping (callers pass
            // sub-ranges of `0..len`, and `start` only moves down within it);
            // madvise only reads the pages in, and its result is ignored on purpose.
            unsafe {
                libc::madvise(
                    self.start.add(start) as *mut libc::c_void,
                    range.end - start,
                    MADV_POPULATE_READ,
                )
            };
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

    fn size_of(fd: RawFd) -> io::Result<(bool, u64)> {
        // SAFETY: fstat fills the zeroed struct it is given; the result is checked.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is open (owned by the caller) and `stat` is writable.
        check(unsafe { libc::fstat(fd, &mut stat) })?;
        let regular = stat.st_mode & libc::S_IFMT == libc::S_IFREG;
        Ok((regular, stat.st_size as u64))
    }

    fn truncate(fd: RawFd, len: u64) -> io::Result<()> {
        // SAFETY: ftruncate on an fd we own; the result is checked.
        check(unsafe { libc::ftruncate(fd, len as libc::off_t) }).map(drop)
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

    /// Copy `count` bytes (or up to end of file) from `source` to `memfd` at their
    /// current offsets; the number copied, 0 at end of file. `sendfile` copies in
    /// the kernel; a source it cannot read from (a FIFO, a device) is read and
    /// written through `buffer`.
    fn copy_some(
        source: &mut File,
        memfd: &OwnedFd,
        out: &mut File,
        count: usize,
        buffer: &mut Vec<u8>,
        use_sendfile: &mut bool,
    ) -> io::Result<usize> {
        use std::io::{Read as _, Write as _};
        if *use_sendfile {
            // SAFETY: both fds are open for the whole call; a null offset uses and
            // advances the source's own offset.
            let sent = unsafe {
                libc::sendfile(
                    memfd.as_raw_fd(),
                    source.as_raw_fd(),
                    std::ptr::null_mut(),
                    count,
                )
            };
            if sent >= 0 {
                return Ok(sent as usize);
            }
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EINVAL) | Some(libc::ENOSYS) => *use_sendfile = false,
                Some(libc::EINTR) => return Ok(usize::MAX),
                _ => return Err(error),
            }
        }
        buffer.resize(count.min(CHUNK), 0);
        let read = loop {
            match source.read(buffer) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        out.write_all(&buffer[..read])?;
        Ok(read)
    }

    /// Copy all of `source` (from its current offset) into a new memfd, hashing
    /// it with each of `algorithms` as it arrives; seal it, and map it read-only.
    pub fn copy_verified(
        mut source: File,
        algorithms: &[Algorithm],
    ) -> Result<VerifiedCopy, CopyError> {
        let memfd = new_memfd()?;
        let (regular, size) = size_of(source.as_raw_fd()).map_err(CopyError::Io)?;
        let mut digests = StreamDigests::new(algorithms);
        // A regular file: the memfd is sized up front and mapped, so each chunk
        // is hashed in the memfd while the next is copied. Anything else (a FIFO)
        // has no size to go by: copied whole, then hashed.
        let expected = if regular { size as usize } else { 0 };
        if expected > 0 {
            truncate(memfd.as_raw_fd(), expected as u64).map_err(CopyError::Io)?;
        }
        let early = Mapping::new(memfd.as_raw_fd(), expected).map_err(CopyError::Io)?;
        let (progress, copied) = mpsc::sync_channel::<usize>(4);
        let total = std::thread::scope(|scope| -> io::Result<usize> {
            let copier = std::thread::Builder::new()
                .name("pickleguard-copy".into())
                .spawn_scoped(scope, || -> io::Result<usize> {
                    // Dropped when the copy ends, which ends the hasher's loop.
                    let progress = progress;
                    let mut total = 0usize;
                    let mut buffer = Vec::new();
                    let mut use_sendfile = regular;
                    let mut out = File::from(memfd.try_clone()?);
                    loop {
                        let n = copy_some(
                            &mut source,
                            &memfd,
                            &mut out,
                            CHUNK,
                            &mut buffer,
                            &mut use_sendfile,
                        )?;
                        if n == usize::MAX {
                            continue; // interrupted before anything was copied
                        }
                        if n == 0 {
                            return Ok(total);
                        }
                        total += n;
                        // The hasher may fall behind; the channel holds it to a few
                        // chunks. A hasher that has gone (it failed) ends the copy.
                        let _ = progress.send(total);
                    }
                })
                .map_err(io::Error::other)?;
            let mut hashed = 0usize;
            for done in copied.iter() {
                let upto = done.min(expected);
                if upto > hashed {
                    early.populate(hashed..upto);
                    digests.update(&early.bytes()[hashed..upto]);
                    hashed = upto;
                }
            }
            copier
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the copying thread panicked")))
        })
        .map_err(CopyError::Io)?;
        let hashed = total.min(expected);
        drop(early);
        if total < expected {
            // The file shrank while it was read: the copy is what was read.
            truncate(memfd.as_raw_fd(), total as u64).map_err(CopyError::Io)?;
        }
        seal(memfd.as_raw_fd()).map_err(CopyError::Io)?;
        let map = Mapping::new(memfd.as_raw_fd(), total).map_err(CopyError::Io)?;
        // What was not hashed chunk by chunk (the part past the size the file had
        // when it was opened, or all of a FIFO), hashed now that it is sealed.
        digests.update(&map.bytes()[hashed..]);
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
