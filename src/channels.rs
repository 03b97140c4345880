//! Transports whose pickles are produced by the same program on every run, with a
//! new hash each time: `pickleguard record` writes a `[[channel]]` rule for the
//! callers it sees load them instead of pinning each message.
//!
//! A caller here is the function that calls the loader itself, the innermost
//! frame outside `pickle`, `_pickle`, `copyreg` and pickleguard, as
//! `module:qualname`. List only functions whose input is the engine's own
//! messages: its transport, its message decoding, its round trips of objects it
//! has just pickled. Never list a function that runs user code before it loads
//! (a task body, a user callback), nor a loader users call on their own files.
//!
//! # Adding an engine (Ray, for instance)
//!
//! 1. Run a small workload of the engine under `pickleguard record -o m.toml
//!    --journal DIR -- CMD`, with every kind of worker the engine has, and read the
//!    `caller` and `stack` of each line of `DIR/journal-*.jsonl`.
//! 2. Keep the callers that decode the engine's own traffic, read in the engine's
//!    source, and add them below under a new channel name, each with a comment
//!    saying what it loads. Name each as Python 3.11+ names frames
//!    (`module:Class.method`) and, for methods, as earlier versions do
//!    (`module:method`). If a caller is also a function a task could call on
//!    its own bytes, set `called_from` to the engine's own modules.
//! 3. Add a test under `tests/integration/` (see `test_dask.py`): record, then run
//!    the same workload, then show that a pickle a task loads itself is refused
//!    in the worker.

/// A transport that `record` knows.
pub struct KnownChannel {
    pub name: &'static str,
    /// The functions that load its messages, as `module:qualname`. Python before
    /// 3.11 names frames without their class, so both spellings are listed.
    pub callers: &'static [&'static str],
    /// Patterns one of which the function that called the caller must match (the
    /// rule's `called_from`); empty for any. For a caller that is also a function
    /// users call themselves.
    pub called_from: &'static [&'static str],
}

pub const KNOWN_CHANNELS: &[KnownChannel] = &[
    KnownChannel {
        name: "multiprocessing",
        callers: &[
            "multiprocessing.connection:_ConnectionBase.recv",
            "multiprocessing.connection:Connection.recv",
            "multiprocessing.connection:recv",
            "multiprocessing.queues:Queue.get",
            "multiprocessing.queues:SimpleQueue.get",
            "multiprocessing.queues:get",
            "multiprocessing.spawn:_main",
            "multiprocessing.forkserver:main",
            "multiprocessing.forkserver:_serve_one",
            "multiprocessing.managers:Server.serve_client",
            "multiprocessing.managers:serve_client",
            "multiprocessing.managers:dispatch",
            "multiprocessing.resource_sharer:DupFd.detach",
        ],
        // A program's own pipes and queues between its own processes are this
        // transport too, received wherever the program receives them.
        called_from: &[],
    },
    // Dask distributed: the client, scheduler, nannies and workers of a cluster.
    // Nannies start workers with multiprocessing (spawn by default), whose own
    // loads are the multiprocessing channel's.
    KnownChannel {
        name: "dask",
        callers: &[
            // Every message of the comm protocol (tasks, results, exceptions,
            // plugins, spilled data read back) is decoded through this one
            // function, by distributed.protocol.core.loads and the "pickle" and
            // "dask" serializer families of distributed.protocol.serialize.
            "distributed.protocol.pickle:loads",
            // P2P shuffle and rechunk: shards other workers sent (ShuffleRun.receive)
            // and shards the worker wrote to its own disk (unpickle_bytestream).
            "distributed.shuffle._core:ShuffleRun.receive",
            "distributed.shuffle._core:receive",
            "distributed.shuffle._pickle:unpickle_bytestream",
            // Warnings a worker forwards to the client (distributed.warn).
            "distributed.client:_handle_warn",
            // Tokenizing (dask.base.tokenize) pickles an object in memory and loads
            // the bytes straight back to check they are deterministic.
            "dask.tokenize:_normalize_pickle",
            // dask's local "processes" scheduler (dask.multiprocessing): the tasks
            // a worker process receives and the results the scheduler gets back.
            "dask.local:execute_task",
            "dask.local:get_async",
        ],
        // distributed.protocol.pickle.loads is a function a task can call itself
        // on any bytes: only dask's own code calling it is the transport.
        called_from: &["distributed.*:*", "dask.*:*"],
    },
];

