//! The PyO3 boundary: Python objects in, the core's decisions out, errors converted
//! to the Python exceptions of `pickleguard.errors` only here.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::ThreadId;

use parking_lot::{Mutex, RwLock};
use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyMemoryView, PySlice, PyString};

use crate::identity::{
    digest_with_buffers, to_hex, Algorithm, Digest, Id, Identities, KnownDigests,
};
use crate::manifest::{Kind, Manifest, ManifestError as CoreManifestError};
use crate::policy::{
    decide, ActiveGrant, CallStack, Decision, LayerId, LazyFrames, Mode, ProcessLayer, Reason,
    Refusal, Rules,
};
use crate::reader::{self, ReadError, Source};
use crate::scan;

pyo3::import_exception!(pickleguard.errors, PickleGuardError);
pyo3::import_exception!(pickleguard.errors, NoPickleError);
pyo3::import_exception!(pickleguard.errors, BadTokenError);
pyo3::import_exception!(pickleguard.errors, ManifestError);
pyo3::import_exception!(pickleguard.errors, _UndelimitedPickle);
pyo3::import_exception!(pickle, UnpicklingError);

/// Buffers larger than this are hashed with the GIL released.
const DETACH_THRESHOLD: usize = 1 << 16;

/// Everything that can go wrong inside the core, converted to a Python exception
/// only at the boundary.
enum GuardError {
    Read(ReadError<PyErr>),
    /// No pickle could be delimited in `data`; the gate explains it without running it.
    Undelimited {
        data: Py<PyBytes>,
        error: PyErr,
    },
    Manifest(CoreManifestError),
    Denied(Box<Denial>),
    BadToken(String),
    Py(PyErr),
}

type Result<T> = std::result::Result<T, GuardError>;

impl From<PyErr> for GuardError {
    fn from(err: PyErr) -> Self {
        GuardError::Py(err)
    }
}

impl From<GuardError> for PyErr {
    fn from(err: GuardError) -> PyErr {
        match err {
            GuardError::Py(e) => e,
            GuardError::Read(ReadError::Source(e)) => e,
            GuardError::Read(e) if e.is_eof() => {
                pyo3::exceptions::PyEOFError::new_err(e.to_string())
            }
            GuardError::Read(e) if e.is_overflow() => PyOverflowError::new_err(e.to_string()),
            GuardError::Read(e) => UnpicklingError::new_err(e.to_string()),
            GuardError::Undelimited { data, error } => {
                Python::attach(|py| _UndelimitedPickle::new_err((data, error.into_value(py))))
            }
            GuardError::Manifest(e) => ManifestError::new_err(e.to_string()),
            GuardError::BadToken(message) => BadTokenError::new_err(message),
            GuardError::Denied(denial) => Python::attach(|py| denial.into_pyerr(py)),
        }
    }
}

// ---------------------------------------------------------------------------
// Process layers and deny scopes.

/// The process layers. A load takes a snapshot by cloning the outer Arc, not the list.
static PROCESS_LAYERS: once_cell::sync::Lazy<RwLock<Arc<Vec<Arc<ProcessLayer>>>>> =
    once_cell::sync::Lazy::new(|| RwLock::new(Arc::new(Vec::new())));

fn add_process_layer(layer: ProcessLayer) {
    Arc::make_mut(&mut PROCESS_LAYERS.write()).push(Arc::new(layer));
}
static NEXT_LAYER_ID: AtomicU64 = AtomicU64::new(1);

fn next_layer_id() -> LayerId {
    NEXT_LAYER_ID.fetch_add(1, Ordering::Relaxed)
}

/// A `no_pickles()` scope. `open` goes false when its with-block exits, which ends it
/// in every context that inherited it.
#[derive(Debug)]
struct ScopeState {
    id: LayerId,
    open: AtomicBool,
}

/// A grant from `allow_pickles`, in force only for the thread and task that entered
/// it, and only until its with-block exits.
#[derive(Debug)]
struct GrantState {
    layer: LayerId,
    only: Option<HashSet<Id>>,
    owner: Owner,
    active: AtomicBool,
    /// Made by an admitted artifact for the loads inside it (see `admit_artifact`).
    artifact: Option<Arc<AdmittedArtifact>>,
}

/// What an admitted artifact's grants cover: pickles whose bytes occur in the
/// artifact, and (for a loader whose pickles cannot be delimited) pure-Python
/// unpicklers reading from the verified stream the adapter made.
#[derive(Debug)]
struct AdmittedArtifact {
    data: Py<PyBytes>,
    stream: Option<Py<PyAny>>,
    /// The loader reads the file itself (memory mapping, allowed only while no
    /// layer enforces): any pure-Python unpickler's stream counts as verified.
    any_stream: bool,
    /// Every layer and deny scope in force when the block was entered.
    lifted: Vec<LayerId>,
}

