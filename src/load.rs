//! What the gate knows about one load: the bytes, what they are, where they came
//! from, and who loads them. Gathered by the binding, read by every decision and
//! report.

use crate::identity::KnownDigests;
use crate::manifest::Kind;

/// Where an artifact's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A file: its hash alone decides, whoever reads it.
    File,
    /// A buffer the program holds in memory: an engine's own message that it
    /// decodes with `torch.load`. Channel rules may cover it too.
    Memory,
    /// A file an engine's own processes share while it loads, which the loader
    /// maps in place (joblib's temporary memmaps of `Parallel` arguments): the
    /// bytes can change after any check, so only a channel rule, which trusts
    /// the transport, admits it.
    Shared,
}

/// One load, as the gate sees it before deciding.
pub struct Load<'a> {
    pub kind: Kind,
    /// The pickle's bytes, or the whole artifact file.
    pub data: &'a [u8],
    /// Out-of-band buffers the pickle consumes; part of its identity.
    pub buffers: &'a [&'a [u8]],
    /// The file's name, when the payload came from a file object that has one.
    pub source: Option<String>,
    /// For artifacts: the loader that reads it (`torch.load`).
    pub loader: Option<&'a str>,
    /// For artifacts: the globals its pickles import, found by the adapter, with
    /// whether each is risky (for the journal, so `record` can flag them).
    pub artifact_imports: &'a [(String, bool)],
    /// For artifacts: where the bytes come from, which decides the rules that
    /// may admit them.
    pub origin: Origin,
    /// Digests of exactly these bytes already computed by a first look.
    pub known: KnownDigests,
}

impl<'a> Load<'a> {
    /// A pickle stream, with its out-of-band buffers.
    pub fn pickle(data: &'a [u8], buffers: &'a [&'a [u8]], source: Option<String>) -> Self {
        Load {
            kind: Kind::Pickle,
            data,
            buffers,
            source,
            loader: None,
            artifact_imports: &[],
            origin: Origin::File,
            known: KnownDigests::NONE,
        }
    }

    /// A whole file read by `loader`, with the imports its adapter found in it.
    pub fn artifact(
        data: &'a [u8],
        source: Option<String>,
        loader: Option<&'a str>,
        imports: &'a [(String, bool)],
    ) -> Self {
        Load {
            kind: Kind::Artifact,
            data,
            buffers: &[],
            source,
            loader,
            artifact_imports: imports,
            origin: Origin::File,
            known: KnownDigests::NONE,
        }
    }

    /// The same load, with digests of its bytes that are already known.
    pub fn knowing(mut self, known: KnownDigests) -> Self {
        self.known = known;
        self
    }

    /// The same artifact, read from a buffer in memory rather than from a file.
    pub fn from_memory(self) -> Self {
        self.from_origin(Origin::Memory)
    }

    /// The same artifact, with its bytes from `origin`.
    pub fn from_origin(mut self, origin: Origin) -> Self {
        if self.kind == Kind::Artifact {
            self.origin = origin;
        }
        self
    }

    /// Whether `[[channel]]` rules may cover it: a pickle, or an artifact read
    /// from memory or shared by an engine's processes. A file is identified by
    /// its hash alone, whoever reads it.
    pub fn channel_rules_apply(&self) -> bool {
        self.kind == Kind::Pickle || self.origin != Origin::File
    }

    /// Whether `[[pickle]]` or `[[artifact]]` entries may admit it: not bytes
    /// that stay shared and writable after the check, which no hash can pin.
    pub fn pins_apply(&self) -> bool {
        self.origin != Origin::Shared
    }

    pub fn size(&self) -> usize {
        self.data.len()
    }
}

/// The frame that asked for a load: the innermost one outside pickle's machinery
/// and pickleguard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `module:qualname`, as stack patterns name frames.
    pub name: String,
    pub file: String,
    pub line: i64,
}
