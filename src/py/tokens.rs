//! Tokens and grants: what lifts a layer or scope (`allow_pickles`), and the
//! with-block of a verified artifact.

use super::activation::enforcing;
use super::artifact::VerifiedFile;
use super::error::{GuardError, Result};
use super::judge::judge;
use super::scopes::{
    active_scopes, current_nodes, current_owner, push_node, remove_node, set_nodes, ArtifactBytes,
    GrantState, ScopeNode, ScopeState, VerifiedArtifact, PROCESS_LAYERS,
};
use super::source::snapshot_bytes;
use crate::identity::Id;
use crate::identity::KnownDigests;
use crate::load::{Load, Origin};
use crate::manifest::Kind;
use crate::policy::LayerId;
use parking_lot::Mutex;
use pyo3::prelude::*;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub(super) enum TokenKind {
    Process(LayerId),
    Scope(Arc<ScopeState>),
}

/// The right to lift one layer, handed out by `activate()` and `no_pickles()`.
/// It cannot be created, copied or pickled from Python.
#[pyclass(frozen, module = "pickleguard._core")]
pub(super) struct Token {
    pub(super) kind: TokenKind,
}

pub(super) fn not_copyable() -> GuardError {
    GuardError::BadToken(
        "pickleguard tokens cannot be copied or pickled; pass the token object itself to allow_pickles()".into(),
    )
}

#[pymethods]
impl Token {
    pub(super) fn __repr__(&self) -> String {
        match &self.kind {
            TokenKind::Process(id) => format!("<pickleguard token for process layer {id}>"),
            TokenKind::Scope(s) => format!(
                "<pickleguard token for no_pickles() scope {} ({})>",
                s.id,
                if s.open.load(Ordering::Acquire) {
                    "open"
                } else {
                    "ended"
                }
            ),
        }
    }

    pub(super) fn __enter__(slf: Bound<'_, Self>) -> Result<Bound<'_, Self>> {
        if let TokenKind::Process(_) = slf.get().kind {
            return Err(GuardError::Guard(
                "the process layer from activate() cannot be used as a with-block or closed; use `with allow_pickles(token):` to lift it for a block".into(),
            ));
        }
        Ok(slf)
    }

    #[pyo3(signature = (*_args))]
    pub(super) fn __exit__(
        &self,
        py: Python<'_>,
        _args: &Bound<'_, pyo3::types::PyTuple>,
    ) -> Result<bool> {
        self.close(py)?;
        Ok(false)
    }

    /// End this `no_pickles()` scope everywhere. The process layer cannot be closed.
    pub(super) fn close(&self, py: Python<'_>) -> Result<()> {
        match &self.kind {
            TokenKind::Process(_) => Err(GuardError::Guard(
                "the process layer from activate() cannot be closed".into(),
            )),
            TokenKind::Scope(scope) => {
                scope.open.store(false, Ordering::Release);
                remove_node(py, &ScopeNode::Deny(scope.clone()))?;
                Ok(())
            }
        }
    }

    pub(super) fn __copy__(&self) -> Result<()> {
        Err(not_copyable())
    }

    pub(super) fn __deepcopy__(&self, _memo: &Bound<'_, PyAny>) -> Result<()> {
        Err(not_copyable())
    }

    pub(super) fn __reduce__(&self) -> Result<()> {
        Err(not_copyable())
    }

    pub(super) fn __reduce_ex__(&self, _protocol: &Bound<'_, PyAny>) -> Result<()> {
        Err(not_copyable())
    }

    pub(super) fn __getstate__(&self) -> Result<()> {
        Err(not_copyable())
    }
}

/// `allow_pickles(token, ...)`: a with-block that lifts the token's layer.
#[pyclass(frozen, module = "pickleguard._core")]
pub(super) struct Grant {
    pub(super) token: TokenKind,
    pub(super) only: Option<HashSet<Id>>,
    pub(super) entered: Mutex<Vec<Arc<GrantState>>>,
}

pub(super) fn check_scope_usable(py: Python<'_>, scope: &Arc<ScopeState>) -> Result<()> {
    if !scope.open.load(Ordering::Acquire) {
        return Err(GuardError::BadToken(
            "this token has expired: its no_pickles() scope has ended".into(),
        ));
    }
    let here = current_nodes(py)?;
    if !here.iter().any(|n| n.same(&ScopeNode::Deny(scope.clone()))) {
        return Err(GuardError::BadToken(
            "this token's no_pickles() scope is not active in this thread or task".into(),
        ));
    }
    Ok(())
}

#[pymethods]
impl Grant {
    pub(super) fn __enter__(slf: Bound<'_, Self>) -> Result<Bound<'_, Self>> {
        let py = slf.py();
        let this = slf.get();
        let layer = match &this.token {
            TokenKind::Process(id) => *id,
            TokenKind::Scope(scope) => {
                check_scope_usable(py, scope)?;
                scope.id
            }
        };
        let state = Arc::new(GrantState {
            layer,
            only: this.only.clone(),
            owner: current_owner(py)?,
            active: AtomicBool::new(true),
            artifact: None,
        });
        push_node(py, ScopeNode::Grant(state.clone()))?;
        this.entered.lock().push(state);
        Ok(slf)
    }

    #[pyo3(signature = (*_args))]
    pub(super) fn __exit__(
        &self,
        py: Python<'_>,
        _args: &Bound<'_, pyo3::types::PyTuple>,
    ) -> Result<bool> {
        // One Grant object may be entered by several threads or tasks at once; end
        // the innermost grant this thread or task entered, not another's.
        let here = current_owner(py)?;
        let state = {
            let mut entered = self.entered.lock();
            entered
                .iter()
                .rposition(|g| g.owner == here)
                .map(|i| entered.remove(i))
        };
        if let Some(state) = state {
            state.active.store(false, Ordering::Release);
            remove_node(py, &ScopeNode::Grant(state))?;
        }
        Ok(false)
    }
}

pub(super) fn as_token<'py>(token: &Bound<'py, PyAny>) -> Result<Bound<'py, Token>> {
    token.cast::<Token>().cloned().map_err(|_| {
        GuardError::BadToken(format!(
            "expected a token from activate() or no_pickles(), got {}",
            token
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_else(|_| "?".into())
        ))
    })
}