impl AdmittedArtifact {
    fn contains(&self, py: Python<'_>, pickle: &[u8]) -> bool {
        let data = self.data.bind(py).as_bytes();
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
    fn feeds(&self, py: Python<'_>, file: &Bound<'_, PyAny>) -> bool {
        if self.any_stream {
            return true;
        }
        let Some(stream) = &self.stream else {
            return false;
        };
        let mut current = file.clone();
        for _ in 0..4 {
            if current.is(stream.bind(py)) {
                return true;
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
struct Owner {
    thread: ThreadId,
    task: usize,
}

#[derive(Debug, Clone)]
enum ScopeNode {
    Deny(Arc<ScopeState>),
    Grant(Arc<GrantState>),
}

impl ScopeNode {
    fn same(&self, other: &ScopeNode) -> bool {
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
struct ScopeStack {
    nodes: Vec<ScopeNode>,
}

static SCOPES_VAR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn scopes_var(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    SCOPES_VAR
        .get_or_try_init(py, || -> PyResult<Py<PyAny>> {
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

fn current_nodes(py: Python<'_>) -> PyResult<Vec<ScopeNode>> {
    let var = scopes_var(py)?;
    let mut value_ptr: *mut pyo3::ffi::PyObject = std::ptr::null_mut();
    // SAFETY: the GIL is held and `var` is a ContextVar; PyContextVar_Get stores a
    // new reference (or NULL when unset, given no default) in `value_ptr`.
    let status =
        unsafe { pyo3::ffi::PyContextVar_Get(var.as_ptr(), std::ptr::null_mut(), &mut value_ptr) };
    if status < 0 {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: `value_ptr` is a new reference or NULL, as above.
    let Some(value) = (unsafe { Bound::from_owned_ptr_or_opt(py, value_ptr) }) else {
        return Ok(Vec::new());
    };
    if value.is_none() {
        return Ok(Vec::new());
    }
    let stack = value.cast::<ScopeStack>().map_err(PyErr::from)?;
    Ok(stack.get().nodes.clone())
}

fn set_nodes(py: Python<'_>, nodes: Vec<ScopeNode>) -> PyResult<()> {
    let value: Py<PyAny> = if nodes.is_empty() {
        py.None()
    } else {
        Py::new(py, ScopeStack { nodes })?.into_any()
    };
    scopes_var(py)?.call_method1("set", (value,))?;
    Ok(())
}

fn push_node(py: Python<'_>, node: ScopeNode) -> PyResult<()> {
    let mut nodes = current_nodes(py)?;
    nodes.push(node);
    set_nodes(py, nodes)
}

fn remove_node(py: Python<'_>, node: &ScopeNode) -> PyResult<()> {
    let mut nodes = current_nodes(py)?;
    let before = nodes.len();
    nodes.retain(|n| !n.same(node));
    if nodes.len() != before {
        set_nodes(py, nodes)?;
    }
    Ok(())
}

static ASYNCIO_RUNNING_TASK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn current_owner(py: Python<'_>) -> PyResult<Owner> {
    let thread = std::thread::current().id();
    // Only ask asyncio if it has been imported: no import on this path.
    let modules = py.import("sys")?.getattr("modules")?;
    let task = if modules
        .cast::<PyDict>()
        .map_err(PyErr::from)?
        .contains("asyncio")?
    {
        let helper = ASYNCIO_RUNNING_TASK.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
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
struct ActiveScopes {
    scopes: Vec<LayerId>,
    grants: Vec<Arc<GrantState>>,
    /// The admitted artifacts whose loads run in this thread or task.
    artifacts: Vec<Arc<AdmittedArtifact>>,
}

impl ActiveScopes {
    /// The admitted artifact, if any, that covers `pickle`: its bytes occur in it.
    fn covering_artifact(&self, py: Python<'_>, pickle: &[u8]) -> Option<&Arc<AdmittedArtifact>> {
        self.artifacts.iter().find(|a| a.contains(py, pickle))
    }

    /// The grants in force for a load: artifact grants only from `covering`.
    fn grants_for<'a>(&'a self, covering: Option<&Arc<AdmittedArtifact>>) -> Vec<ActiveGrant<'a>> {
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

fn active_scopes(py: Python<'_>) -> PyResult<ActiveScopes> {
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

// ---------------------------------------------------------------------------
// Tokens.

#[derive(Debug, Clone)]
enum TokenKind {
    Process(LayerId),
    Scope(Arc<ScopeState>),
}

/// The right to lift one layer, handed out by `activate()` and `no_pickles()`.
/// It cannot be created, copied or pickled from Python.
#[pyclass(frozen, module = "pickleguard._core")]
struct Token {
    kind: TokenKind,
}

fn not_copyable() -> PyErr {
    BadTokenError::new_err(
        "pickleguard tokens cannot be copied or pickled; pass the token object itself to allow_pickles()",
    )
}

#[pymethods]
impl Token {
    fn __repr__(&self) -> String {
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

    fn __enter__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        if let TokenKind::Process(_) = slf.get().kind {
            return Err(PickleGuardError::new_err(
                "the process layer from activate() cannot be used as a with-block or closed; use `with allow_pickles(token):` to lift it for a block",
            ));
        }
        Ok(slf)
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    /// End this `no_pickles()` scope everywhere. The process layer cannot be closed.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        match &self.kind {
            TokenKind::Process(_) => Err(PickleGuardError::new_err(
                "the process layer from activate() cannot be closed",
            )),
            TokenKind::Scope(scope) => {
                scope.open.store(false, Ordering::Release);
                remove_node(py, &ScopeNode::Deny(scope.clone()))?;
                Ok(())
            }
        }
    }

    fn __copy__(&self) -> PyResult<()> {
        Err(not_copyable())
    }

    fn __deepcopy__(&self, _memo: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(not_copyable())
    }

    fn __reduce__(&self) -> PyResult<()> {
        Err(not_copyable())
    }

    fn __reduce_ex__(&self, _protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(not_copyable())
    }

    fn __getstate__(&self) -> PyResult<()> {
        Err(not_copyable())
    }
}

/// `allow_pickles(token, ...)`: a with-block that lifts the token's layer.
#[pyclass(frozen, module = "pickleguard._core")]
struct Grant {
    token: TokenKind,
    only: Option<HashSet<Id>>,
    entered: Mutex<Vec<Arc<GrantState>>>,
}

fn check_scope_usable(py: Python<'_>, scope: &Arc<ScopeState>) -> Result<()> {
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
    fn __enter__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
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
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
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

fn as_token<'py>(token: &Bound<'py, PyAny>) -> Result<Bound<'py, Token>> {
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
fn allow_pickles(
    py: Python<'_>,
    token: &Bound<'_, PyAny>,
    only_objects: Option<Vec<String>>,
) -> PyResult<Grant> {
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
                        PyValueError::new_err(format!(
                            "only_objects entries look like \"sha256:<64 hex digits>\" or \"blake3:<64 hex digits>\": {e}"
                        ))
                    })
                })
                .collect::<PyResult<HashSet<Id>>>()?,
        ),
    };
    Ok(Grant {
        token: kind,
        only,
        entered: Mutex::new(Vec::new()),
    })
}

/// Judge a whole artifact file (`data`, its bytes) against the `[[artifact]]` entries
/// and, if it may load, return the with-block to run its loader in: inside it, in
/// this thread or task only, the pickles the loader reads out of the artifact are
/// covered by the artifact's entry. Raises NoPickleError otherwise.
#[pyfunction]
#[pyo3(signature = (data, source=None, loader=None, imports=None, stream=None, any_stream=false))]
fn admit_artifact(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    source: Option<String>,
    loader: Option<String>,
    imports: Option<Vec<(String, bool)>>,
    stream: Option<Bound<'_, PyAny>>,
    any_stream: bool,
) -> PyResult<ArtifactScope> {
    if any_stream && enforcing(py)? {
        return Err(PickleGuardError::new_err(
            "an artifact whose loader reads the file itself cannot be admitted while a layer enforces",
        ));
    }
    let bytes = snapshot_bytes(data)?;
    let imports = imports.unwrap_or_default();
    let load = Load {
        kind: Kind::Artifact,
        data: bytes.as_bytes(),
        buffers: &[],
        source,
        loader: loader.as_deref(),
        artifact_imports: &imports,
        known: [None, None],
    };
    judge(py, &load, None)?;
    Ok(ArtifactScope {
        data: bytes.unbind(),
        stream: stream.map(Bound::unbind),
        any_stream,
        entered: Mutex::new(Vec::new()),
        used: AtomicBool::new(false),
    })
}

/// The with-block of an admitted artifact (see `admit_artifact`). It can be
/// entered once: the admission covers one load.
#[pyclass(frozen, module = "pickleguard._core")]
struct ArtifactScope {
    /// The verified bytes, and the stream the adapter reads them through.
    data: Py<PyBytes>,
    stream: Option<Py<PyAny>>,
    any_stream: bool,
    entered: Mutex<Vec<Vec<Arc<GrantState>>>>,
    used: AtomicBool,
}

#[pymethods]
impl ArtifactScope {
    fn __enter__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        let py = slf.py();
        if slf.get().used.swap(true, Ordering::AcqRel) {
            return Err(GuardError::BadToken(
                "an admitted artifact's block can be entered only once; admit the file again"
                    .into(),
            )
            .into());
        }
        let owner = current_owner(py)?;
        // Every layer in force now; 0 (no layer) marks the block even when none is.
        let mut layers: Vec<LayerId> = vec![0];
        layers.extend(PROCESS_LAYERS.read().iter().map(|l| l.id));
        layers.extend(active_scopes(py)?.scopes);
        let this = slf.get();
        let artifact = Arc::new(AdmittedArtifact {
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
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
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

/// Whether some layer refuses what it does not list, here and now: an enforcing
/// process layer other than `record`'s, or a deny scope in this thread or task.
#[pyfunction]
fn enforcing(py: Python<'_>) -> PyResult<bool> {
    let process = PROCESS_LAYERS
        .read()
        .iter()
        .any(|l| l.mode == Mode::Enforce && !matches!(l.rules, Rules::Everything));
    Ok(process || !active_scopes(py)?.scopes.is_empty())
}

/// Whether `pickleguard record` is journaling this process's loads.
#[pyfunction]
fn journaling() -> bool {
    JOURNAL.get().is_some()
}

/// Whether this thread or task is inside an admitted artifact's with-block.
#[pyfunction]
fn in_artifact(py: Python<'_>) -> PyResult<bool> {
    Ok(!active_scopes(py)?.artifacts.is_empty())
}

/// Open a deny scope in this thread or task and return its token.
#[pyfunction]
fn no_pickles(py: Python<'_>) -> PyResult<Token> {
    let scope = Arc::new(ScopeState {
        id: next_layer_id(),
        open: AtomicBool::new(true),
    });
    push_node(py, ScopeNode::Deny(scope.clone()))?;
    Ok(Token {
        kind: TokenKind::Scope(scope),
    })
}

/// Add a process-wide layer. Layers only ever add up, so a later call can only tighten.
#[pyfunction]
#[pyo3(signature = (manifest=None, mode="enforce"))]
fn activate(manifest: Option<std::path::PathBuf>, mode: &str) -> PyResult<Token> {
    let mode = Mode::parse(mode).ok_or_else(|| {
        PyValueError::new_err(format!(
            "mode must be \"enforce\" or \"warn\", not {mode:?}"
        ))
    })?;
    let (rules, failure) = match manifest {
        None => (Rules::Nothing, None),
        Some(path) => {
            let origin = path.to_string_lossy().into_owned();
            // A panic while reading must still leave a closed layer, never none at all.
            let loaded =
                std::panic::catch_unwind(|| Manifest::load(&origin)).unwrap_or_else(|_| {
                    Err(CoreManifestError {
                        origin: origin.clone(),
                        line: 0,
                        column: 0,
                        message: "internal error while reading the manifest".into(),
                        hint: "please report this with the manifest attached".into(),
                    })
                });
            match loaded {
                Ok(m) => (Rules::Manifest(m), None),
                Err(e) => (Rules::Broken(e.clone()), Some(e)),
            }
        }
    };
    let id = next_layer_id();
    add_process_layer(ProcessLayer { id, mode, rules });
    if let Some(e) = failure {
        // The layer stays: in enforce mode it refuses every load and says why.
        return Err(GuardError::Manifest(e).into());
    }
    Ok(Token {
        kind: TokenKind::Process(id),
    })
}

/// Add a process layer whose manifest is read on a background thread, for
/// activation at interpreter start; the first load that needs it waits for it. A
/// manifest that fails to read refuses every load, as with `activate()`.
#[pyfunction]
#[pyo3(signature = (manifest, mode="enforce"))]
fn activate_deferred(manifest: std::path::PathBuf, mode: &str) -> PyResult<()> {
    let mode = Mode::parse(mode).ok_or_else(|| {
        PyValueError::new_err(format!(
            "mode must be \"enforce\" or \"warn\", not {mode:?}"
        ))
    })?;
    let origin = manifest.to_string_lossy().into_owned();
    let deferred = crate::policy::DeferredManifest::start(origin, load_manifest);
    add_process_layer(ProcessLayer {
        id: next_layer_id(),
        mode,
        rules: Rules::Deferred(deferred),
    });
    Ok(())
}

/// Wait for manifests still being read (before a fork: a child has no thread to
/// wait for).
#[pyfunction]
fn settle_manifests(py: Python<'_>) {
    let layers = PROCESS_LAYERS.read().clone();
    py.detach(|| {
        for layer in layers.iter() {
            if let Rules::Deferred(d) = &layer.rules {
                let _ = d.get();
            }
        }
    });
}

/// The process layers, for status reports: (mode, manifest origin or None, entries).
#[pyfunction]
fn process_layers(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    let list = PyList::empty(py);
    for layer in PROCESS_LAYERS.read().iter() {
        let (origin, entries, broken) = match &layer.rules {
            Rules::Nothing => (None, 0, None),
            Rules::Everything => (Some("<record: everything>".to_owned()), 0, None),
            Rules::Manifest(m) => (Some(m.origin.clone()), m.entries().len(), None),
            Rules::Broken(e) => (Some(e.origin.clone()), 0, Some(e.to_string())),
            Rules::Deferred(d) => match d.get() {
                Ok(m) => (Some(m.origin.clone()), m.entries().len(), None),
                Err(e) => (Some(e.origin.clone()), 0, Some(e.to_string())),
            },
        };
        list.append((layer.mode.as_str(), origin, entries, broken))?;
    }
    Ok(list)
}

/// The globals the pickle at the start of `data` would import, found without
/// running it, as (name, risky) pairs. Given `names` instead (as those pairs and
/// `record`'s journal show them), each name with its class: "safe", "review" or
/// "risky" (see `classify`).
#[pyfunction]
#[pyo3(signature = (data=None, *, names=None))]
fn imports<'py>(
    py: Python<'py>,
    data: Option<&Bound<'py, PyAny>>,
    names: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyList>> {
    let names = names
        .map(|n| {
            if n.is_instance_of::<PyString>() {
                return Err(());
            }
            n.extract::<Vec<String>>().map_err(|_| ())
        })
        .transpose()
        .map_err(|()| PyTypeError::new_err("names= takes a list of strings"))?;
    match (data, names) {
        (Some(data), None) => {
            let bytes = snapshot_bytes(data)?;
            let found = scan::imports(bytes.as_bytes());
            PyList::new(py, found.iter().map(|i| (i.render(), i.is_risky())))
        }
        (None, Some(names)) => PyList::new(
            py,
            names
                .iter()
                .map(|n| (n, crate::classify::classify(n).as_str())),
        ),
        _ => Err(PyTypeError::new_err(
            "imports() takes either a pickle or names=, not both",
        )),
    }
}

/// What a manifest holds, for merging: its entries as (table, identities as
/// `algorithm:hex`, stack patterns or None) and its channels as (name, callers,
/// called_from patterns or None).
#[pyfunction]
#[allow(clippy::type_complexity)]
fn manifest_summary(
    path: std::path::PathBuf,
) -> PyResult<(
    Vec<(&'static str, Vec<String>, Option<Vec<String>>)>,
    Vec<(String, Vec<String>, Option<Vec<String>>)>,
)> {
    let manifest = Manifest::load(&path.to_string_lossy())
        .map_err(|e| PyErr::from(GuardError::Manifest(e)))?;
    let entries = manifest
        .entries()
        .iter()
        .map(|e| {
            (
                e.kind.table(),
                e.ids.iter().map(Id::to_string).collect(),
                e.stack
                    .as_ref()
                    .map(|s| s.iter().map(|p| p.as_str().to_owned()).collect()),
            )
        })
        .collect();
    let channels = manifest
        .channels()
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                c.callers.iter().map(|p| p.as_str().to_owned()).collect(),
                c.called_from
                    .as_ref()
                    .map(|o| o.iter().map(|p| p.as_str().to_owned()).collect()),
            )
        })
        .collect();
    Ok((entries, channels))
}

/// Whether the stack pattern `pattern` matches the frame name `name`.
#[pyfunction]
fn pattern_matches(pattern: &str, name: &str) -> PyResult<bool> {
    crate::pattern::FramePattern::parse(pattern)
        .map(|p| p.matches(name))
        .map_err(|e| PyValueError::new_err(e.message))
}

/// The functions through which the known channel `name` loads its messages.
#[pyfunction]
fn channel_callers(name: &str) -> Vec<&'static str> {
    crate::channels::known_callers(name).to_vec()
}

/// The patterns that must match the function calling the known channel `name`'s
/// callers (empty: any).
#[pyfunction]
fn channel_called_from(name: &str) -> Vec<&'static str> {
    crate::channels::known_called_from(name).to_vec()
}

/// Add a process layer that allows every load (`pickleguard record`).
#[pyfunction]
fn record_layer() {
    add_process_layer(ProcessLayer {
        id: next_layer_id(),
        mode: Mode::Enforce,
        rules: Rules::Everything,
    });
}

/// Validate a manifest file, raising ManifestError; returns its entry count.
#[pyfunction]
fn check_manifest(path: std::path::PathBuf) -> PyResult<usize> {
    load_manifest(&path.to_string_lossy())
        .map(|m| m.entries().len() + m.channels().len())
        .map_err(|e| GuardError::Manifest(e).into())
}

/// Read a manifest; a panic while reading becomes a ManifestError, never a pass.
fn load_manifest(origin: &str) -> std::result::Result<Manifest, CoreManifestError> {
    std::panic::catch_unwind(|| Manifest::load(origin)).unwrap_or_else(|_| {
        Err(CoreManifestError {
            origin: origin.to_owned(),
            line: 0,
            column: 0,
            message: "internal error while reading the manifest".into(),
            hint: "please report this with the manifest attached".into(),
        })
    })
}

// ---------------------------------------------------------------------------
// Call stacks.

fn is_internal(module: &str) -> bool {
    module == "pickleguard" || module.starts_with("pickleguard.")
}

fn is_pickle_machinery(module: &str) -> bool {
    matches!(module, "pickle" | "_pickle" | "copyreg") || is_internal(module)
}

struct FrameInfo {
    name: String,
    file: String,
    line: i64,
}

/// Frames of the Python call stack, innermost first.
fn walk_frames(py: Python<'_>, visit: impl FnMut(&str, &Bound<'_, PyAny>) -> bool) -> PyResult<()> {
    let frame = py.import("sys")?.call_method1("_getframe", (0,))?;
    walk_frames_from(frame, visit)
}

/// Frames from `frame` outwards, named `module:qualname`, until `visit` says stop.
fn walk_frames_from<'py>(
    mut frame: Bound<'py, PyAny>,
    mut visit: impl FnMut(&str, &Bound<'py, PyAny>) -> bool,
) -> PyResult<()> {
    while !frame.is_none() {
        let globals = frame.getattr(pyo3::intern!(frame.py(), "f_globals"))?;
        let module = globals
            .cast::<PyDict>()
            .ok()
            .and_then(|g| g.get_item("__name__").ok().flatten())
            .and_then(|n| n.extract::<String>().ok())
            .unwrap_or_else(|| "<unknown>".into());
        // multiprocessing's spawn and forkserver children import the main script as
        // __mp_main__ (and alias it as __main__): name it the same in every process.
        let module = if module == "__mp_main__" {
            "__main__".to_owned()
        } else {
            module
        };
        let code = frame.getattr(pyo3::intern!(frame.py(), "f_code"))?;
        let qualname = match code.getattr(pyo3::intern!(code.py(), "co_qualname")) {
            Ok(q) => q,
            Err(_) => code.getattr(pyo3::intern!(code.py(), "co_name"))?,
        };
        let name = format!(
            "{module}:{}",
            qualname.cast::<PyString>().map_err(PyErr::from)?.to_str()?
        );
        if !visit(&name, &frame) {
            break;
        }
        frame = frame.getattr(pyo3::intern!(frame.py(), "f_back"))?;
    }
    Ok(())
}

/// A frame's code object as the policy sees it: `module:qualname`, and whether it
/// belongs to pickleguard or to the pickle machinery.
#[derive(Clone)]
struct FrameName {
    name: Arc<str>,
    internal: bool,
    machinery: bool,
}

/// Frame names cached by code object (held, so its address is not reused while
/// cached). Computing one takes several attribute lookups; stack patterns need it
/// for every frame of every load they check.
type FrameNameCache =
    std::collections::HashMap<usize, (Py<PyAny>, FrameName), crate::identity::BuildDigestHasher>;

static FRAME_NAMES: once_cell::sync::Lazy<Mutex<FrameNameCache>> =
    once_cell::sync::Lazy::new(|| Mutex::new(FrameNameCache::default()));

const FRAME_NAME_CACHE_LIMIT: usize = 16_384;

fn compute_frame_name(frame: &Bound<'_, PyAny>) -> FrameName {
    let mut name = None;
    let _ = walk_frames_from(frame.clone(), |n, _| {
        name = Some(n.to_owned());
        false
    });
    let name: Arc<str> = name.unwrap_or_else(|| "<unknown>:<unknown>".into()).into();
    let module = name.split(':').next().unwrap_or_default();
    FrameName {
        internal: is_internal(module),
        machinery: is_pickle_machinery(module),
        name,
    }
}

/// The loading call stack: every frame but pickleguard's own, outermost first, and
/// the innermost frame outside pickle and pickleguard.
fn call_stack(py: Python<'_>) -> CallStack {
    let mut stack = CallStack {
        frames: Vec::with_capacity(64),
        caller: None,
        called_from: None,
    };
    // SAFETY: the GIL is held; PyEval_GetFrame returns a borrowed reference to the
    // running frame (or NULL), which from_borrowed_ptr_or_opt turns into an owned one.
    let mut frame = unsafe {
        Bound::from_borrowed_ptr_or_opt(
            py,
            pyo3::ffi::PyEval_GetFrame().cast::<pyo3::ffi::PyObject>(),
        )
    };
    // One lock for the whole walk. Computing a missing name runs no Python code
    // that could load a pickle, so holding it there cannot deadlock.
    let mut cache = FRAME_NAMES.lock();
    while let Some(current) = frame {
        let frame_ptr = current.as_ptr().cast::<pyo3::ffi::PyFrameObject>();
        // SAFETY: `current` is a live frame object; PyFrame_GetCode returns a new
        // (never NULL) reference and PyFrame_GetBack a new reference or NULL.
        let (code, back) = unsafe {
            (
                Bound::from_owned_ptr(
                    py,
                    pyo3::ffi::PyFrame_GetCode(frame_ptr).cast::<pyo3::ffi::PyObject>(),
                ),
                Bound::from_owned_ptr_or_opt(
                    py,
                    pyo3::ffi::PyFrame_GetBack(frame_ptr).cast::<pyo3::ffi::PyObject>(),
                ),
            )
        };
        let key = code.as_ptr() as usize;
        let found = match cache.get(&key) {
            Some((_, found)) => found.clone(),
            None => {
                let found = compute_frame_name(&current);
                if cache.len() >= FRAME_NAME_CACHE_LIMIT {
                    cache.clear();
                }
                cache.insert(key, (code.unbind(), found.clone()));
                found
            }
        };
        if !found.machinery {
            if stack.caller.is_none() {
                stack.caller = Some(found.name.clone());
            } else if stack.called_from.is_none() {
                stack.called_from = Some(found.name.clone());
            }
        }
        if !found.internal {
            stack.frames.push(found.name);
        }
        frame = back;
    }
    stack.frames.reverse();
    stack
}

/// The innermost frame outside pickle and pickleguard: the code that asked for the load.
fn caller(py: Python<'_>) -> Option<FrameInfo> {
    let mut found = None;
    let _ = walk_frames(py, |name, frame| {
        if is_pickle_machinery(name.split(':').next().unwrap_or_default()) {
            return true;
        }
        let file = frame
            .getattr("f_code")
            .and_then(|c| c.getattr(pyo3::intern!(c.py(), "co_filename")))
            .and_then(|f| f.extract::<String>())
            .unwrap_or_default();
        let line = frame
            .getattr("f_lineno")
            .and_then(|l| l.extract())
            .unwrap_or(0);
        found = Some(FrameInfo {
            name: name.to_owned(),
            file,
            line,
        });
        false
    });
    found
}

// ---------------------------------------------------------------------------
// Decisions and their reports.

struct Denial {
    message: String,
    kind: Kind,
    /// Hex SHA-256 of the payload if it was computed (the manifest pins with
    /// SHA-256), else empty.
    sha256_hex: String,
    /// The identity the suggested entry uses, as `algorithm:hex`.
    identity: String,
    size: usize,
    caller: String,
    code: &'static str,
    entry: String,
}

impl Denial {
    fn into_pyerr(self, py: Python<'_>) -> PyErr {
        let build = || -> PyResult<PyErr> {
            let kwargs = PyDict::new(py);
            kwargs.set_item("sha256", &self.sha256_hex)?;
            kwargs.set_item("identity", &self.identity)?;
            kwargs.set_item("kind", self.kind.table())?;
            kwargs.set_item("size", self.size)?;
            kwargs.set_item("caller", &self.caller)?;
            kwargs.set_item("code", self.code)?;
            kwargs.set_item("entry", &self.entry)?;
            let exc = py
                .get_type::<NoPickleError>()
                .call((self.message.as_str(),), Some(&kwargs))?;
            Ok(PyErr::from_value(exc))
        };
        build().unwrap_or_else(|e| e)
    }
}

fn reason_code(reason: &Reason) -> &'static str {
    match reason {
        Reason::NotListed => "not-listed",
        Reason::StackMismatch { .. } => "stack-mismatch",
        Reason::NoManifest => "no-manifest",
        Reason::BrokenManifest(_) => "broken-manifest",
        Reason::Scope => "scope",
        // Call-site pins are checked before the layers, in `judge`.
    }
}

fn suggested_entry(load: &Load<'_>, id: &Id, caller: Option<&FrameInfo>) -> String {
    let mut entry = format!(
        "[[{}]]\n{} = \"{}\"\n",
        load.kind.table(),
        id.algorithm.name(),
        id.hex()
    );
    if load.kind == Kind::Artifact {
        if let Some(source) = &load.source {
            let _ = writeln!(
                entry,
                "source = {}",
                serde_json::Value::from(source.as_str())
            );
        }
    }
    if let Some(c) = caller {
        let _ = writeln!(
            entry,
            "stack = [\"{}\"]  # optional: only this caller",
            c.name
        );
    }
    entry
}

/// What is being loaded, for messages: `pickle sha256:… (12 bytes)` or
/// `artifact sha256:… (12 bytes, file ckpt.pt, read by torch.load)`.
fn describe_payload(load: &Load<'_>, id: &Id) -> String {
    let mut details = format!("{} bytes", load.size());
    if load.kind == Kind::Artifact {
        if let Some(source) = &load.source {
            let _ = write!(details, ", file {source}");
        }
        if let Some(loader) = load.loader {
            let _ = write!(details, ", read by {loader}");
        }
    }
    format!("{} {id} ({details})", load.kind.table())
}

fn known_sha256_hex(ids: &Identities<'_>) -> String {
    ids.known(Algorithm::Sha256)
        .map(|id| id.hex())
        .unwrap_or_default()
}

fn describe(
    refusal: &Refusal,
    load: &Load<'_>,
    ids: &mut Identities<'_>,
    caller: Option<&FrameInfo>,
) -> Denial {
    let id = ids.get(refusal.algorithm);
    // Not computed just for the message: a second pass over a large checkpoint.
    let sha256_hex = known_sha256_hex(ids);
    let entry = suggested_entry(load, &id, caller);
    let whence = caller
        .map(|c| format!("{} ({}:{})", c.name, c.file, c.line))
        .unwrap_or_else(|| "<no Python caller>".into());
    let what = format!("{} loaded by {whence}", describe_payload(load, &id));
    let noun = load.kind.table();
    let origin = refusal.origin.as_deref().unwrap_or("<no manifest>");
    let (why, hint) = match &refusal.reason {
        Reason::NotListed => (
            format!("is not in the manifest {origin}"),
            format!("if this {noun} is trusted, add this entry to {origin}:\n\n{entry}"),
        ),
        Reason::StackMismatch { patterns } => (
            format!(
                "is in the manifest {origin}, but only for callers matching {}",
                patterns
                    .iter()
                    .map(|p| format!("{p:?}"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
            format!("if this caller is trusted too, add this entry to {origin}:\n\n{entry}"),
        ),
        Reason::NoManifest => (
            "is not allowed: pickleguard was activated with no manifest, so nothing loads unless allow_pickles() lifts it".into(),
            format!("if this {noun} is trusted, enforce a manifest holding this entry instead (PICKLEGUARD_MANIFEST, or activate(manifest=...)); code holding this layer's token can also lift it with `with allow_pickles(token, only_objects=[\"{id}\"]):`\n\n{entry}"),
        ),
        Reason::BrokenManifest(err) => (
            format!("is not allowed: the manifest failed to load ({err}), and until it loads this layer allows no pickle"),
            "fix the manifest (pickleguard check MANIFEST) and restart the process".into(),
        ),
        Reason::Scope => (
            "is not allowed by a no_pickles() scope active in this thread or task".into(),
            format!("the code that opened the scope can allow it with `with allow_pickles(token, only_objects=[\"{id}\"]):`"),
        ),
    };
    Denial {
        message: format!("{what} {why}.\nhint: {hint}"),
        kind: load.kind,
        sha256_hex,
        identity: id.to_string(),
        size: load.size(),
        caller: caller.map(|c| c.name.clone()).unwrap_or_default(),
        code: reason_code(&refusal.reason),
        entry,
    }
}

static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn logger(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    LOGGER
        .get_or_try_init(py, || -> PyResult<Py<PyAny>> {
            Ok(py
                .import("logging")?
                .call_method1("getLogger", ("pickleguard",))?
                .unbind())
        })
        .map(|l| l.bind(py))
}

const DEBUG: i32 = 10;

/// The logger's per-level cache of isEnabledFor answers (`Logger._cache`). logging
/// clears it in place whenever levels change, so the dict object itself is stable.
static LOGGER_CACHE: PyOnceLock<Option<Py<PyDict>>> = PyOnceLock::new();

fn debug_enabled(py: Python<'_>, logger: &Bound<'_, PyAny>) -> PyResult<bool> {
    let cache = LOGGER_CACHE.get_or_init(py, || {
        logger
            .getattr(pyo3::intern!(py, "_cache"))
            .ok()
            .and_then(|c| c.cast_into::<PyDict>().ok())
            .map(Bound::unbind)
    });
    // Reading the cached answer skips a Python-level call on every load; without
    // it, ask isEnabledFor, which fills it.
    if let Some(flag) = cache
        .as_ref()
        .and_then(|c| c.bind(py).get_item(DEBUG).ok().flatten())
    {
        return flag.is_truthy();
    }
    logger.call_method1("isEnabledFor", (DEBUG,))?.is_truthy()
}

fn log_allowed(py: Python<'_>, load: &Load<'_>, ids: &mut Identities<'_>) -> PyResult<()> {
    let logger = logger(py)?;
    if debug_enabled(py, logger)? {
        let id = ids
            .any_known()
            .unwrap_or_else(|| ids.get(Algorithm::Sha256));
        logger.call_method1("debug", ("allowed %s", describe_payload(load, &id)))?;
    }
    Ok(())
}

/// Hash `data` (and out-of-band `buffers`), releasing the GIL when they are large.
/// Callers pass only memory that no other thread can change: `bytes` objects or
/// buffers this module owns.
fn hash(py: Python<'_>, algorithm: Algorithm, data: &[u8], buffers: &[&[u8]]) -> Digest {
    let size = data.len() + buffers.iter().map(|b| b.len()).sum::<usize>();
    let run = || digest_with_buffers(algorithm, data, buffers.iter().copied());
    if size >= DETACH_THRESHOLD {
        py.detach(run)
    } else {
        run()
    }
}

/// What the gate knows about one load, for the decision, the journal and the logs.
struct Load<'a> {
    kind: Kind,
    /// The pickle's bytes, or the whole artifact file.
    data: &'a [u8],
    /// Out-of-band buffers the pickle consumes; part of its identity.
    buffers: &'a [&'a [u8]],
    /// The file's name, when the payload came from a file object that has one.
    source: Option<String>,
    /// For artifacts: the loader that reads it (`torch.load`).
    loader: Option<&'a str>,
    /// For artifacts: the globals its pickles import, found by the adapter, with
    /// whether each is risky (for the journal, so `record` can flag them).
    artifact_imports: &'a [(String, bool)],
    /// Digests of exactly these bytes already computed by a first look.
    known: KnownDigests,
}

impl<'a> Load<'a> {
    fn pickle(data: &'a [u8], buffers: &'a [&'a [u8]], source: Option<String>) -> Self {
        Load {
            kind: Kind::Pickle,
            data,
            buffers,
            source,
            loader: None,
            artifact_imports: &[],
            known: [None, None],
        }
    }

    fn knowing(mut self, known: KnownDigests) -> Self {
        self.known = known;
        self
    }

    fn size(&self) -> usize {
        self.data.len()
    }
}

/// Apply the call-site pin, then every layer; log; journal; refuse or return.
fn judge(py: Python<'_>, load: &Load<'_>, pin: Option<&str>) -> Result<()> {
    let mut compute = |algorithm| hash(py, algorithm, load.data, load.buffers);
    let mut ids = Identities::seeded(&mut compute, load.known);
    if let Some(pin) = pin {
        let expected = Id::parse(pin)
            .map_err(|e| GuardError::Py(PyValueError::new_err(format!("pin: {e}"))))?;
        let actual = ids.get(expected.algorithm);
        if actual != expected {
            let who = caller(py);
            let denial = Denial {
                message: format!(
                    "{} does not match the pinned {expected}.\nhint: the data changed since it was pinned; if the new data is trusted, update the pin",
                    describe_payload(load, &actual),
                ),
                kind: load.kind,
                sha256_hex: known_sha256_hex(&ids),
                identity: actual.to_string(),
                size: load.size(),
                caller: who.map(|c| c.name).unwrap_or_default(),
                code: "pin-mismatch",
                entry: String::new(),
            };
            logger(py)?.call_method1("error", ("%s", denial.message.as_str()))?;
            return Err(GuardError::Denied(Box::new(denial)));
        }
    }
    let layers = PROCESS_LAYERS.read().clone();
    let scopes = active_scopes(py)?;
    let journal = JOURNAL.get();
    if layers.is_empty() && scopes.scopes.is_empty() && journal.is_none() {
        return Ok(log_allowed(py, load, &mut ids)?);
    }
    // Inside an admitted artifact, a pickle is covered by its entry only if the
    // pickle's bytes are part of the artifact; anything else the loader reads (a
    // file next to it, a cache) is judged like any load.
    let covering = match load.kind {
        Kind::Pickle if !scopes.artifacts.is_empty() => scopes.covering_artifact(py, load.data),
        _ => None,
    };
    let grants = scopes.grants_for(covering);
    let mut stack = || call_stack(py);
    let mut frames = LazyFrames::new(&mut stack);
    let decision: Decision = decide(
        &layers,
        &scopes.scopes,
        &grants,
        load.kind,
        &mut ids,
        &mut frames,
    );
    if decision.allowed() && covering.is_none() {
        if let Some(journal) = journal {
            journal.record(load, &mut ids, frames.get());
        }
    }
    if decision.refusals.is_empty() {
        return Ok(log_allowed(py, load, &mut ids)?);
    }
    let who = caller(py);
    for warning in decision.warnings() {
        let d = describe(warning, load, &mut ids, who.as_ref());
        audit(&d, "warn", warning, load);
        logger(py)?.call_method1(
            "warning",
            ("warn mode, allowed anyway: %s", d.message.as_str()),
        )?;
    }
    if let Some(refusal) = decision.denial() {
        let d = describe(refusal, load, &mut ids, who.as_ref());
        audit(&d, "deny", refusal, load);
        logger(py)?.call_method1("error", ("%s", d.message.as_str()))?;
        return Err(GuardError::Denied(Box::new(d)));
    }
    Ok(())
}

/// Inputs at least this long get a first look by the hash of the whole input.
/// Below it, delimiting costs less than the admitted unpickler that a load
/// admitted this way runs through (it cannot know whether the pickle names
/// globals without delimiting it).
const WHOLE_LOOK_FROM: usize = 4096;

/// What a first look at a whole input found.
enum WholeLook {
    /// Allowed as it is, by every layer and scope, with nothing to report.
    Allowed,
    /// Not decided this way: delimit and judge the pickle. The digests of the
    /// whole input, if it turns out to be exactly the pickle.
    Judge(KnownDigests),
}

/// Decide `data` as though it were exactly one pickle, without delimiting it and
/// with no side effect. Every pin and manifest entry is the hash of exactly one
/// pickle, so a listed hash of the whole input means the input is that pickle, and
/// the unpickler consumes it whole: the identity is the same as delimiting gives.
/// (Were an entry the hash of a pickle followed by other bytes, the unpickler
/// would still run only bytes the entry names.) Anything short of a plain allow
/// (a refusal, a warning, a journal to write, a load inside an artifact) goes the
/// delimiting way, which decides, reports and records with the exact identity.
fn whole_look(py: Python<'_>, data: &[u8]) -> PyResult<WholeLook> {
    if JOURNAL.get().is_some() {
        return Ok(WholeLook::Judge([None, None]));
    }
    let layers = PROCESS_LAYERS.read().clone();
    let scopes = active_scopes(py)?;
    if (layers.is_empty() && scopes.scopes.is_empty()) || !scopes.artifacts.is_empty() {
        return Ok(WholeLook::Judge([None, None]));
    }
    let mut compute = |algorithm| hash(py, algorithm, data, &[]);
    let mut ids = Identities::new(&mut compute);
    let grants = scopes.grants_for(None);
    let mut stack = || call_stack(py);
    let mut frames = LazyFrames::new(&mut stack);
    let decision = decide(
        &layers,
        &scopes.scopes,
        &grants,
        Kind::Pickle,
        &mut ids,
        &mut frames,
    );
    if !decision.refusals.is_empty() {
        return Ok(WholeLook::Judge(ids.computed()));
    }
    log_allowed(py, &Load::pickle(data, &[], None), &mut ids)?;
    Ok(WholeLook::Allowed)
}

// ---------------------------------------------------------------------------
// The record journal and the audit log: JSON lines, one write(2) per line on a file
// opened for appending, so concurrent processes interleave whole lines and a crash
// loses nothing already written.

fn append_line(file: &mut std::fs::File, mut line: String) {
    use std::io::Write as _;
    line.push('\n');
    // Best effort by design: a full disk must not turn an allowed load into a crash.
    let _ = file.write_all(line.as_bytes());
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `pickleguard record`'s journal: a directory where each process appends to its own
/// file, reopened after a fork so parent and child never share one.
struct Journal {
    dir: std::path::PathBuf,
    /// The identity written for each load: what `record` pins with.
    algorithm: Algorithm,
    file: Mutex<Option<(u32, std::fs::File)>>,
}

static JOURNAL: once_cell::sync::OnceCell<Journal> = once_cell::sync::OnceCell::new();

impl Journal {
    fn record(&self, load: &Load<'_>, ids: &mut Identities<'_>, stack: &CallStack) {
        let imports: Vec<(String, bool)> = match load.kind {
            Kind::Pickle => scan::imports(load.data)
                .iter()
                .map(|i| (i.render(), i.is_risky()))
                .collect(),
            // A whole file (a zip archive, say): its adapter scanned the pickles inside.
            Kind::Artifact => load.artifact_imports.to_vec(),
        };
        let caller = stack.caller.as_deref().unwrap_or_default();
        let channel = match load.kind {
            Kind::Pickle => crate::channels::known_channel(caller, stack.called_from.as_deref()),
            Kind::Artifact => None,
        };
        let entry = serde_json::json!({
            "v": 1,
            "time": now(),
            "pid": std::process::id(),
            "kind": load.kind.table(),
            "id": ids.get(self.algorithm).to_string(),
            "size": load.size(),
            "caller": caller,
            "called_from": stack.called_from.as_deref(),
            "stack": stack.frames.iter().map(|f| f.as_ref()).collect::<Vec<&str>>(),
            "source": load.source,
            "loader": load.loader,
            "channel": channel,
            "imports": imports.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            "risky": imports.iter().filter(|(_, risky)| *risky).map(|(name, _)| name).collect::<Vec<_>>(),
        });
        let pid = std::process::id();
        let mut slot = self.file.lock();
        if slot.as_ref().is_none_or(|(owner, _)| *owner != pid) {
            let path = self.dir.join(format!(
                "journal-{pid}-{}.jsonl",
                NEXT_LAYER_ID.fetch_add(1, Ordering::Relaxed)
            ));
            *slot = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
                .map(|f| (pid, f));
        }
        if let Some((_, file)) = slot.as_mut() {
            append_line(file, entry.to_string());
        }
    }
}

/// Journal every allowed load to files in `directory` (used by `pickleguard record`),
/// identified with `algorithm` ("sha256" or "blake3").
#[pyfunction]
#[pyo3(signature = (directory, algorithm="sha256"))]
fn start_journal(directory: std::path::PathBuf, algorithm: &str) -> PyResult<()> {
    let algorithm = parse_algorithm(algorithm)?;
    std::fs::create_dir_all(&directory).map_err(|e| {
        PickleGuardError::new_err(format!(
            "could not create the record journal {}: {e}",
            directory.display()
        ))
    })?;
    let _ = JOURNAL.set(Journal {
        dir: directory,
        algorithm,
        file: Mutex::new(None),
    });
    Ok(())
}

fn parse_algorithm(name: &str) -> PyResult<Algorithm> {
    Algorithm::parse(name).ok_or_else(|| {
        PyValueError::new_err(format!(
            "algorithm must be \"sha256\" or \"blake3\", not {name:?}"
        ))
    })
}

static AUDIT_LOG: once_cell::sync::OnceCell<Mutex<std::fs::File>> =
    once_cell::sync::OnceCell::new();

/// Also write each warn-mode report and each denial as a JSON line to `path`.
#[pyfunction]
fn set_audit_log(path: std::path::PathBuf) -> PyResult<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| {
            PickleGuardError::new_err(format!(
                "could not open the audit log {}: {e}",
                path.display()
            ))
        })?;
    let _ = AUDIT_LOG.set(Mutex::new(file));
    Ok(())
}

fn audit(denial: &Denial, event: &str, refusal: &Refusal, load: &Load<'_>) {
    if let Some(log) = AUDIT_LOG.get() {
        let line = serde_json::json!({
            "time": now(),
            "pid": std::process::id(),
            "event": event,
            "code": denial.code,
            "kind": denial.kind.table(),
            "sha256": denial.sha256_hex,
            "identity": denial.identity,
            "size": denial.size,
            "caller": denial.caller,
            "manifest": refusal.origin,
            "source": load.source,
        });
        append_line(&mut log.lock(), line.to_string());
    }
}

// ---------------------------------------------------------------------------
// Admission: delimit, identify, judge, and hand back exactly the verified input.

fn snapshot_bytes<'py>(data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    if let Ok(bytes) = data.cast::<PyBytes>() {
        return Ok(bytes.clone());
    }
    match PyMemoryView::from(data) {
        Ok(view) => view
            .call_method0("tobytes")?
            .cast_into::<PyBytes>()
            .map_err(PyErr::from),
        Err(_) => Err(PyTypeError::new_err(format!(
            "a bytes-like object is required, not '{}'",
            data.get_type().name()?
        ))),
    }
}

/// Take the out-of-band buffers a pickle will consume, and the iterator to hand the
/// unpickler in their place: the same objects, then whatever the caller had left.
fn take_buffers<'py>(
    py: Python<'py>,
    buffers: &Bound<'py, PyAny>,
    count: usize,
) -> PyResult<(Vec<Bound<'py, PyBytes>>, Bound<'py, PyAny>)> {
    let iterator = buffers.try_iter()?;
    let taken = PyList::empty(py);
    let mut contents = Vec::with_capacity(count);
    for _ in 0..count {
        match iterator.clone().next() {
            Some(item) => {
                let item = item?;
                contents.push(snapshot_bytes(&item)?);
                taken.append(item)?;
            }
            None => break,
        }
    }
    let chained = py
        .import("itertools")?
        .getattr("chain")?
        .call1((taken, iterator))?;
    Ok((contents, chained))
}

/// The out-of-band buffers that are part of a pickle's identity (copies, so no
/// other thread can change them while they are hashed), and the iterator to hand
/// the unpickler.
type TakenBuffers<'py> = (Vec<Bound<'py, PyBytes>>, Option<Bound<'py, PyAny>>);

fn buffers_for_identity<'py>(
    py: Python<'py>,
    out_of_band: usize,
    buffers: Option<Bound<'py, PyAny>>,
) -> PyResult<TakenBuffers<'py>> {
    match buffers {
        Some(buffers) if out_of_band > 0 => {
            let (contents, feed) = take_buffers(py, &buffers, out_of_band)?;
            Ok((contents, Some(feed)))
        }
        other => Ok((Vec::new(), other)),
    }
}

