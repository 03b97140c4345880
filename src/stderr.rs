//! What reaches stderr. The audit log and the `pickleguard` logger get every report
//! and denial; stderr is what a person running the program reads, and tools that
//! read a program's stderr must see it unchanged by a fleet-wide warn rollout.
//!
//! - Warn mode: with an audit log, one summary line at exit; without one, one line
//!   per distinct payload and caller; with `PICKLEGUARD_WARN_STDERR=off`, nothing.
//! - An enforced denial reaches the user once: as its traceback, or, when the
//!   program caught it, in one line at exit, so a denial a library swallows
//!   (`except Exception: return None`) is still seen.

use std::collections::HashSet;

use crate::report::Denial;

/// The `PICKLEGUARD_WARN_STDERR` setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WarnStderrSetting {
    /// A line per distinct report, or a summary at exit when an audit log is set.
    #[default]
    Auto,
    /// Nothing on stderr; the audit log and the logger still get every report.
    Off,
}

impl WarnStderrSetting {
    pub const NAMES: &'static str = "\"auto\" or \"off\"";

    pub fn parse(text: &str) -> Option<WarnStderrSetting> {
        match text {
            "auto" => Some(WarnStderrSetting::Auto),
            "off" => Some(WarnStderrSetting::Off),
            _ => None,
        }
    }
}

/// What to do on stderr about one warn-mode report.
#[derive(Debug, PartialEq, Eq)]
pub enum WarnOutput {
    /// Print this line now.
    Line(String),
    /// Print nothing now; the first report held for the exit summary says so, so
    /// the binding arranges for the summary to be printed.
    HeldFirst,
    Nothing,
}

/// The reports of one process, for deciding what reaches stderr.
#[derive(Debug, Default)]
pub struct WarnStderr {
    pub setting: WarnStderrSetting,
    seen: HashSet<(String, String)>,
    held: usize,
}

impl WarnStderr {
    pub fn new(setting: WarnStderrSetting) -> WarnStderr {
        WarnStderr {
            setting,
            ..WarnStderr::default()
        }
    }

    /// What stderr gets for `denial`, a load warn mode allowed; `audit_log` is the
    /// audit log's path if one is set.
    pub fn on_report(&mut self, denial: &Denial, audit_log: Option<&str>) -> WarnOutput {
        if self.setting == WarnStderrSetting::Off {
            return WarnOutput::Nothing;
        }
        let new = self
            .seen
            .insert((denial.identity.clone(), denial.caller.clone()));
        if audit_log.is_some() {
            self.held += 1;
            return if self.held == 1 {
                WarnOutput::HeldFirst
            } else {
                WarnOutput::Nothing
            };
        }
        if !new {
            return WarnOutput::Nothing;
        }
        let first_line = denial.message.lines().next().unwrap_or_default();
        WarnOutput::Line(format!(
            "pickleguard: warn mode, allowed anyway: {first_line} (said once per payload \
             and caller; set PICKLEGUARD_LOG to keep every report)\n"
        ))
    }

    /// The line printed at exit when reports went only to the audit log.
    pub fn summary(&self, audit_log: Option<&str>) -> Option<String> {
        let log = audit_log?;
        if self.held == 0 || self.setting == WarnStderrSetting::Off {
            return None;
        }
        let loads = if self.held == 1 { "load" } else { "loads" };
        Some(format!(
            "pickleguard: warn mode, allowed anyway: {} {loads} that the policy would refuse \
             ({} distinct by payload and caller); each one is in the audit log {log}\n",
            self.held,
            self.seen.len()
        ))
    }
}

/// The denials one process raised, for the exit line about those its program caught.
#[derive(Debug, Default)]
pub struct Denials {
    count: usize,
    /// The first lines of the first two denials: enough to name one that the
    /// traceback did not show.
    first: Vec<String>,
}

impl Denials {
    /// Note a denial; true for the first one, so the binding arranges the exit line.
    pub fn on_denial(&mut self, denial: &Denial) -> bool {
        self.count += 1;
        if self.first.len() < 2 {
            let line = denial.message.lines().next().unwrap_or_default();
            self.first.push(line.to_owned());
        }
        self.count == 1
    }

