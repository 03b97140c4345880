//! Process layers and deny scopes: the layers `activate()` added, and the scopes and
//! grants of this thread or asyncio task, held in a context variable.

use super::artifact::reads_copy;
use super::error::Result;
use super::judge::DETACH_THRESHOLD;
use crate::identity::Id;
use crate::policy::{ActiveGrant, LayerId, ProcessLayer};
use crate::verified::VerifiedCopy;
use parking_lot::RwLock;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::ThreadId;

/// The process layers. A load takes a snapshot by cloning the outer Arc, not the list.
pub(super) static PROCESS_LAYERS: once_cell::sync::Lazy<RwLock<Arc<Vec<Arc<ProcessLayer>>>>> =
    once_cell::sync::Lazy::new(|| RwLock::new(Arc::new(Vec::new())));

pub(super) fn add_process_layer(layer: ProcessLayer) {
    Arc::make_mut(&mut PROCESS_LAYERS.write()).push(Arc::new(layer));
}
pub(super) static NEXT_LAYER_ID: AtomicU64 = AtomicU64::new(1);

pub(super) fn next_layer_id() -> LayerId {
    NEXT_LAYER_ID.fetch_add(1, Ordering::Relaxed)
}

/// A `no_pickles()` scope. `open` goes false when its with-block exits, which ends it
/// in every context that inherited it.
#[derive(Debug)]
pub(super) struct ScopeState {
    pub(super) id: LayerId,
    pub(super) open: AtomicBool,
}

/// A grant from `allow_pickles`, in force only for the thread and task that entered
/// it, and only until its with-block exits.
#[derive(Debug)]
pub(super) struct GrantState {
    pub(super) layer: LayerId,
    pub(super) only: Option<HashSet<Id>>,
    pub(super) owner: Owner,
    pub(super) active: AtomicBool,
    /// Made by a verified artifact for the loads inside it (see `verify_artifact`).
    pub(super) artifact: Option<Arc<VerifiedArtifact>>,
}

/// What a verified artifact's grants cover: pickles whose bytes occur in the
/// artifact, and (for a loader whose pickles cannot be delimited) pure-Python
/// unpicklers reading from the verified stream the adapter made.
#[derive(Debug)]
pub(super) struct VerifiedArtifact {
    pub(super) data: ArtifactBytes,
    pub(super) stream: Option<Py<PyAny>>,
    /// The loader reads the file itself (memory mapping, allowed only while no
    /// layer enforces): any pure-Python unpickler's stream counts as verified.
    pub(super) any_stream: bool,
    /// Every layer and deny scope in force when the block was entered.
    pub(super) lifted: Vec<LayerId>,
}

/// The bytes an artifact was admitted with: read into a `bytes` object, or a
/// verified copy in sealed memory that the loader maps or reads by path.
#[derive(Debug)]
pub(super) enum ArtifactBytes {
    Bytes(Py<PyBytes>),
    Sealed(Arc<VerifiedCopy>),
}

impl ArtifactBytes {
    pub(super) fn clone_ref(&self, py: Python<'_>) -> ArtifactBytes {
        match self {
            ArtifactBytes::Bytes(b) => ArtifactBytes::Bytes(b.clone_ref(py)),
            ArtifactBytes::Sealed(c) => ArtifactBytes::Sealed(c.clone()),
        }
    }
}

impl VerifiedArtifact {
    pub(super) fn contains(&self, py: Python<'_>, pickle: &[u8]) -> bool {
        let data = match &self.data {
            ArtifactBytes::Bytes(b) => b.bind(py).as_bytes(),
            ArtifactBytes::Sealed(copy) => copy.bytes(),
        };
        let find = || memchr::memmem::find(data, pickle).is_some();
        if data.len() >= DETACH_THRESHOLD {
            py.detach(find)
        } else {
            find()
        }
    }

    /// Whether `file`, or a file it reads from (a buffered reader's `raw`, a
    /// decompressor's `_fp` or `fileobj`, a few levels down), is the verified
    /// stream.
    pub(super) fn feeds(&self, py: Python<'_>, file: &Bound<'_, PyAny>) -> bool {
        if self.any_stream {
            return true;
        }
        let stream = self.stream.as_ref().map(|s| s.bind(py));
        if stream.is_none() && !matches!(self.data, ArtifactBytes::Sealed(_)) {
            return false;
        }
        let mut current = file.clone();
        for _ in 0..4 {
            if stream.is_some_and(|s| current.is(s)) {
                return true;
            }
            if let ArtifactBytes::Sealed(copy) = &self.data {
                // Opened on the sealed copy (by the loader itself, by path):
                // nothing but the verified bytes can be read from it.
                if reads_copy(&current, copy) {
                    return true;
                }
            }
            let inner = ["raw", "_fp", "fileobj"]
                .iter()
                .find_map(|name| current.getattr(*name).ok().filter(|f| !f.is_none()));
            match inner {
                Some(inner) => current = inner,
                None => return false,
            }
        }
        false
    }
}

/// The thread and asyncio task a grant belongs to. The task is compared by address,
/// which is unique while the grant is active because the task is then running it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Owner {
    pub(super) thread: ThreadId,
    pub(super) task: usize,
}

#[derive(Debug, Clone)]
pub(super) enum ScopeNode {
    Deny(Arc<ScopeState>),
    Grant(Arc<GrantState>),
}