fn as_slices<'a>(buffers: &'a [Bound<'_, PyBytes>]) -> Vec<&'a [u8]> {
    buffers.iter().map(|b| b.as_bytes()).collect()
}

/// Admit `data` for `loads`: returns what to pass to the real unpickler (exactly the
/// verified bytes) and the buffers iterator to pass with it.
fn admit_bytes<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    buffers: Option<Bound<'py, PyAny>>,
    sha256: Option<&str>,
) -> Result<AdmittedInput<'py>> {
    let bytes = snapshot_bytes(data)?;
    let raw = bytes.as_bytes();
    let mut whole = [None, None];
    if raw.len() >= WHOLE_LOOK_FROM && buffers.is_none() && sha256.is_none() {
        match whole_look(py, raw)? {
            WholeLook::Allowed => return Ok((bytes.into_any(), None, true)),
            WholeLook::Judge(known) => whole = known,
        }
    }
    let extent = match reader::delimit(raw) {
        Ok(extent) => extent,
        // Nothing to run: let the real unpickler raise its own EOFError.
        Err(ReadError::Empty) => return Ok((bytes.into_any(), buffers, false)),
        Err(error) => {
            return Err(GuardError::Undelimited {
                data: bytes.unbind(),
                error: GuardError::Read(error.map_source(|never| match never {})).into(),
            })
        }
    };
    let pickle = &raw[..extent.len];
    let (taken, feed_buffers) = buffers_for_identity(py, extent.out_of_band_buffers, buffers)?;
    let slices = as_slices(&taken);
    if extent.len < raw.len() || !slices.is_empty() {
        whole = [None, None];
    }
    judge(
        py,
        &Load::pickle(pickle, &slices, None).knowing(whole),
        sha256,
    )?;
    let feed = if extent.len == raw.len() {
        bytes.into_any()
    } else {
        PyMemoryView::from(bytes.as_any())?.get_item(PySlice::new(py, 0, extent.len as isize, 1))?
    };
    Ok((feed, feed_buffers, extent.uses_globals))
}

