//! The PyO3 boundary, `pickleguard._core`: Python objects in, the core's
//! decisions out. Each file holds one concern; errors become Python exceptions
//! only in [`error`]. This file only declares the module.
//!
//! - [`entry`]: the guarded `loads`/`load` (pinned or not) and the originals they run.
//! - [`stream`], [`source`]: verifying a pickle read from a file or given as bytes.
//! - [`judge`]: hashing a load and judging it under the layers and scopes in force.
//! - [`feed`], [`unpickler`]: the private feed and the guarded unpickler classes.
//! - [`backstop`]: the audit hook that admits only the gate's own imports.
//! - [`scopes`], [`tokens`], [`activation`]: layers, deny scopes, grants, tokens,
//!   verified artifacts, and activation.
//! - [`artifact`]: a whole file's verified copy in sealed memory (`VerifiedFile`).
//! - [`frames`], [`log`], [`journal`]: call stacks, the logger, the journal and audit log.
//! - [`inspect`]: answers for the CLI that decide nothing; [`error`]: the one error type.

mod activation;
mod artifact;
mod backstop;
mod entry;
mod error;
mod feed;
mod frames;
mod inspect;
mod journal;
mod judge;
mod log;
mod scopes;
mod source;
mod stream;
mod tokens;
mod unpickler;

use pyo3::prelude::*;

#[pymodule]
#[pyo3(name = "_core")]
mod core_module {
    /// The package's version, `pickleguard.__version__`: Cargo.toml is its one
    /// source, and maturin writes the same into the wheel's metadata.
    #[pymodule_export]
    const VERSION: &str = env!("CARGO_PKG_VERSION");
    #[pymodule_export]
    use super::activation::{
        activate, activate_deferred, check_manifest, enforcing, in_artifact, journaling,
        manifest_index, manifest_index_status, no_pickles, record_layer, settle_manifests,
    };
    #[pymodule_export]
    use super::artifact::{verified_copy, VerifiedFile};
    #[pymodule_export]
    use super::backstop::install_backstop;
    #[pymodule_export]
    use super::entry::{bind_gate, load, loads, pinned_load, pinned_loads};
    #[pymodule_export]
    use super::feed::Feed;
    #[pymodule_export]
    use super::inspect::{
        channel_callers, channel_rules, classify_imports, delimit, dry_run_safe, hexdigest,
        identify, imports, manifest_summary, pattern_matches, process_layers, seal_type,
    };
    #[pymodule_export]
    use super::journal::{set_audit_log, start_journal};
    #[pymodule_export]
    use super::log::set_warn_stderr;
    #[pymodule_export]
    use super::stream::{verify_stream, VerifiedBytes};
    #[pymodule_export]
    use super::tokens::{allow_pickles, verify_artifact, ArtifactScope, Grant, Token};
    #[pymodule_export]
    use super::unpickler::{
        py_unpickler_find_class, py_unpickler_load, reads_artifact, unpickler_find_class,
        unpickler_load, UnpicklerSource,
    };
}
