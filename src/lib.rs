//! pickleguard's core: delimit a pickle without running it, identify it by the hash
//! of its exact bytes, and decide whether the active policy lets it load.
//!
//! Everything but [`py`] is plain Rust, so `cargo test` covers it without an
//! interpreter. The `python` feature adds the PyO3 boundary built by maturin (`src/py/`).
#![deny(clippy::undocumented_unsafe_blocks)]

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