fn find(name: &str) -> Option<&'static KnownChannel> {
    KNOWN_CHANNELS.iter().find(|c| c.name == name)
}

/// The callers of the known channel `name`.
pub fn known_callers(name: &str) -> &'static [&'static str] {
    find(name).map_or(&[], |c| c.callers)
}

/// The `called_from` patterns of the known channel `name` (empty for any).
pub fn known_called_from(name: &str) -> &'static [&'static str] {
    find(name).map_or(&[], |c| c.called_from)
}

/// The known channel that a load by `caller`, itself called by `called_from`,
/// belongs to, if any.
pub fn known_channel(caller: &str, called_from: Option<&str>) -> Option<&'static str> {
    let outer_matches = |channel: &KnownChannel| {
        channel.called_from.is_empty()
            || called_from.is_some_and(|name| {
                channel.called_from.iter().any(|pattern| {
                    crate::pattern::FramePattern::parse(pattern).is_ok_and(|p| p.matches(name))
                })
            })
    };
    KNOWN_CHANNELS
        .iter()
        .find(|c| c.callers.contains(&caller) && outer_matches(c))
        .map(|c| c.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_multiprocessing_but_not_user_code() {
        assert_eq!(
            known_channel(
                "multiprocessing.connection:_ConnectionBase.recv",
                Some("app:main")
            ),
            Some("multiprocessing")
        );
        assert_eq!(known_channel("app:load_model", None), None);
    }

    #[test]
    fn recognises_dask_messages_but_not_tasks_or_user_api() {
        let serialize = Some("distributed.protocol.serialize:pickle_loads");
        assert_eq!(
            known_channel("distributed.protocol.pickle:loads", serialize),
            Some("dask")
        );
        assert_eq!(
            known_channel(
                "distributed.shuffle._core:ShuffleRun.receive",
                Some("distributed.shuffle._core:ShuffleRun._receive")
            ),
            Some("dask")
        );
        // A task calling dask's loader itself is not dask's traffic.
        assert_eq!(
            known_channel("distributed.protocol.pickle:loads", Some("app:task")),
            None
        );
        assert_eq!(
            known_channel("distributed.protocol.pickle:loads", None),
            None
        );
        // The worker runs tasks here, and dask's own readers of user files.
        assert_eq!(
            known_channel("distributed.worker:_run_task_simple", serialize),
            None
        );
        assert_eq!(
            known_channel("dask._task_spec:Task.__call__", serialize),
            None
        );
        assert_eq!(
            known_channel("dask.array.core:from_npy_stack", serialize),
            None
        );
    }

    #[test]
    fn every_channel_is_a_valid_manifest_rule_matching_its_callers() {
        let mut seen = std::collections::HashSet::new();
        let quoted = |items: &[&str]| {
            let list: Vec<String> = items.iter().map(|c| format!("{c:?}")).collect();
            format!("[{}]", list.join(", "))
        };
        for channel in KNOWN_CHANNELS {
            let name = channel.name;
            assert!(!channel.callers.is_empty(), "{name} has no callers");
            let mut text = format!(
                "version = 1\n[[channel]]\nname = {name:?}\ncallers = {}\n",
                quoted(channel.callers)
            );
            if !channel.called_from.is_empty() {
                text += &format!("called_from = {}\n", quoted(channel.called_from));
            }
            let manifest = crate::manifest::Manifest::parse(&text, "known")
                .unwrap_or_else(|e| panic!("{name}: {}", e.located_message()));
            let own = channel.called_from.first().map(|p| p.replace('*', "x"));
            for caller in channel.callers {
                assert!(seen.insert(*caller), "{caller} is listed twice");
                assert!(!caller.contains(['*', '?']), "{caller} is a wildcard");
                assert!(
                    manifest.channel_for(caller, own.as_deref()).is_some(),
                    "{caller}"
                );
                assert_eq!(known_channel(caller, own.as_deref()), Some(name));
            }
        }
    }
}
