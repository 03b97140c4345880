//! pickleguard's core: delimit a pickle without running it, identify it by the hash
//! of its exact bytes, and decide whether the active policy lets it load.
//!
//! Everything but `py` is plain Rust, so `cargo test` covers it without an
//! interpreter. The `python` feature adds the PyO3 boundary built by maturin (`src/py/`).
//!
//! # Modules
//!
//! Reading a pickle:
//! - [`reader`]: where exactly one pickle ends, and the out-of-band buffers it
//!   consumes, found without running it.
//! - [`scan`]: the globals a pickle would import, and whether a dry run of it is safe.
//! - [`classify`]: whether an imported global is safe, to review, or risky.
//!
//! Identity and policy:
//! - [`identity`]: a payload's identity, the SHA-256 or BLAKE3 hash of its exact bytes.
//! - [`manifest`]: the TOML manifest of allowed pickles, artifacts and channels.
//! - [`pattern`]: the call-stack patterns (`module:qualname` globs) entries restrict to.
//! - [`channels`]: the known transports `record` writes channel rules for.
//! - [`policy`]: process layers, deny scopes and grants, and whether they allow a load.
//! - [`load`]: what the gate knows about one load (bytes, kind, source, caller).
//! - [`gate`]: the verdict on one load (pin, then layers and scopes), and whether a
//!   whole input is allowed by its hash alone.
//! - [`report`]: the text, stable code and ready-to-paste entry of a denial.
//! - [`journal`]: the JSON lines of `record`'s journal and of the audit log.
//! - [`stderr`]: what warn-mode reports and caught denials print on stderr, and when.
//! - [`names`]: pickleguard's own and pickle's modules, and imports refused always.
//! - [`admission`]: where an admitted unpickler's `pickle.find_class` events must
//!   come from for the backstop to let them through.
//!
//! The binding, `py` (feature `python`), turns Python objects into these inputs and
//! the verdicts into log lines and exceptions; its own map is in `src/py/mod.rs`.
//!
//! Three words keep one meaning each: the gate *judges* a load (decides it under
//! the pin, layers and scopes); the binding *verifies* input (delimits it, has it
//! judged, and hands the unpickler exactly the judged bytes); the backstop *admits*
//! one `pickle.find_class` event (an import) of an unpickler the gate started.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod admission;
pub mod channels;
pub mod classify;
pub mod gate;
pub mod identity;
pub mod journal;
pub mod load;
pub mod manifest;
pub mod names;
pub mod pattern;
pub mod policy;
pub mod reader;
pub mod report;
pub mod scan;
pub mod stderr;

#[cfg(feature = "python")]
mod py;
