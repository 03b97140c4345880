//! The lines of `pickleguard record`'s journal and of the audit log: one JSON
//! object per load or per report. The binding appends them to their files.

use crate::gate::Report;
use crate::load::Load;
use crate::manifest::Kind;
use crate::policy::CallStack;
use crate::scan;

/// The journal line for an allowed load: what `record` turns into an entry.
/// `id` is its identity in the journal's algorithm.
pub fn load_line(load: &Load<'_>, id: &str, stack: &CallStack, time: f64, pid: u32) -> String {
    let imports: Vec<(String, bool)> = match load.kind {
        Kind::Pickle => scan::imports(load.data)
            .iter()
            .map(|i| (i.render(), i.is_risky()))
            .collect(),
        // A whole file (a zip archive, say): its adapter scanned the pickles inside.
        Kind::Artifact => load.artifact_imports.to_vec(),
    };
    let caller = stack.caller.as_deref().unwrap_or_default();
    let channel = if load.channel_rules_apply() {
        crate::channels::known_channel(caller, stack.called_from.as_deref())
    } else {
        None
    };
    serde_json::json!({
        "v": 1,
        "time": time,
        "pid": pid,
        "kind": load.kind.table(),
        "id": id,
        "size": load.size(),
        "caller": caller,
        "called_from": stack.called_from.as_deref(),
        "stack": stack.frames.iter().map(|f| f.as_ref()).collect::<Vec<&str>>(),
        "source": load.source,
        "loader": load.loader,
        "channel": channel,
        "uses": crate::channels::channels_used_by(imports.iter().map(|(name, _)| name.as_str())),
        "imports": imports.iter().map(|(name, _)| name).collect::<Vec<_>>(),
        "risky": imports.iter().filter(|(_, risky)| *risky).map(|(name, _)| name).collect::<Vec<_>>(),
    })
    .to_string()
}

/// The audit-log line for a warn-mode report (`event` "warn") or a denial ("deny").
pub fn audit_line(report: &Report, event: &str, load: &Load<'_>, time: f64, pid: u32) -> String {
    let denial = &report.denial;
    serde_json::json!({
        "time": time,
        "pid": pid,
        "event": event,
        "code": denial.code,
        "kind": denial.kind.table(),
        "sha256": denial.sha256_hex,
        "identity": denial.identity,
        "size": denial.size,
        "caller": denial.caller,
        "manifest": report.manifest,
        "source": load.source,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Denial;
    use serde_json::Value;

    #[test]
    fn a_load_line_holds_what_record_needs() {
        // GLOBAL os.system, then STOP: the scan lists it, and flags it.
        let data = b"cos\nsystem\n.";
        let stack = CallStack {
            frames: vec!["__main__:<module>".into(), "app:load".into()],
            caller: Some("multiprocessing.queues:Queue.get".into()),
            called_from: Some("app:load".into()),
        };
        let load = Load::pickle(data, &[], Some("q.pkl".into()));
        let line: Value =
            serde_json::from_str(&load_line(&load, "sha256:ab", &stack, 1.5, 7)).unwrap();
        assert_eq!(line["v"], 1);
        assert_eq!(
            (line["pid"].as_u64(), line["time"].as_f64()),
            (Some(7), Some(1.5))
        );
        assert_eq!(
            (line["kind"].as_str(), line["id"].as_str()),
            (Some("pickle"), Some("sha256:ab"))
        );
        assert_eq!(line["size"], data.len());
        assert_eq!(line["caller"], "multiprocessing.queues:Queue.get");
        assert_eq!(line["called_from"], "app:load");
        assert_eq!(
            line["stack"],
            serde_json::json!(["__main__:<module>", "app:load"])
        );
        assert_eq!(line["source"], "q.pkl");
        assert_eq!(line["channel"], "multiprocessing");
        assert_eq!(line["imports"], serde_json::json!(["os.system"]));
        assert_eq!(line["risky"], serde_json::json!(["os.system"]));
    }

    #[test]
    fn an_artifact_line_lists_its_adapters_imports() {
        let imports = [("torch._utils._rebuild_tensor_v2".to_owned(), false)];
        let load = Load::artifact(
            b"PK\x03\x04",
            Some("m.pt".into()),
            Some("torch.load"),
            &imports,
        );
        let line: Value = serde_json::from_str(&load_line(
            &load,
            "sha256:cd",
            &CallStack::default(),
            0.0,
            1,
        ))
        .unwrap();
        assert_eq!(line["kind"], "artifact");
        assert_eq!(line["loader"], "torch.load");
        assert_eq!(line["channel"], Value::Null);
        assert_eq!(
            line["imports"],
            serde_json::json!(["torch._utils._rebuild_tensor_v2"])
        );
        assert_eq!(line["risky"], serde_json::json!([]));
        // The same bytes decoded from memory by a channel's caller: the channel's,
        // which a file read by that caller would not be.
        let stack = CallStack {
            frames: vec![],
            caller: Some("multiprocessing.queues:Queue.get".into()),
            called_from: Some("app:consume".into()),
        };
        let line: Value =
            serde_json::from_str(&load_line(&load, "sha256:cd", &stack, 0.0, 1)).unwrap();
        assert_eq!(line["channel"], Value::Null);
        let in_memory = Load::artifact(b"PK\x03\x04", None, Some("torch.load"), &imports);
        let line: Value = serde_json::from_str(&load_line(
            &in_memory.from_memory(),
            "sha256:cd",
            &stack,
            0.0,
            1,
        ))
        .unwrap();
        assert_eq!(line["channel"], "multiprocessing");
        assert_eq!(line["uses"], serde_json::json!([]));
    }

    #[test]
    fn an_audit_line_names_the_event_the_code_and_the_manifest() {
        let report = Report {
            denial: Denial {
                message: "refused".into(),
                kind: Kind::Pickle,
                sha256_hex: "ab".into(),
                identity: "sha256:ab".into(),
                size: 3,
                caller: "app:load".into(),
                code: "not-listed",
                entry: String::new(),
            },
            manifest: Some("/etc/pg.toml".into()),
        };
        let load = Load::pickle(b"N.", &[], Some("in.pkl".into()));
        let line: Value =
            serde_json::from_str(&audit_line(&report, "warn", &load, 2.0, 9)).unwrap();
        assert_eq!(line["event"], "warn");
        assert_eq!(line["code"], "not-listed");
        assert_eq!(line["identity"], "sha256:ab");
        assert_eq!(line["manifest"], "/etc/pg.toml");
        assert_eq!(line["source"], "in.pkl");
        assert_eq!(line["caller"], "app:load");
    }
}