/// Lift the layer of `token` inside a with-block, for every pickle or only those listed.
#[pyfunction]
#[pyo3(signature = (token, only_objects=None))]
pub(super) fn allow_pickles(
    py: Python<'_>,
    token: &Bound<'_, PyAny>,
    only_objects: Option<Vec<String>>,
) -> Result<Grant> {
    let token = as_token(token)?;
    let kind = token.get().kind.clone();
    if let TokenKind::Scope(scope) = &kind {
        check_scope_usable(py, scope)?;
    }
    let only = match only_objects {
        None => None,
        Some(items) => Some(
            items
                .iter()
                .map(|item| {
                    Id::parse(item).map_err(|e| {
                        GuardError::BadArgument(format!(
                            "only_objects entries look like \"sha256:<64 hex digits>\" or \"blake3:<64 hex digits>\": {e}"
                        ))
                    })
                })
                .collect::<Result<HashSet<Id>>>()?,
        ),
    };
    Ok(Grant {
        token: kind,
        only,
        entered: Mutex::new(Vec::new()),
    })
}

/// Judge a whole artifact file (`data`: its bytes, or its `VerifiedFile`) against the `[[artifact]]` entries
/// and, if it may load, return the with-block to run its loader in: inside it, in
/// this thread or task only, the pickles the loader reads out of the artifact are
/// covered by the artifact's entry. Raises NoPickleError otherwise. `in_memory`
/// says the bytes are a buffer the program built, not a file: channel rules may
/// cover it (an engine decoding its own message with `torch.load`). `shared`
/// says they are a file the engine's processes share and the loader maps in
/// place (joblib's temporary memmaps): only channel rules may admit it.
#[pyfunction]
#[pyo3(signature = (data, source=None, loader=None, imports=None, stream=None, any_stream=false, in_memory=false, shared=false))]
pub(super) fn verify_artifact(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    source: Option<String>,
    loader: Option<String>,
    imports: Option<Vec<(String, bool)>>,
    stream: Option<Bound<'_, PyAny>>,
    any_stream: bool,
    in_memory: bool,
    shared: bool,
) -> Result<ArtifactScope> {
    if any_stream && enforcing(py)? {
        return Err(GuardError::Guard(
            "an artifact whose loader reads the file itself cannot be admitted while a layer enforces".into(),
        ));
    }
    let imports = imports.unwrap_or_default();
    // A verified copy (its digests computed while it was copied), or bytes.
    let (verified, known) = match data.cast::<VerifiedFile>() {
        Ok(file) => {
            let copy = file.get().get()?;
            let known = copy.digests();
            (ArtifactBytes::Sealed(copy), known)
        }
        Err(_) => (
            ArtifactBytes::Bytes(snapshot_bytes(data)?.unbind()),
            KnownDigests::NONE,
        ),
    };
    let load = Load {
        kind: Kind::Artifact,
        data: match &verified {
            ArtifactBytes::Bytes(b) => b.bind(py).as_bytes(),
            ArtifactBytes::Sealed(copy) => copy.bytes(),
        },
        buffers: &[],
        source,
        loader: loader.as_deref(),
        artifact_imports: &imports,
        origin: match (shared, in_memory) {
            (true, _) => Origin::Shared,
            (false, true) => Origin::Memory,
            (false, false) => Origin::File,
        },
        known,
    };
    judge(py, &load, None)?;
    Ok(ArtifactScope {
        data: verified,
        stream: stream.map(Bound::unbind),
        any_stream,
        entered: Mutex::new(Vec::new()),
        used: AtomicBool::new(false),
    })
}