/// A Python file's `read` and `readline`, called exactly as the C unpickler calls
/// them on a file without `peek`.
struct PyFileSource<'a, 'py> {
    read: &'a Bound<'py, PyAny>,
    readline: &'a Bound<'py, PyAny>,
    /// For a file of one of io's own C types, to read large runs straight into
    /// the buffer (see `trusted_readinto`).
    readinto: Option<TrustedFile<'py>>,
}

/// Reads of at least this many bytes go through `readinto` when it is trusted.
const READINTO_FROM: usize = 1 << 16;

/// `type(file).readinto` when `file` is exactly an `io.FileIO`, an `io.BytesIO`, or
/// an `io.BufferedReader` over exactly an `io.FileIO` (what `open(path, "rb")`
/// returns), and its `read` is its own. Their C `readinto` writes into the buffer
/// it is given and keeps no reference to it, so it may write into memory this
/// module owns (and will hash). Any other file is read with `read` alone: its
/// `readinto` (or, for a BufferedReader, its raw stream's) could keep the view
/// and change the bytes after they were judged.
fn trusted_readinto<'py>(
    file: &Bound<'py, PyAny>,
    read: &Bound<'py, PyAny>,
) -> Option<TrustedFile<'py>> {
    let py = file.py();
    let [file_io, bytes_io, buffered_reader] = io_types(py).ok()?;
    let file_type = file.get_type();
    let kind = if file_type.is(file_io) {
        TrustedKind::Raw
    } else if file_type.is(bytes_io) {
        TrustedKind::InMemory
    } else if file_type.is(buffered_reader)
        && file
            .getattr(pyo3::intern!(py, "raw"))
            .is_ok_and(|raw| raw.get_type().is(file_io))
    {
        TrustedKind::Buffered
    } else {
        return None;
    };
    let own_read = read.is_instance_of::<pyo3::types::PyCFunction>()
        && read
            .getattr(pyo3::intern!(py, "__self__"))
            .is_ok_and(|s| s.is(file))
        && read
            .getattr(pyo3::intern!(py, "__name__"))
            .is_ok_and(|n| n.eq(pyo3::intern!(py, "read")).unwrap_or(false));
    if !own_read {
        return None;
    }
    Some(TrustedFile {
        readinto: file_type.getattr(pyo3::intern!(py, "readinto")).ok()?,
        file: file.clone(),
        kind,
    })
}

static IO_TYPES: PyOnceLock<[Py<PyAny>; 3]> = PyOnceLock::new();

