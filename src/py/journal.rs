//! The record journal and the audit log: JSON lines, one write(2) per line on a file
//! opened for appending, so concurrent processes interleave whole lines and a crash
//! loses nothing already written.

use super::error::{GuardError, Result};
use super::scopes::NEXT_LAYER_ID;
use crate::gate::Report;
use crate::identity::{Algorithm, Identities};
use crate::journal;
use crate::load::Load;
use crate::policy::CallStack;
use parking_lot::Mutex;
use pyo3::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

fn append_line(file: &mut std::fs::File, mut line: String) -> std::io::Result<()> {
    use std::io::Write as _;
    line.push('\n');
    file.write_all(line.as_bytes())
}

/// Say on stderr, once per file and process, that a log could not be written. A full
/// disk must not turn an allowed load into a crash, nor go unnoticed.
fn report_failure_once(failed: &AtomicBool, what: &str, path: &std::path::Path, error: &str) {
    if !failed.swap(true, Ordering::Relaxed) {
        eprintln!(
            "pickleguard: warning: could not write {what} {}: {error}\n\
             pickleguard: hint: loads are still judged and denials still raise, but from \
             now on they are missing from this file; free space or fix the path",
            path.display()
        );
    }
}

pub(super) fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `pickleguard record`'s journal: a directory where each process appends to its own
/// file, reopened after a fork so parent and child never share one.
pub(super) struct Journal {
    pub(super) dir: std::path::PathBuf,
    /// The identity written for each load: what `record` pins with.
    pub(super) algorithm: Algorithm,
    pub(super) file: Mutex<Option<(u32, std::fs::File)>>,
    failed: AtomicBool,
}

pub(super) static JOURNAL: once_cell::sync::OnceCell<Journal> = once_cell::sync::OnceCell::new();

impl Journal {
    pub(super) fn record(&self, load: &Load<'_>, ids: &mut Identities<'_>, stack: &CallStack) {
        let id = ids.get(self.algorithm).to_string();
        let line = journal::load_line(load, &id, stack, now(), std::process::id());
        let pid = std::process::id();
        let mut slot = self.file.lock();
        if slot.as_ref().is_none_or(|(owner, _)| *owner != pid) {
            let path = self.dir.join(format!(
                "journal-{pid}-{}.jsonl",
                NEXT_LAYER_ID.fetch_add(1, Ordering::Relaxed)
            ));
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
            {
                Ok(file) => *slot = Some((pid, file)),
                Err(error) => {
                    *slot = None;
                    let error = error.to_string();
                    return report_failure_once(&self.failed, "the record journal", &path, &error);
                }
            }
        }
        if let Some((_, file)) = slot.as_mut() {
            if let Err(error) = append_line(file, line) {
                let path = self.dir.clone();
                let error = error.to_string();
                report_failure_once(&self.failed, "the record journal in", &path, &error);
            }
        }
    }
}

/// Journal every allowed load to files in `directory` (used by `pickleguard record`),
/// identified with `algorithm` ("sha256" or "blake3").
#[pyfunction]
#[pyo3(signature = (directory, algorithm="sha256"))]
pub(super) fn start_journal(directory: std::path::PathBuf, algorithm: &str) -> Result<()> {
    let algorithm = parse_algorithm(algorithm)?;
    std::fs::create_dir_all(&directory).map_err(|error| GuardError::Io {
        what: "create the record journal",
        path: directory.clone(),
        error,
    })?;
    let _ = JOURNAL.set(Journal {
        dir: directory,
        algorithm,
        file: Mutex::new(None),
        failed: AtomicBool::new(false),
    });
    Ok(())
}

pub(super) fn parse_algorithm(name: &str) -> Result<Algorithm> {
    Algorithm::parse(name).ok_or_else(|| GuardError::BadAlgorithm(name.to_owned()))
}

/// The audit log (`PICKLEGUARD_LOG`): every warn-mode report and denial.
pub(super) struct AuditLog {
    path: std::path::PathBuf,
    file: Mutex<std::fs::File>,
    failed: AtomicBool,
}

pub(super) static AUDIT_LOG: once_cell::sync::OnceCell<AuditLog> = once_cell::sync::OnceCell::new();

/// Also write each warn-mode report and each denial as a JSON line to `path`.
#[pyfunction]
pub(super) fn set_audit_log(path: std::path::PathBuf) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|error| GuardError::Io {
            what: "open the audit log",
            path: path.clone(),
            error,
        })?;
    let _ = AUDIT_LOG.set(AuditLog {
        path,
        file: Mutex::new(file),
        failed: AtomicBool::new(false),
    });
    Ok(())
}

/// The audit log's path, as given, if one is set.
pub(super) fn audit_log_path() -> Option<String> {
    AUDIT_LOG.get().map(|log| log.path.display().to_string())
}

/// Append a warn-mode report or a denial to the audit log, if one is set.
pub(super) fn audit(report: &Report, event: &str, load: &Load<'_>) {
    if let Some(log) = AUDIT_LOG.get() {
        let line = journal::audit_line(report, event, load, now(), std::process::id());
        if let Err(error) = append_line(&mut log.file.lock(), line) {
            let error = error.to_string();
            report_failure_once(&log.failed, "the audit log", &log.path, &error);
        }
    }
}