    /// The exit line about denials the program caught; `uncaught` holds the first
    /// lines of the NoPickleErrors that the exit's traceback showed.
    pub fn caught_summary(&self, uncaught: &[String]) -> Option<String> {
        let shown = uncaught.len().min(self.count);
        let caught = self.count - shown;
        if caught == 0 {
            return None;
        }
        let example = self
            .first
            .iter()
            .find(|line| !uncaught.contains(line))
            .or(self.first.first())?;
        let (loads, it_was) = if caught == 1 {
            ("load", "it was")
        } else {
            ("loads", "they were")
        };
        Some(format!(
            "pickleguard: {caught} refused {loads} raised NoPickleError that the program \
             caught; {it_was} not loaded. The first: {example}\n"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Kind;

    fn report(identity: &str, caller: &str) -> Denial {
        Denial {
            message: format!("pickle {identity} loaded by {caller} is not listed.\nhint: add it"),
            kind: Kind::Pickle,
            sha256_hex: String::new(),
            identity: identity.into(),
            size: 5,
            caller: caller.into(),
            code: "not-listed",
            entry: String::new(),
        }
    }

    #[test]
    fn without_a_log_each_payload_and_caller_is_said_once() {
        let mut out = WarnStderr::default();
        let WarnOutput::Line(line) = out.on_report(&report("sha256:aa", "app:f"), None) else {
            panic!("the first report is printed");
        };
        assert!(line.starts_with("pickleguard: warn mode, allowed anyway: pickle sha256:aa"));
        assert_eq!(line.matches('\n').count(), 1, "one line: {line:?}");
        assert_eq!(
            out.on_report(&report("sha256:aa", "app:f"), None),
            WarnOutput::Nothing
        );
        assert!(matches!(
            out.on_report(&report("sha256:aa", "app:g"), None),
            WarnOutput::Line(_)
        ));
        assert!(matches!(
            out.on_report(&report("sha256:bb", "app:f"), None),
            WarnOutput::Line(_)
        ));
        assert_eq!(out.summary(None), None);
    }

    #[test]
    fn with_a_log_stderr_gets_one_summary_at_exit() {
        let mut out = WarnStderr::default();
        let log = Some("/var/log/pg.jsonl");
        assert_eq!(
            out.on_report(&report("sha256:aa", "app:f"), log),
            WarnOutput::HeldFirst
        );
        for _ in 0..3 {
            assert_eq!(
                out.on_report(&report("sha256:bb", "app:f"), log),
                WarnOutput::Nothing
            );
        }
        let summary = out.summary(log).unwrap();
        assert!(summary.contains(" 4 loads that the policy would refuse (2 distinct"));
        assert!(summary.ends_with("audit log /var/log/pg.jsonl\n"));
    }

    #[test]
    fn a_caught_denial_is_said_at_exit_and_an_uncaught_one_is_not() {
        let mut denials = Denials::default();
        assert_eq!(denials.caught_summary(&[]), None);
        assert!(denials.on_denial(&report("sha256:aa", "lib:read_cache")));
        let summary = denials.caught_summary(&[]).unwrap();
        assert!(summary.starts_with("pickleguard: 1 refused load raised NoPickleError"));
        assert!(summary.contains("The first: pickle sha256:aa loaded by lib:read_cache"));
        let shown = "pickle sha256:aa loaded by lib:read_cache is not listed.".to_owned();
        assert_eq!(denials.caught_summary(std::slice::from_ref(&shown)), None);
        assert!(!denials.on_denial(&report("sha256:bb", "app:main")));
        let summary = denials.caught_summary(&[shown]).unwrap();
        assert!(summary.contains("1 refused load"), "{summary}");
        assert!(summary.contains("sha256:bb"), "{summary}");
    }

    #[test]
    fn off_says_nothing() {
        let mut out = WarnStderr::new(WarnStderrSetting::Off);
        for log in [None, Some("log.jsonl")] {
            assert_eq!(
                out.on_report(&report("sha256:aa", "f"), log),
                WarnOutput::Nothing
            );
            assert_eq!(out.summary(log), None);
        }
        assert_eq!(
            WarnStderrSetting::parse("off"),
            Some(WarnStderrSetting::Off)
        );
        assert_eq!(
            WarnStderrSetting::parse("auto"),
            Some(WarnStderrSetting::Auto)
        );
        assert_eq!(WarnStderrSetting::parse("quiet"), None);
    }
}