/// `io.FileIO`, `io.BytesIO` and `io.BufferedReader`, looked up once.
fn io_types(py: Python<'_>) -> PyResult<[&Bound<'_, PyAny>; 3]> {
    let types = IO_TYPES.get_or_try_init(py, || -> PyResult<[Py<PyAny>; 3]> {
        let io = py.import("io")?;
        Ok([
            io.getattr("FileIO")?.unbind(),
            io.getattr("BytesIO")?.unbind(),
            io.getattr("BufferedReader")?.unbind(),
        ])
    })?;
    Ok([types[0].bind(py), types[1].bind(py), types[2].bind(py)])
}

/// A file of one of io's own types, and its type's `readinto`.
struct TrustedFile<'py> {
    readinto: Bound<'py, PyAny>,
    file: Bound<'py, PyAny>,
    kind: TrustedKind,
}

enum TrustedKind {
    /// `io.FileIO`.
    Raw,
    /// `io.BufferedReader` over an `io.FileIO`.
    Buffered,
    /// `io.BytesIO`.
    InMemory,
}

/// Call `readinto(file, view)` with `view` over the spare capacity of `out`, for up
/// to `n` bytes, and count what it wrote as part of `out`.
fn read_into_vec(
    readinto: &Bound<'_, PyAny>,
    file: &Bound<'_, PyAny>,
    n: usize,
    out: &mut Vec<u8>,
) -> PyResult<usize> {
    let py = file.py();
    out.reserve(n);
    let spare = out.spare_capacity_mut();
    let length = isize::try_from(n).map_err(|_| PyOverflowError::new_err("read too large"))?;
    // SAFETY: `spare` has room for at least `n` bytes (reserved above) and stays
    // allocated until this function returns: `out` is not touched meanwhile. The
    // view is released before returning, and the trusted C `readinto` keeps no
    // reference to it. It only writes into the memory (never reads it).
    let view = unsafe {
        pyo3::ffi::PyMemoryView_FromMemory(
            spare.as_mut_ptr().cast::<std::os::raw::c_char>(),
            length,
            pyo3::ffi::PyBUF_WRITE,
        )
    };
    // SAFETY: PyMemoryView_FromMemory returns a new reference or NULL with an
    // exception set.
    let view = unsafe { Bound::from_owned_ptr_or_err(py, view)? };
    let result = readinto.call1((file, &view));
    view.call_method0("release")?;
    let count: usize = result?.extract()?;
    if count > n {
        return Err(PyValueError::new_err(format!(
            "readinto() returned {count}, more than the {n} bytes asked for"
        )));
    }
    // SAFETY: `readinto` initialised the first `count` bytes of the spare
    // capacity, and `count <= n <= capacity - len`.
    unsafe { out.set_len(out.len() + count) };
    Ok(count)
}

fn append_bytes_like(result: &Bound<'_, PyAny>, out: &mut Vec<u8>) -> PyResult<usize> {
    if let Ok(bytes) = result.cast::<PyBytes>() {
        out.extend_from_slice(bytes.as_bytes());
        return Ok(bytes.as_bytes().len());
    }
    let bytes = snapshot_bytes(result)?;
    out.extend_from_slice(bytes.as_bytes());
    Ok(bytes.as_bytes().len())
}

impl Source for PyFileSource<'_, '_> {
    type Error = PyErr;
    fn read(&mut self, n: usize, out: &mut Vec<u8>) -> PyResult<usize> {
        if let Some(trusted) = self.readinto.as_ref().filter(|_| n >= READINTO_FROM) {
            return read_into_vec(&trusted.readinto, &trusted.file, n, out);
        }
        append_bytes_like(&self.read.call1((n,))?, out)
    }
    fn read_line(&mut self, out: &mut Vec<u8>) -> PyResult<usize> {
        append_bytes_like(&self.readline.call0()?, out)
    }
}

/// Files up to this size get a first look by the hash of the whole file.
const WHOLE_FILE_LOOK_UP_TO: usize = 64 << 20;

/// The whole of a file of io's own types (see `trusted_readinto`) whose position
/// is at its start, for a first look (see `whole_look`); `None`, with the file
/// where it was, for any other. Only at the start, so a file of many pickles
/// costs one look that finds nothing, not one per pickle.
fn read_whole_file<'py>(
    trusted: &TrustedFile<'py>,
    head: Option<&Bound<'py, PyBytes>>,
) -> PyResult<Option<Vec<u8>>> {
    let file = &trusted.file;
    // The type's own methods: the file is exactly one of io's types, but an
    // attribute set on the instance could shadow a method.
    let py = file.py();
    let method = |name: &Bound<'py, PyString>| file.get_type().getattr(name);
    let worth_it =
        |size: u64| (WHOLE_LOOK_FROM as u64..=WHOLE_FILE_LOOK_UP_TO as u64).contains(&size);
    // A file that cannot tell its position (a pipe, a closed file) is read the
    // ordinary way, which raises what plain pickle raises.
    let at_start = || {
        let position = method(pyo3::intern!(py, "tell"))
            .and_then(|tell| tell.call1((file,))?.extract::<u64>());
        matches!(position, Ok(0))
    };
    let size = match trusted.kind {
        // Read pickle by pickle: each read is a system call anyway.
        TrustedKind::Raw => return Ok(None),
        TrustedKind::InMemory => {
            if !at_start() {
                return Ok(None);
            }
            let end: u64 = method(pyo3::intern!(py, "seek"))?
                .call1((file, 0, 2))?
                .extract()?;
            method(pyo3::intern!(py, "seek"))?.call1((file, 0))?;
            end
        }
        TrustedKind::Buffered => {
            // System calls are dear (tell and fstat each cost more than a small
            // load): the first frame's length, in the bytes the load reads first
            // anyway, says whether the pickle is large enough to look at whole.
            // Pickles of protocols before 4 have no frame and are delimited.
            let large = head.is_some_and(|h| {
                reader::first_frame_len(h.as_bytes())
                    .is_some_and(|len| len >= WHOLE_LOOK_FROM as u64)
            });
            if !large || !at_start() {
                return Ok(None);
            }
            let fd: std::os::raw::c_int = method(pyo3::intern!(py, "fileno"))?
                .call1((file,))?
                .extract()?;
            regular_file_size(fd).unwrap_or(0)
        }
    };
    if !worth_it(size) {
        return Ok(None);
    }
    let size = size as usize;
    let mut data = Vec::with_capacity(size);
    while data.len() < size {
        if read_into_vec(&trusted.readinto, file, size - data.len(), &mut data)? == 0 {
            break;
        }
    }
    if data.len() != size {
        // It shrank meanwhile: read it the ordinary way.
        seek_to(file, 0)?;
        return Ok(None);
    }
    Ok(Some(data))
}

/// The size of the regular file open as `fd`; `None` for anything else (a pipe, a
/// device), or if fstat(2) fails.
fn regular_file_size(fd: std::os::raw::c_int) -> Option<u64> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a `struct stat` into the pointer it is given, which
    // points to enough memory for one; it reads no memory of ours. A bad `fd`
    // makes it fail with EBADF, nothing more.
    if unsafe { libc::fstat(fd, stat.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: fstat returned 0, so it filled the whole struct.
    let stat = unsafe { stat.assume_init() };
    let regular = (stat.st_mode & libc::S_IFMT) == libc::S_IFREG;
    regular.then(|| u64::try_from(stat.st_size).ok()).flatten()
}

/// Move `file`, one of io's own types, to `position`, with its type's own `seek`.
fn seek_to(file: &Bound<'_, PyAny>, position: usize) -> PyResult<()> {
    let seek = file.get_type().getattr(pyo3::intern!(file.py(), "seek"))?;
    seek.call1((file, position))?;
    Ok(())
}

/// A file whose whole contents were admitted at once: after the load, its
/// position goes back to right after what the unpickler read, as plain pickle
/// leaves it.
struct Rewind<'py> {
    file: Bound<'py, PyAny>,
    len: usize,
}

impl Rewind<'_> {
    fn after(&self, consumed: usize) -> PyResult<()> {
        if consumed < self.len {
            seek_to(&self.file, consumed)?;
        }
        Ok(())
    }
}

/// One pickle admitted from a stream.
struct AdmittedStream<'py> {
    /// The verified bytes (empty at end of stream, so the real unpickler raises
    /// its own EOFError).
    data: Bound<'py, AdmittedBytes>,
    /// The buffers iterator to pass with them.
    buffers: Option<Bound<'py, PyAny>>,
    /// Whether the pickle names globals (true when not known).
    uses_globals: bool,
    rewind: Option<Rewind<'py>>,
}

/// Admit one pickle read from a stream through its `read` and `readline` callables.
/// With `look_whole`, a file of io's own types at its start is first judged whole.
#[allow(clippy::too_many_arguments)]
fn admit_stream_inner<'py>(
    py: Python<'py>,
    read: &Bound<'py, PyAny>,
    readline: &Bound<'py, PyAny>,
    file: Option<&Bound<'py, PyAny>>,
    buffers: Option<Bound<'py, PyAny>>,
    sha256: Option<&str>,
    source_name: Option<String>,
    look_whole: bool,
) -> Result<AdmittedStream<'py>> {
    let readinto = file.and_then(|f| trusted_readinto(f, read));
    // A buffered reader's buffer, looked at once: it says whether a pickle is
    // large (its first frame) or lies whole in it.
    let head = readinto
        .as_ref()
        .filter(|t| matches!(t.kind, TrustedKind::Buffered))
        .and_then(|t| peek_buffer(&t.file));
    if let (Some(file), Some(trusted), true, None, None) =
        (file, &readinto, look_whole, &buffers, sha256)
    {
        if let Some(data) = read_whole_file(trusted, head.as_ref())? {
            match whole_look(py, &data)? {
                WholeLook::Allowed => {
                    let len = data.len();
                    return Ok(AdmittedStream {
                        data: Bound::new(py, AdmittedBytes { data })?,
                        buffers: None,
                        uses_globals: true,
                        rewind: Some(Rewind {
                            file: file.clone(),
                            len,
                        }),
                    });
                }
                WholeLook::Judge(known) => {
                    // Delimit the bytes in hand, never a second read of the file:
                    // what is judged and run must be what was read.
                    if let Ok(extent) = reader::delimit(&data) {
                        seek_to(file, extent.len)?;
                        let known = if extent.len == data.len() {
                            known
                        } else {
                            [None, None]
                        };
                        let mut pickle = data;
                        pickle.truncate(extent.len);
                        let load = Load::pickle(&pickle, &[], source_name).knowing(known);
                        judge(py, &load, sha256)?;
                        return Ok(AdmittedStream {
                            data: Bound::new(py, AdmittedBytes { data: pickle })?,
                            buffers,
                            uses_globals: extent.uses_globals,
                            rewind: None,
                        });
                    }
                    // Not one whole pickle: read it the ordinary way, which raises
                    // what plain pickle raises, judging what it reads afresh.
                    seek_to(file, 0)?;
                }
            }
        }
    }
    let in_buffer = match &head {
        Some(head) => read_buffered_pickle(head, read)?,
        None => None,
    };
    let mut pickle = Vec::new();
    let read_one = match in_buffer {
        Some((data, extent)) => {
            pickle = data;
            Ok(extent)
        }
        None => {
            let mut source = PyFileSource {
                read,
                readline,
                readinto,
            };
            reader::read_one_into(&mut source, &mut pickle)
        }
    };
    let extent = match read_one {
        Ok(extent) => extent,
        Err(ReadError::Empty) => {
            return Ok(AdmittedStream {
                data: Bound::new(py, AdmittedBytes { data: Vec::new() })?,
                buffers,
                uses_globals: false,
                rewind: None,
            });
        }
        Err(ReadError::Source(e)) => return Err(e.into()),
        Err(error) => {
            return Err(GuardError::Undelimited {
                data: PyBytes::new(py, &pickle).unbind(),
                error: GuardError::Read(error).into(),
            })
        }
    };
    let (taken, feed_buffers) = buffers_for_identity(py, extent.out_of_band_buffers, buffers)?;
    let slices = as_slices(&taken);
    judge(py, &Load::pickle(&pickle, &slices, source_name), sha256)?;
    Ok(AdmittedStream {
        data: Bound::new(py, AdmittedBytes { data: pickle })?,
        buffers: feed_buffers,
        uses_globals: extent.uses_globals,
        rewind: None,
    })
}

/// What a buffered reader holds in its buffer, read from the file first if empty
/// (the read a load makes anyway), without moving its position. `None` for a
/// file that cannot say (a closed file, say: the ordinary way then raises what
/// plain pickle raises).
fn peek_buffer<'py>(file: &Bound<'py, PyAny>) -> Option<Bound<'py, PyBytes>> {
    let peek = file
        .get_type()
        .getattr(pyo3::intern!(file.py(), "peek"))
        .ok()?;
    peek.call1((file, 1)).ok()?.cast_into::<PyBytes>().ok()
}

/// A pickle that lies whole in a buffered reader's buffer (a small one, usually):
/// delimited there, without a call per opcode argument, then taken with one
/// `read`. `None`, having read nothing, when the buffer holds no whole pickle.
fn read_buffered_pickle(
    head: &Bound<'_, PyBytes>,
    read: &Bound<'_, PyAny>,
) -> PyResult<Option<(Vec<u8>, reader::Extent)>> {
    let Ok(extent) = reader::delimit(head.as_bytes()) else {
        return Ok(None);
    };
    // `read` is the file's own (see `trusted_readinto`); it returns the buffered
    // bytes just peeked at. Those it returns are the ones judged and run.
    let data = read.call1((extent.len,))?;
    let data = data.cast::<PyBytes>().map_err(PyErr::from)?.as_bytes();
    if data != &head.as_bytes()[..extent.len] {
        return Err(PickleGuardError::new_err(
            "the file changed between two reads of the same bytes; nothing was loaded",
        ));
    }
    Ok(Some((data.to_vec(), extent)))
}

/// The bytes of a pickle admitted from a stream, kept as read (no copy into a
/// `bytes` object) and lent read-only, through the buffer protocol, to the
/// unpickler that loads them. Nothing can change them: no method mutates them
/// and no writable view is handed out.
#[pyclass(frozen, module = "pickleguard._core")]
struct AdmittedBytes {
    data: Vec<u8>,
}