/// The with-block of a verified artifact (see `verify_artifact`). It can be
/// entered once: the admission covers one load.
#[pyclass(frozen, module = "pickleguard._core")]
pub(super) struct ArtifactScope {
    /// The verified bytes, and the stream the adapter reads them through.
    pub(super) data: ArtifactBytes,
    pub(super) stream: Option<Py<PyAny>>,
    pub(super) any_stream: bool,
    pub(super) entered: Mutex<Vec<Vec<Arc<GrantState>>>>,
    pub(super) used: AtomicBool,
}

#[pymethods]
impl ArtifactScope {
    pub(super) fn __enter__(slf: Bound<'_, Self>) -> Result<Bound<'_, Self>> {
        let py = slf.py();
        if slf.get().used.swap(true, Ordering::AcqRel) {
            return Err(GuardError::BadToken(
                "an admitted artifact's block can be entered only once; admit the file again"
                    .into(),
            ));
        }
        let owner = current_owner(py)?;
        // Every layer in force now; 0 (no layer) marks the block even when none is.
        let mut layers: Vec<LayerId> = vec![0];
        layers.extend(PROCESS_LAYERS.read().iter().map(|l| l.id));
        layers.extend(active_scopes(py)?.scopes);
        let this = slf.get();
        let artifact = Arc::new(VerifiedArtifact {
            data: this.data.clone_ref(py),
            stream: this.stream.as_ref().map(|s| s.clone_ref(py)),
            any_stream: this.any_stream,
            lifted: layers.clone(),
        });
        let grants: Vec<Arc<GrantState>> = layers
            .into_iter()
            .map(|layer| {
                Arc::new(GrantState {
                    layer,
                    only: None,
                    owner,
                    active: AtomicBool::new(true),
                    artifact: Some(artifact.clone()),
                })
            })
            .collect();
        let mut nodes = current_nodes(py)?;
        nodes.extend(grants.iter().cloned().map(ScopeNode::Grant));
        set_nodes(py, nodes)?;
        slf.get().entered.lock().push(grants);
        Ok(slf)
    }

    #[pyo3(signature = (*_args))]
    pub(super) fn __exit__(
        &self,
        py: Python<'_>,
        _args: &Bound<'_, pyo3::types::PyTuple>,
    ) -> Result<bool> {
        let here = current_owner(py)?;
        let grants = {
            let mut entered = self.entered.lock();
            entered
                .iter()
                .rposition(|g| g.first().is_some_and(|g| g.owner == here))
                .map(|i| entered.remove(i))
        };
        if let Some(grants) = grants {
            for grant in &grants {
                grant.active.store(false, Ordering::Release);
            }
            let mut nodes = current_nodes(py)?;
            nodes.retain(|n| !grants.iter().any(|g| n.same(&ScopeNode::Grant(g.clone()))));
            set_nodes(py, nodes)?;
        }
        Ok(false)
    }
}