impl ScopeNode {
    pub(super) fn same(&self, other: &ScopeNode) -> bool {
        match (self, other) {
            (ScopeNode::Deny(a), ScopeNode::Deny(b)) => Arc::ptr_eq(a, b),
            (ScopeNode::Grant(a), ScopeNode::Grant(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// The scopes and grants of one context (thread or asyncio task), immutable: a
/// change sets a new stack in the context variable, so copies made for child tasks
/// are never mutated underneath them.
#[pyclass(frozen, module = "pickleguard._core")]
pub(super) struct ScopeStack {
    pub(super) nodes: Vec<ScopeNode>,
}

pub(super) static SCOPES_VAR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

pub(super) fn scopes_var(py: Python<'_>) -> Result<&Bound<'_, PyAny>> {
    SCOPES_VAR
        .get_or_try_init(py, || -> Result<Py<PyAny>> {
            let kwargs = PyDict::new(py);
            kwargs.set_item("default", py.None())?;
            Ok(py
                .import("contextvars")?
                .getattr("ContextVar")?
                .call(("pickleguard_scopes",), Some(&kwargs))?
                .unbind())
        })
        .map(|var| var.bind(py))
}

pub(super) fn current_nodes(py: Python<'_>) -> Result<Vec<ScopeNode>> {
    let var = scopes_var(py)?;
    // ContextVar.get, not PyContextVar_Get: contextvars have no stable-ABI C API.
    // The variable's default is None, so this never raises LookupError.
    let value = var.call_method0(pyo3::intern!(py, "get"))?;
    if value.is_none() {
        return Ok(Vec::new());
    }
    let stack = value.cast::<ScopeStack>().map_err(PyErr::from)?;
    Ok(stack.get().nodes.clone())
}

pub(super) fn set_nodes(py: Python<'_>, nodes: Vec<ScopeNode>) -> Result<()> {
    let value: Py<PyAny> = if nodes.is_empty() {
        py.None()
    } else {
        Py::new(py, ScopeStack { nodes })?.into_any()
    };
    scopes_var(py)?.call_method1("set", (value,))?;
    Ok(())
}

pub(super) fn push_node(py: Python<'_>, node: ScopeNode) -> Result<()> {
    let mut nodes = current_nodes(py)?;
    nodes.push(node);
    set_nodes(py, nodes)
}

pub(super) fn remove_node(py: Python<'_>, node: &ScopeNode) -> Result<()> {
    let mut nodes = current_nodes(py)?;
    let before = nodes.len();
    nodes.retain(|n| !n.same(node));
    if nodes.len() != before {
        set_nodes(py, nodes)?;
    }
    Ok(())
}

pub(super) static ASYNCIO_RUNNING_TASK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

pub(super) fn current_owner(py: Python<'_>) -> Result<Owner> {
    let thread = std::thread::current().id();
    // Only ask asyncio if it has been imported: no import on this path.
    let modules = py.import("sys")?.getattr("modules")?;
    let task = if modules
        .cast::<PyDict>()
        .map_err(PyErr::from)?
        .contains("asyncio")?
    {
        let helper = ASYNCIO_RUNNING_TASK.get_or_try_init(py, || -> Result<Py<PyAny>> {
            let code = c"def running_task():\n    import asyncio\n    loop = asyncio._get_running_loop()\n    return None if loop is None else asyncio.current_task(loop)\n";
            let module = PyModule::from_code(py, code, c"<pickleguard>", c"_pickleguard_asyncio")?;
            Ok(module.getattr(pyo3::intern!(module.py(), "running_task"))?.unbind())
        })?;
        let task = helper.bind(py).call0()?;
        if task.is_none() {
            0
        } else {
            task.as_ptr() as usize
        }
    } else {
        0
    };
    Ok(Owner { thread, task })
}

/// Deny scopes and this owner's grants in force in the current context.
pub(super) struct ActiveScopes {
    pub(super) scopes: Vec<LayerId>,
    pub(super) grants: Vec<Arc<GrantState>>,
    /// The verified artifacts whose loads run in this thread or task.
    pub(super) artifacts: Vec<Arc<VerifiedArtifact>>,
}

impl ActiveScopes {
    /// The verified artifact, if any, that covers `pickle`: its bytes occur in it.
    pub(super) fn covering_artifact(
        &self,
        py: Python<'_>,
        pickle: &[u8],
    ) -> Option<&Arc<VerifiedArtifact>> {
        self.artifacts.iter().find(|a| a.contains(py, pickle))
    }

    /// The grants in force for a load: artifact grants only from `covering`.
    pub(super) fn grants_for<'a>(
        &'a self,
        covering: Option<&Arc<VerifiedArtifact>>,
    ) -> Vec<ActiveGrant<'a>> {
        self.grants
            .iter()
            .filter(|g| match (&g.artifact, covering) {
                (None, _) => true,
                (Some(a), Some(c)) => Arc::ptr_eq(a, c),
                (Some(_), None) => false,
            })
            .map(|g| ActiveGrant {
                layer: g.layer,
                only: g.only.as_ref(),
            })
            .collect()
    }
}

pub(super) fn active_scopes(py: Python<'_>) -> Result<ActiveScopes> {
    let nodes = current_nodes(py)?;
    let mut active = ActiveScopes {
        scopes: Vec::new(),
        grants: Vec::new(),
        artifacts: Vec::new(),
    };
    let mut owner: Option<Owner> = None;
    for node in nodes {
        match node {
            ScopeNode::Deny(scope) if scope.open.load(Ordering::Acquire) => {
                active.scopes.push(scope.id)
            }
            ScopeNode::Grant(grant) if grant.active.load(Ordering::Acquire) => {
                let here = match owner {
                    Some(o) => o,
                    None => *owner.insert(current_owner(py)?),
                };
                if grant.owner == here {
                    if let Some(artifact) = &grant.artifact {
                        if !active.artifacts.iter().any(|a| Arc::ptr_eq(a, artifact)) {
                            active.artifacts.push(artifact.clone());
                        }
                    }
                    active.grants.push(grant);
                }
            }
            _ => {}
        }
    }
    Ok(active)
}