#[pymethods]
impl AdmittedBytes {
    /// # Safety
    /// CPython calls this with a valid `view` to fill.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: std::os::raw::c_int,
    ) -> PyResult<()> {
        let data = &slf.get().data;
        // SAFETY: `view` is valid (CPython's contract for bf_getbuffer). The memory
        // belongs to `slf`, which the filled view holds a reference to until it is
        // released; `readonly = 1` makes a request for a writable view fail.
        let status = unsafe {
            pyo3::ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                data.as_ptr().cast_mut().cast::<std::os::raw::c_void>(),
                data.len() as pyo3::ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if status == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    fn __len__(&self) -> usize {
        self.data.len()
    }
}

/// `admit_stream` for the Python-level unpickler classes: raises `_UndelimitedPickle`
/// for input that cannot be delimited, which the caller explains.
#[pyfunction]
#[pyo3(signature = (read, readline, buffers=None, sha256=None, file=None))]
fn admit_stream<'py>(
    py: Python<'py>,
    read: &Bound<'py, PyAny>,
    readline: &Bound<'py, PyAny>,
    buffers: Option<Bound<'py, PyAny>>,
    sha256: Option<&str>,
    file: Option<Bound<'py, PyAny>>,
) -> PyResult<(Bound<'py, PyBytes>, Option<Bound<'py, PyAny>>)> {
    let name = file.as_ref().and_then(source_name);
    let admitted = admit_stream_inner(
        py,
        read,
        readline,
        file.as_ref(),
        buffers,
        sha256,
        name,
        false,
    )?;
    let data = PyBytes::new(py, &admitted.data.get().data);
    Ok((data, admitted.buffers))
}

/// The name of the file a pickle is read from, for the journal and the audit log
/// only (looked up only when one of them is on).
fn source_name(file: &Bound<'_, PyAny>) -> Option<String> {
    if JOURNAL.get().is_none() && AUDIT_LOG.get().is_none() {
        return None;
    }
    let name = file.getattr(pyo3::intern!(file.py(), "name")).ok()?;
    let name = py_fspath(&name).unwrap_or(name);
    name.extract::<String>().ok()
}

fn py_fspath<'py>(obj: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
    obj.py()
        .import("os")
        .ok()?
        .call_method1("fspath", (obj,))
        .ok()
}

// ---------------------------------------------------------------------------
// The guarded module functions. They are builtins, like the originals, so they do
// not bind as methods when stored on a class (`loads = pickle.loads`).

static ORIGINAL_LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ADMITTED_UNPICKLER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ORIGINAL_C_LOAD: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ORIGINAL_PY_LOAD: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ORIGINAL_C_FIND_CLASS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ORIGINAL_PY_FIND_CLASS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static EXPLAIN_UNDELIMITED: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Hand the core the originals it runs admitted bytes with (C `loads`, the C
/// `Unpickler.load`, the pure-Python `_Unpickler.load`) and the gate's explainer.
/// Only the first call counts, so they cannot be swapped afterwards.
#[pyfunction]
fn bind_gate(
    py: Python<'_>,
    original_loads: Py<PyAny>,
    c_unpickler_load: Py<PyAny>,
    py_unpickler_load: Py<PyAny>,
    c_find_class: Py<PyAny>,
    py_find_class: Py<PyAny>,
    admitted_unpickler: Py<PyAny>,
    explain: Py<PyAny>,
) {
    let _ = ADMITTED_UNPICKLER.set(py, admitted_unpickler);
    let _ = ORIGINAL_C_FIND_CLASS.set(py, c_find_class);
    let _ = ORIGINAL_PY_FIND_CLASS.set(py, py_find_class);
    let _ = ORIGINAL_LOADS.set(py, original_loads);
    let _ = ORIGINAL_C_LOAD.set(py, c_unpickler_load);
    let _ = ORIGINAL_PY_LOAD.set(py, py_unpickler_load);
    let _ = EXPLAIN_UNDELIMITED.set(py, explain);
}

fn gate_part<'py>(
    py: Python<'py>,
    cell: &'py PyOnceLock<Py<PyAny>>,
) -> PyResult<&'py Bound<'py, PyAny>> {
    cell.get(py).map(|f| f.bind(py)).ok_or_else(|| {
        PickleGuardError::new_err("pickleguard's gate is not bound; import pickleguard first")
    })
}

/// The caller's keyword arguments but `buffers` (None when there are none), and
/// `buffers`.
type SplitOptions<'py> = (Option<Bound<'py, PyDict>>, Option<Bound<'py, PyAny>>);

/// Split `buffers` out of the caller's keyword arguments; the rest pass through to
/// the original untouched, so it validates them exactly as plain pickle does.
/// No options at all (the common call) is `None`: no dict is built per load.
fn split_kwargs<'py>(
    py: Python<'py>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<SplitOptions<'py>> {
    let options = match kwargs {
        Some(k) if !k.is_empty() => k.copy()?,
        _ => return Ok((None, None)),
    };
    let buffers = options
        .get_item(pyo3::intern!(py, "buffers"))?
        .filter(|b| !b.is_none());
    if buffers.is_some() {
        options.del_item("buffers")?;
    }
    Ok((Some(options).filter(|o| !o.is_empty()), buffers))
}

fn run_original<'py>(
    py: Python<'py>,
    admitted: Result<AdmittedInput<'py>>,
    mut options: Option<Bound<'py, PyDict>>,
    rewind: Option<Rewind<'py>>,
) -> PyResult<Bound<'py, PyAny>> {
    let (feed, feed_buffers, uses_globals) = match admitted {
        Ok(found) => found,
        Err(e) => {
            let options = options.unwrap_or_else(|| PyDict::new(py));
            return Err(explain(py, e, "c", &options));
        }
    };
    if let Some(b) = feed_buffers {
        options
            .get_or_insert_with(|| PyDict::new(py))
            .set_item("buffers", b)?;
    }
    let result = if uses_globals {
        // Through a subclass whose find_class admits each import in its own frame,
        // so no other unpickler started meanwhile counts as admitted. Bytes read
        // from a stream are fed without a copy (BytesIO copies all but `bytes`).
        if feed.is_instance_of::<AdmittedBytes>() {
            let holder = Bound::new(py, Feed::new())?;
            holder.get().set(feed);
            let unpickler =
                gate_part(py, &ADMITTED_UNPICKLER)?.call((&holder,), options.as_ref())?;
            let result = {
                let _load = GateLoad::enter(&unpickler);
                unpickler.call_method0("load")
            };
            if let Some(rewind) = &rewind {
                rewind.after(holder.get().consumed())?;
            }
            result
        } else {
            let file = py.import("io")?.call_method1("BytesIO", (feed,))?;
            let unpickler = gate_part(py, &ADMITTED_UNPICKLER)?.call((file,), options.as_ref())?;
            let _load = GateLoad::enter(&unpickler);
            unpickler.call_method0("load")
        }
    } else {
        // No global to import, nothing to call: the plain C loads.
        let original = gate_part(py, &ORIGINAL_LOADS)?;
        match &options {
            None => original.call1((feed,)),
            Some(options) => original.call((feed,), Some(options)),
        }
    };
    clear_extension_cache(py);
    result
}

/// What admission hands back: the verified input for the real unpickler, the
/// out-of-band buffers to pass with it, and whether the pickle names any global.
type AdmittedInput<'py> = (Bound<'py, PyAny>, Option<Bound<'py, PyAny>>, bool);

/// Turn an admission failure into the exception to raise: for input that could not
/// be delimited, the one plain pickle raises (found by the gate's dry run).
fn explain(py: Python<'_>, error: GuardError, flavor: &str, options: &Bound<'_, PyDict>) -> PyErr {
    let GuardError::Undelimited { data, error } = error else {
        return error.into();
    };
    let undelimited = _UndelimitedPickle::new_err((data, error.into_value(py)));
    let explained = gate_part(py, &EXPLAIN_UNDELIMITED)
        .and_then(|f| f.call1((undelimited.into_value(py), flavor, options)));
    match explained {
        Err(e) => e,
        Ok(_) => PickleGuardError::new_err("undelimited pickle was not explained"),
    }
}

// ---------------------------------------------------------------------------
// Loads through the Python-level unpickler classes. Each call admits one pickle
// and runs the original `load` on it, in one step, so no Python-visible function
// runs an original unpickler on bytes that were not admitted.

/// A private file holding only admitted bytes: the input of the real unpickler.
/// Its contents can be set from Rust only. It holds the admitted `bytes` object
/// itself, not a copy: a 1 GB pickle is not held twice while it loads.
#[pyclass(frozen, module = "pickleguard._core")]
struct Feed {
    state: Mutex<(Option<FeedData>, usize)>,
}

/// What a feed holds: admitted bytes that no one can change.
enum FeedData {
    Bytes(Py<PyBytes>),
    Admitted(Py<AdmittedBytes>),
}

impl FeedData {
    fn as_bytes<'a>(&'a self, py: Python<'a>) -> &'a [u8] {
        match self {
            FeedData::Bytes(b) => b.bind(py).as_bytes(),
            FeedData::Admitted(a) => &a.get().data,
        }
    }
}

impl Feed {
    /// The unread part of the contents, and the position, under the lock.
    fn with_rest<R>(&self, py: Python<'_>, take: impl FnOnce(&[u8]) -> (usize, R)) -> R {
        let mut state = self.state.lock();
        let (data, pos) = &mut *state;
        let all = data.as_ref().map_or(&[][..], |d| d.as_bytes(py));
        let (consumed, result) = take(&all[*pos..]);
        *pos += consumed;
        result
    }
}

#[pymethods]
impl Feed {
    #[new]
    fn new() -> Self {
        Feed {
            state: Mutex::new((None, 0)),
        }
    }

    #[pyo3(signature = (n=-1))]
    fn read<'py>(&self, py: Python<'py>, n: Option<isize>) -> Bound<'py, PyBytes> {
        self.with_rest(py, |rest| {
            let take = match n {
                Some(n) if n >= 0 => (n as usize).min(rest.len()),
                _ => rest.len(),
            };
            (take, PyBytes::new(py, &rest[..take]))
        })
    }

    #[pyo3(signature = (size=-1))]
    fn readline<'py>(&self, py: Python<'py>, size: Option<isize>) -> Bound<'py, PyBytes> {
        self.with_rest(py, |rest| {
            let mut take = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |i| i + 1);
            if let Some(size) = size.filter(|&s| s >= 0) {
                take = take.min(size as usize);
            }
            (take, PyBytes::new(py, &rest[..take]))
        })
    }

    /// Copy straight into the caller's buffer: the C unpickler reads large
    /// `bytes` payloads this way, into the object it returns.
    fn readinto(&self, py: Python<'_>, buffer: &Bound<'_, PyAny>) -> PyResult<usize> {
        let target = pyo3::buffer::PyBuffer::<u8>::get(buffer)?;
        if target.readonly() || !target.is_c_contiguous() {
            return Err(PyTypeError::new_err(
                "readinto() needs a writable contiguous buffer",
            ));
        }
        let capacity = target.len_bytes();
        Ok(self.with_rest(py, |rest| {
            let take = capacity.min(rest.len());
            // SAFETY: `target` is a writable, C-contiguous buffer of `u8` items
            // holding `capacity >= take` bytes, kept alive (and its exporter
            // locked) by the PyBuffer; `rest` is memory of an immutable bytes
            // object, so the two cannot overlap. The GIL is held throughout, so
            // no Python code touches the buffer meanwhile.
            unsafe {
                std::ptr::copy_nonoverlapping(rest.as_ptr(), target.buf_ptr().cast::<u8>(), take);
            }
            (take, take)
        }))
    }
}

impl Feed {
    /// Hold `data`, a `bytes` or an `AdmittedBytes` object (anything else is
    /// held as empty: the caller only ever passes those two).
    fn set(&self, data: Bound<'_, PyAny>) {
        let held = match data.cast_into::<AdmittedBytes>() {
            Ok(admitted) => Some(FeedData::Admitted(admitted.unbind())),
            Err(e) => e
                .into_inner()
                .cast_into::<PyBytes>()
                .ok()
                .map(|b| FeedData::Bytes(b.unbind())),
        };
        *self.state.lock() = (held, 0);
    }

    fn clear(&self) {
        *self.state.lock() = (None, 0);
    }

    /// How much of the contents has been read.
    fn consumed(&self) -> usize {
        self.state.lock().1
    }
}

/// What the guarded `pickle.Unpickler` keeps between loads (its one attribute,
/// `_pickleguard`): where it reads from, its options, and the private feed its
/// C part reads.
#[pyclass(frozen, module = "pickleguard._core")]
struct UnpicklerSource {
    read: Py<PyAny>,
    readline: Py<PyAny>,
    file: Py<PyAny>,
    #[pyo3(get)]
    feed: Py<Feed>,
    /// The caller's out-of-band buffers (an iterator), and the stand-in iterator
    /// the C part reads the verified ones from.
    buffers: Option<Py<PyAny>>,
    buffer_feed: Option<Py<PyAny>>,
    fix_imports: Py<PyAny>,
    encoding: Py<PyAny>,
    errors: Py<PyAny>,
}

#[pymethods]
impl UnpicklerSource {
    #[new]
    fn new(
        file: &Bound<'_, PyAny>,
        fix_imports: &Bound<'_, PyAny>,
        encoding: &Bound<'_, PyAny>,
        errors: &Bound<'_, PyAny>,
        buffers: Option<&Bound<'_, PyAny>>,
        buffer_feed: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let py = file.py();
        let (read, readline) = file_methods(file)?;
        let buffers = match buffers {
            Some(b) if !b.is_none() => Some(b.try_iter()?.into_any().unbind()),
            _ => None,
        };
        Ok(UnpicklerSource {
            read: read.unbind(),
            readline: readline.unbind(),
            file: file.clone().unbind(),
            feed: Py::new(py, Feed::new())?,
            buffers,
            buffer_feed: buffer_feed
                .filter(|b| !b.is_none())
                .map(|b| b.clone().unbind()),
            fix_imports: fix_imports.clone().unbind(),
            encoding: encoding.clone().unbind(),
            errors: errors.clone().unbind(),
        })
    }
}

