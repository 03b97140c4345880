//! What the gate knows about one load: the bytes, what they are, where they came
//! from, and who loads them. Gathered by the binding, read by every decision and
//! report.

use crate::identity::KnownDigests;
use crate::manifest::Kind;

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
    /// For artifacts: the bytes are a buffer the program holds in memory (an
    /// engine's own message that it decodes with `torch.load`), not a file.
    pub in_memory: bool,
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
            in_memory: false,
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
            in_memory: false,
            known: KnownDigests::NONE,
        }
    }

    /// The same load, with digests of its bytes that are already known.
    pub fn knowing(mut self, known: KnownDigests) -> Self {
        self.known = known;
        self
    }

    /// The same artifact, read from a buffer in memory rather than from a file.
    pub fn from_memory(mut self) -> Self {
        self.in_memory = self.kind == Kind::Artifact;
        self
    }

    /// Whether `[[channel]]` rules may cover it: a pickle, or an artifact read
    /// from memory. A file is identified by its hash alone, whoever reads it.
    pub fn channel_rules_apply(&self) -> bool {
        self.kind == Kind::Pickle || self.in_memory
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