fn init_not_called(unpickler: &Bound<'_, PyAny>) -> PyErr {
    let name = unpickler
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Unpickler".into());
    UnpicklingError::new_err(format!(
        "Unpickler.__init__() was not called by {name}.__init__()"
    ))
}

/// `load()` of the guarded `pickle.Unpickler`: admit one pickle from the source,
/// put it in the private feed, and run the C unpickler's `load` on it.
#[pyfunction]
fn unpickler_load<'py>(
    py: Python<'py>,
    unpickler: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let Ok(source) = unpickler.getattr(pyo3::intern!(py, "_pickleguard")) else {
        return Err(init_not_called(unpickler));
    };
    let source = source.cast::<UnpicklerSource>().map_err(PyErr::from)?.get();
    let (read, readline, file) = (
        source.read.bind(py),
        source.readline.bind(py),
        source.file.bind(py),
    );
    let buffers = source.buffers.as_ref().map(|b| b.bind(py).clone());
    let feed = source.feed.bind(py);
    let name = source_name(file);
    // No whole look here: this unpickler lives on, and the C unpickler keeps in
    // its own buffer any part of a frame that it read past STOP, which its next
    // load would run unjudged. Delimiting refuses such a frame.
    match admit_stream_inner(py, read, readline, Some(file), buffers, None, name, false) {
        Ok(admitted) => {
            feed.get().set(admitted.data.into_any());
            if let (Some(b), Some(buffer_feed)) = (admitted.buffers, &source.buffer_feed) {
                buffer_feed.bind(py).setattr("current", b)?;
            }
            // Its globals are admitted one by one, in the class's find_class.
            let result = {
                let _load = GateLoad::enter(unpickler);
                gate_part(py, &ORIGINAL_C_LOAD)?.call1((unpickler,))
            };
            // The load consumed exactly the admitted bytes; do not keep them alive.
            feed.get().clear();
            clear_extension_cache(py);
            result
        }
        Err(e) => {
            let options = PyDict::new(py);
            options.set_item("fix_imports", &source.fix_imports)?;
            options.set_item("encoding", &source.encoding)?;
            options.set_item("errors", &source.errors)?;
            Err(explain(py, e, "c", &options))
        }
    }
}

/// Whether this pure-Python load reads (through `read`, perhaps via a decompressor)
/// the verified stream of an admitted artifact whose grants still lift every
/// layer and deny scope in force: nothing was added inside the block that the
/// artifact's admission did not see.
fn reads_admitted_stream(py: Python<'_>, read: &Bound<'_, PyAny>) -> PyResult<bool> {
    let scopes = active_scopes(py)?;
    if scopes.artifacts.is_empty() {
        return Ok(false);
    }
    let Ok(file) = read.getattr(pyo3::intern!(read.py(), "__self__")) else {
        return Ok(false);
    };
    let layers = PROCESS_LAYERS.read().clone();
    Ok(scopes.artifacts.iter().any(|artifact| {
        artifact.feeds(py, &file)
            && layers.iter().all(|l| artifact.lifted.contains(&l.id))
            && scopes.scopes.iter().all(|s| artifact.lifted.contains(s))
    }))
}

/// `pickle._Unpickler.load`, patched on the class: admit one pickle from the
/// instance's file, swap in a private feed holding it, run the original `load`.
#[pyfunction]
fn py_unpickler_load<'py>(
    py: Python<'py>,
    unpickler: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let original = gate_part(py, &ORIGINAL_PY_LOAD)?;
    let (Ok(read), Ok(readline)) = (
        unpickler.getattr(pyo3::intern!(unpickler.py(), "_file_read")),
        unpickler.getattr(pyo3::intern!(unpickler.py(), "_file_readline")),
    ) else {
        // Not initialised: the original raises its own error, reading nothing.
        return original.call1((unpickler,));
    };
    if reads_admitted_stream(py, &read)? {
        // A pickle inside an admitted artifact, which its entry covers: joblib
        // interleaves raw array bytes with the opcodes, so it cannot be delimited.
        let result = {
            let _load = GateLoad::enter(unpickler);
            original.call1((unpickler,))
        };
        clear_extension_cache(py);
        return result;
    }
    let buffers = Some(unpickler.getattr(pyo3::intern!(unpickler.py(), "_buffers"))?)
        .filter(|b| !b.is_none());
    let file = read.getattr(pyo3::intern!(read.py(), "__self__")).ok();
    let name = file.as_ref().and_then(source_name);
    let AdmittedStream {
        data,
        buffers: feed_buffers,
        ..
    } = match admit_stream_inner(
        py,
        &read,
        &readline,
        file.as_ref(),
        buffers,
        None,
        name,
        false,
    ) {
        Ok(found) => found,
        Err(e) => {
            let options = PyDict::new(py);
            for key in ["fix_imports", "encoding", "errors"] {
                options.set_item(key, unpickler.getattr(key)?)?;
            }
            return Err(explain(py, e, "py", &options));
        }
    };
    let feed = Bound::new(py, Feed::new())?;
    feed.get().set(data.into_any());
    unpickler.setattr(
        "_file_read",
        feed.getattr(pyo3::intern!(feed.py(), "read"))?,
    )?;
    unpickler.setattr(
        "_file_readline",
        feed.getattr(pyo3::intern!(feed.py(), "readline"))?,
    )?;
    if let Some(b) = feed_buffers {
        unpickler.setattr("_buffers", b)?;
    }
    let result = {
        // Its globals are admitted one by one in the patched find_class, which
        // checks that the load running is this one.
        let _load = GateLoad::enter(unpickler);
        original.call1((unpickler,))
    };
    clear_extension_cache(py);
    unpickler.setattr("_file_read", read)?;
    unpickler.setattr("_file_readline", readline)?;
    result
}

/// `find_class` of the guarded `pickle.Unpickler` (and of the unpickler the guarded
/// `loads`/`load` run). It admits the import only when `unpickler` is the one whose
/// load the gate started on judged bytes, innermost on this thread. Any other call
/// (an unguarded unpickler calling `pickle.Unpickler.find_class(self, ...)` by
/// name, a direct call outside a load) runs unadmitted: the C `find_class` raises
/// its audit event and the backstop refuses it.
#[pyfunction]
fn unpickler_find_class<'py>(
    py: Python<'py>,
    unpickler: &Bound<'py, PyAny>,
    module: &Bound<'py, PyAny>,
    name: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let original = gate_part(py, &ORIGINAL_C_FIND_CLASS)?;
    if !GateLoad::is_innermost(unpickler) {
        return original.call1((unpickler, module, name));
    }
    // The C find_class runs in this frame and raises its event here.
    let _admitted = Admitted::at_current_frame(py);
    original.call1((unpickler, module, name))
}

/// `pickle._Unpickler.find_class`, patched on the class. Admitted, as above, only
/// inside the load the gate started for this very unpickler: a subclass whose own
/// `load()` loop runs the dispatch table, or any other caller, stays unadmitted,
/// so the backstop refuses the import.
#[pyfunction]
fn py_unpickler_find_class<'py>(
    py: Python<'py>,
    unpickler: &Bound<'py, PyAny>,
    module: &Bound<'py, PyAny>,
    name: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let original = gate_part(py, &ORIGINAL_PY_FIND_CLASS)?;
    if !GateLoad::is_innermost(unpickler) {
        return original.call1((unpickler, module, name));
    }
    // The original find_class is a Python function: its own frame, called from
    // this one, raises the event.
    let code = original.getattr(pyo3::intern!(original.py(), "__code__"))?;
    let _admitted = Admitted::for_callee(py, &code);
    original.call1((unpickler, module, name))
}

fn current_frame(py: Python<'_>) -> Option<Bound<'_, PyAny>> {
    // SAFETY: the GIL is held; PyEval_GetFrame returns a borrowed reference to the
    // running frame or NULL, which from_borrowed_ptr_or_opt turns into an owned one.
    unsafe {
        Bound::from_borrowed_ptr_or_opt(
            py,
            pyo3::ffi::PyEval_GetFrame().cast::<pyo3::ffi::PyObject>(),
        )
    }
}

fn current_frame_ptr(py: Python<'_>) -> usize {
    current_frame(py).map_or(0, |f| f.as_ptr() as usize)
}

// ---------------------------------------------------------------------------
// The backstop: a C-level audit hook that refuses `pickle.find_class` (the event
// every unpickler raises before importing a global) unless this thread is running
// an original unpickler on admitted bytes. An unpickler reached by a path the gate
// does not cover (a function bound before activation, a second `_pickle`, a
// subclass of the original C class) then cannot import a single global.

/// Where an admitted unpickler raises its `pickle.find_class` events: from
/// `frame` itself, or (`code` set) from a call of that code object made by `frame`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Admission {
    frame: usize,
    code: usize,
}

thread_local! {
    /// Admissions in force on this thread, innermost last. Only the innermost one
    /// counts, and only for events raised where it says: code that an admitted
    /// pickle calls (a REDUCE target, a persistent_load, an import) runs in other
    /// frames, so an unpickler it starts is not admitted by the outer load.
    static ADMISSIONS: std::cell::RefCell<Vec<Admission>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The unpicklers whose load the gate started on judged bytes, innermost last.
    static GATE_LOADS: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// While alive, one admission is in force on this thread.
struct Admitted;

impl Admitted {
    /// For an original unpickler called from the current frame with no Python frame
    /// of its own (the C `loads`, the C `find_class`).
    fn at_current_frame(py: Python<'_>) -> Self {
        let frame = current_frame_ptr(py);
        ADMISSIONS.with(|a| a.borrow_mut().push(Admission { frame, code: 0 }));
        Admitted
    }

    /// For a Python function `code` called from the current frame.
    fn for_callee(py: Python<'_>, code: &Bound<'_, PyAny>) -> Self {
        let frame = current_frame_ptr(py);
        let code = code.as_ptr() as usize;
        ADMISSIONS.with(|a| a.borrow_mut().push(Admission { frame, code }));
        Admitted
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        ADMISSIONS.with(|a| a.borrow_mut().pop());
        // Both unpicklers take EXT codes from copyreg's cache without raising
        // pickle.find_class; an entry an admitted load left there would let an
        // unadmitted unpickler reach that global past the backstop.
        // SAFETY: Admitted lives only inside functions that hold the GIL.
        let py = unsafe { Python::assume_attached() };
        clear_extension_cache(py);
    }
}

/// While alive, the gate is running an original `load` of this unpickler on bytes
/// it judged. Only then does the unpickler's `find_class` admit imports. It holds
/// the unpickler, so its address cannot be reused by another object meanwhile.
struct GateLoad {
    _unpickler: Py<PyAny>,
}

impl GateLoad {
    fn enter(unpickler: &Bound<'_, PyAny>) -> Self {
        let unpickler = unpickler.clone().unbind();
        GATE_LOADS.with(|l| l.borrow_mut().push(unpickler.as_ptr() as usize));
        GateLoad {
            _unpickler: unpickler,
        }
    }

    /// Whether the innermost load the gate is running on this thread is
    /// `unpickler`'s.
    fn is_innermost(unpickler: &Bound<'_, PyAny>) -> bool {
        GATE_LOADS.with(|l| l.borrow().last().copied()) == Some(unpickler.as_ptr() as usize)
    }
}

impl Drop for GateLoad {
    fn drop(&mut self) {
        GATE_LOADS.with(|l| l.borrow_mut().pop());
    }
}

/// Whether the `pickle.find_class` event being raised comes from where the
/// innermost admission says.
fn admitted_here(py: Python<'_>) -> bool {
    let Some(admission) = ADMISSIONS.with(|a| a.borrow().last().copied()) else {
        return false;
    };
    let frame = current_frame(py);
    if admission.code == 0 {
        return frame.map_or(0, |f| f.as_ptr() as usize) == admission.frame;
    }
    let Some(frame) = frame else { return false };
    let code = frame.getattr(pyo3::intern!(frame.py(), "f_code")).ok();
    let back = frame.getattr(pyo3::intern!(frame.py(), "f_back")).ok();
    code.is_some_and(|c| c.as_ptr() as usize == admission.code)
        && back.is_some_and(|b| b.as_ptr() as usize == admission.frame)
}

static EXTENSION_CACHE: PyOnceLock<Py<PyDict>> = PyOnceLock::new();

fn clear_extension_cache(py: Python<'_>) {
    let cache = EXTENSION_CACHE.get_or_try_init(py, || -> PyResult<Py<PyDict>> {
        Ok(py
            .import("copyreg")?
            .getattr("_extension_cache")?
            .cast_into::<PyDict>()
            .map_err(PyErr::from)?
            .unbind())
    });
    if let Ok(cache) = cache {
        let cache = cache.bind(py);
        if !cache.is_empty() {
            cache.clear();
        }
    }
}

type AuditHookFunction = unsafe extern "C" fn(
    *const std::ffi::c_char,
    *mut pyo3::ffi::PyObject,
    *mut std::ffi::c_void,
) -> std::ffi::c_int;

extern "C" {
    // Part of CPython's C API since 3.8; not wrapped by pyo3-ffi.
    fn PySys_AddAuditHook(
        hook: AuditHookFunction,
        user_data: *mut std::ffi::c_void,
    ) -> std::ffi::c_int;
}

static BACKSTOP_REGISTERED: AtomicBool = AtomicBool::new(false);

/// Why the backstop refuses `module.name`, or None to let it through.
fn backstop_refusal(py: Python<'_>, module: &str, name: &str) -> Option<(&'static str, String)> {
    let own = module == "pickleguard" || module.starts_with("pickleguard.");
    if own && module != "pickleguard.errors" {
        return Some((
            "backstop-self",
            format!("a pickle may not import pickleguard's own {module}.{name}"),
        ));
    }
    // A dotted name walks attributes (protocol 4). Picklers write dotted names for
    // nested classes and methods, never through dunders such as __self__ or
    // __base__, which reach pickleguard's internals or the original unpicklers.
    let dotted = name.split('.').collect::<Vec<_>>();
    if dotted.len() > 1
        && dotted[..dotted.len() - 1]
            .iter()
            .any(|p| p.starts_with("__") && p.ends_with("__"))
    {
        return Some((
            "backstop-self",
            format!("a pickle may not reach {module}.{name} through a special attribute"),
        ));
    }
    if admitted_here(py) {
        return None;
    }
    Some((
        "backstop",
        format!(
            "an unpickler that pickleguard did not admit tried to import {module}.{name}; \
             something loaded a pickle through a path the gate does not cover (a function \
             bound before activation, a second copy of _pickle, a subclass of the original \
             C Unpickler, a load() loop of its own) or called find_class outside a load \
             the gate judged"
        ),
    ))
}

fn backstop_check(py: Python<'_>, args: &Bound<'_, PyAny>) -> PyResult<()> {
    let (module, name): (String, String) = args
        .extract()
        .unwrap_or_else(|_| ("<unknown>".into(), "<unknown>".into()));
    match backstop_refusal(py, &module, &name) {
        None => Ok(()),
        Some((code, why)) => {
            let denial = Denial {
                message: format!(
                    "pickleguard refused a global import: {why}.\nhint: load pickles through pickle.load/loads/Unpickler after activation, or activate pickleguard at interpreter start (PICKLEGUARD_MANIFEST) so no loader is bound before it"
                ),
                kind: Kind::Pickle,
                sha256_hex: String::new(),
                identity: String::new(),
                size: 0,
                caller: caller(py).map(|c| c.name).unwrap_or_default(),
                code,
                entry: String::new(),
            };
            if module != "pickleguard.selftest" {
                if let Ok(log) = logger(py) {
                    let _ = log.call_method1("error", ("%s", denial.message.as_str()));
                }
            }
            Err(denial.into_pyerr(py))
        }
    }
}

unsafe extern "C" fn audit_hook(
    event: *const std::ffi::c_char,
    args: *mut pyo3::ffi::PyObject,
    _user_data: *mut std::ffi::c_void,
) -> std::ffi::c_int {
    // SAFETY: CPython passes a NUL-terminated event name valid for this call.
    let event = unsafe { std::ffi::CStr::from_ptr(event) };
    if event.to_bytes() != b"pickle.find_class" {
        return 0;
    }
    // SAFETY: audit hooks are called with the GIL held, and `args` is a tuple
    // borrowed for the duration of the call.
    let outcome = std::panic::catch_unwind(|| unsafe {
        let py = Python::assume_attached();
        let args = Bound::from_borrowed_ptr(py, args);
        backstop_check(py, &args).map_err(|e| e.restore(py))
    });
    match outcome {
        Ok(Ok(())) => 0,
        Ok(Err(())) => -1,
        Err(_) => {
            // Never let a global through on a panic.
            // SAFETY: as above, the GIL is held.
            let py = unsafe { Python::assume_attached() };
            PickleGuardError::new_err("pickleguard's backstop failed").restore(py);
            -1
        }
    }
}

/// Register the audit hook (once) and prove it is in place: an unadmitted
/// `pickle.find_class` event must be refused. Raises PickleGuardError otherwise,
/// so no one reports "enforcing" without the backstop.
#[pyfunction]
fn install_backstop(py: Python<'_>) -> PyResult<()> {
    if !BACKSTOP_REGISTERED.swap(true, Ordering::AcqRel) {
        // SAFETY: `audit_hook` is a static C-ABI function that stays valid for the
        // life of the process, and it takes no user data.
        let status = unsafe { PySys_AddAuditHook(audit_hook, std::ptr::null_mut()) };
        if status != 0 {
            BACKSTOP_REGISTERED.store(false, Ordering::Release);
            let cause = PyErr::take(py)
                .map(|e| e.to_string())
                .unwrap_or_else(|| "no reason given".into());
            return Err(PickleGuardError::new_err(format!(
                "could not register pickleguard's audit hook: {cause}"
            )));
        }
    }
    // Entries cached before activation would reach unadmitted unpicklers too.
    clear_extension_cache(py);
    let probe = py.import("sys")?.call_method1(
        "audit",
        ("pickle.find_class", "pickleguard.selftest", "probe"),
    );
    match probe {
        Err(e) if e.is_instance_of::<NoPickleError>(py) => Ok(()),
        Err(e) => Err(PickleGuardError::new_err(format!(
            "pickleguard's audit-hook backstop failed its self-test: {e}"
        ))),
        Ok(_) => Err(PickleGuardError::new_err(
            "pickleguard's audit-hook backstop is not in place: another audit hook refused its \
             registration, so pickleguard will not report enforcing",
        )),
    }
}

/// The `read` and `readline` of `file`, looked up as the C unpickler does (after
/// `peek` and `readinto`, whose lookup errors also propagate).
fn file_methods<'py>(file: &Bound<'py, PyAny>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let py = file.py();
    // io's own types cannot fail these lookups in any other way than a missing
    // attribute, and making that AttributeError costs more than a small load.
    let own_type = io_types(py)?.iter().any(|t| file.get_type().is(*t));
    if !own_type {
        file.getattr_opt(pyo3::intern!(py, "peek"))?;
        file.getattr_opt(pyo3::intern!(py, "readinto"))?;
    }
    match (
        file.getattr_opt(pyo3::intern!(py, "read"))?,
        file.getattr_opt(pyo3::intern!(py, "readline"))?,
    ) {
        (Some(read), Some(readline)) => Ok((read, readline)),
        _ => Err(PyTypeError::new_err(
            "file must have 'read' and 'readline' attributes",
        )),
    }
}

/// `pickle.loads`, admitted by pickleguard first.
#[pyfunction]
#[pyo3(signature = (data, /, **kwargs))]
fn loads<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let (options, buffers) = split_kwargs(py, kwargs)?;
    run_original(py, admit_bytes(py, data, buffers, None), options, None)
}

/// `pickle.load`, admitted by pickleguard first.
#[pyfunction]
#[pyo3(signature = (file, **kwargs))]
fn load<'py>(
    py: Python<'py>,
    file: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let (read, readline) = file_methods(file)?;
    let (options, buffers) = split_kwargs(py, kwargs)?;
    let name = source_name(file);
    match admit_stream_inner(py, &read, &readline, Some(file), buffers, None, name, true) {
        Ok(admitted) => run_original(
            py,
            Ok((
                admitted.data.into_any(),
                admitted.buffers,
                admitted.uses_globals,
            )),
            options,
            admitted.rewind,
        ),
        Err(e) => run_original(py, Err(e), options, None),
    }
}

/// `pickleguard.loads`: `loads` that also requires the data's SHA-256 to be `sha256`.
#[pyfunction]
#[pyo3(signature = (data, sha256, /, **kwargs))]
fn pinned_loads<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    sha256: &str,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let (options, buffers) = split_kwargs(py, kwargs)?;
    run_original(
        py,
        admit_bytes(py, data, buffers, Some(sha256)),
        options,
        None,
    )
}

/// `pickleguard.load`: `load` that also requires the pickle's SHA-256 to be `sha256`.
#[pyfunction]
#[pyo3(signature = (file, sha256, /, **kwargs))]
fn pinned_load<'py>(
    py: Python<'py>,
    file: &Bound<'py, PyAny>,
    sha256: &str,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let (read, readline) = file_methods(file)?;
    let (options, buffers) = split_kwargs(py, kwargs)?;
    let name = source_name(file);
    let admitted = admit_stream_inner(
        py,
        &read,
        &readline,
        Some(file),
        buffers,
        Some(sha256),
        name,
        false,
    )
    .map(|a| (a.data.into_any(), a.buffers, a.uses_globals));
    run_original(py, admitted, options, None)
}

/// Make `cls` immutable on CPython 3.10+ (as the C `pickle.Unpickler` is), so no one
/// can set attributes on the guarded Unpickler class, such as the original `load`.
#[pyfunction]
fn seal_type(cls: &Bound<'_, pyo3::types::PyType>) -> bool {
    const PY_TPFLAGS_IMMUTABLETYPE: std::ffi::c_ulong = 1 << 8;
    if cls.py().version_info() < (3, 10) {
        return false;
    }
    let ty = cls.as_type_ptr();
    // SAFETY: the GIL is held (`cls` is bound to it), `ty` points to the live type
    // object `cls` owns, and in the GIL builds this module targets `tp_flags` is a
    // plain integer. PyType_Modified drops any cached state derived from the flags.
    unsafe {
        (*ty).tp_flags |= PY_TPFLAGS_IMMUTABLETYPE;
        pyo3::ffi::PyType_Modified(ty);
    }
    true
}

/// Delimit the pickle at the start of `data` without running it: its length and the
/// number of out-of-band buffers it consumes.
#[pyfunction]
#[pyo3(signature = (data, offset=0))]
fn delimit(data: &Bound<'_, PyAny>, offset: usize) -> PyResult<(usize, usize)> {
    let bytes = snapshot_bytes(data)?;
    let tail = bytes.as_bytes().get(offset..).unwrap_or_default();
    reader::delimit(tail)
        .map(|e| (e.len, e.out_of_band_buffers))
        .map_err(|e| GuardError::Read(e.map_source(|never| match never {})).into())
}

/// The identity pickleguard gives the pickle at the start of `data` (with the
/// out-of-band `buffers` it would consume), as `algorithm:<hex>`.
#[pyfunction]
#[pyo3(signature = (data, buffers=None, algorithm="sha256"))]
fn identify(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    buffers: Option<Bound<'_, PyAny>>,
    algorithm: &str,
) -> PyResult<String> {
    let algorithm = parse_algorithm(algorithm)?;
    let bytes = snapshot_bytes(data)?;
    let extent = reader::delimit(bytes.as_bytes())
        .map_err(|e| PyErr::from(GuardError::Read(e.map_source(|never| match never {}))))?;
    let (taken, _) = buffers_for_identity(py, extent.out_of_band_buffers, buffers)?;
    let digest = hash(
        py,
        algorithm,
        &bytes.as_bytes()[..extent.len],
        &as_slices(&taken),
    );
    Ok(Id { algorithm, digest }.to_string())
}

/// Whether the gate may dry-run `data` to explain why it cannot be delimited.
#[pyfunction]
fn dry_run_safe(data: &Bound<'_, PyAny>) -> PyResult<bool> {
    let bytes = snapshot_bytes(data)?;
    Ok(scan::dry_run_safe(bytes.as_bytes()))
}

/// The digest of `data` as hex (SHA-256 unless `algorithm` says "blake3"), with the
/// GIL released for large inputs.
#[pyfunction]
#[pyo3(name = "sha256", signature = (data, algorithm="sha256"))]
fn sha256_hex(py: Python<'_>, data: &Bound<'_, PyAny>, algorithm: &str) -> PyResult<String> {
    let algorithm = parse_algorithm(algorithm)?;
    let bytes = snapshot_bytes(data)?;
    Ok(to_hex(&hash(py, algorithm, bytes.as_bytes(), &[])))
}

#[pymodule]
#[pyo3(name = "_core")]
fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(activate, m)?)?;
    m.add_function(wrap_pyfunction!(activate_deferred, m)?)?;
    m.add_function(wrap_pyfunction!(settle_manifests, m)?)?;
    m.add_function(wrap_pyfunction!(no_pickles, m)?)?;
    m.add_function(wrap_pyfunction!(admit_artifact, m)?)?;
    m.add_function(wrap_pyfunction!(in_artifact, m)?)?;
    m.add_function(wrap_pyfunction!(enforcing, m)?)?;
    m.add_function(wrap_pyfunction!(journaling, m)?)?;
    m.add_class::<ArtifactScope>()?;
    m.add_function(wrap_pyfunction!(allow_pickles, m)?)?;
    m.add_function(wrap_pyfunction!(loads, m)?)?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(pinned_loads, m)?)?;
    m.add_function(wrap_pyfunction!(pinned_load, m)?)?;
    m.add_function(wrap_pyfunction!(bind_gate, m)?)?;
    m.add_function(wrap_pyfunction!(unpickler_load, m)?)?;
    m.add_function(wrap_pyfunction!(unpickler_find_class, m)?)?;
    m.add_function(wrap_pyfunction!(py_unpickler_find_class, m)?)?;
    m.add_function(wrap_pyfunction!(py_unpickler_load, m)?)?;
    m.add_function(wrap_pyfunction!(install_backstop, m)?)?;
    m.add_class::<Feed>()?;
    m.add_class::<UnpicklerSource>()?;
    m.add_class::<AdmittedBytes>()?;
    m.add_function(wrap_pyfunction!(seal_type, m)?)?;
    m.add_function(wrap_pyfunction!(start_journal, m)?)?;
    m.add_function(wrap_pyfunction!(set_audit_log, m)?)?;
    m.add_function(wrap_pyfunction!(imports, m)?)?;
    m.add_function(wrap_pyfunction!(manifest_summary, m)?)?;
    m.add_function(wrap_pyfunction!(record_layer, m)?)?;
    m.add_function(wrap_pyfunction!(channel_callers, m)?)?;
    m.add_function(wrap_pyfunction!(channel_called_from, m)?)?;
    m.add_function(wrap_pyfunction!(pattern_matches, m)?)?;
    m.add_function(wrap_pyfunction!(admit_stream, m)?)?;
    m.add_function(wrap_pyfunction!(delimit, m)?)?;
    m.add_function(wrap_pyfunction!(identify, m)?)?;
    m.add_function(wrap_pyfunction!(dry_run_safe, m)?)?;
    m.add_function(wrap_pyfunction!(sha256_hex, m)?)?;
    m.add_function(wrap_pyfunction!(process_layers, m)?)?;
    m.add_function(wrap_pyfunction!(check_manifest, m)?)?;
    m.add_class::<Token>()?;
    m.add_class::<Grant>()?;
    Ok(())
}
