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
//!    (`module:method`).
//! 3. Add a test under `tests/integration/` (see `test_dask.py`): record, then run
//!    the same workload, then show that a pickle a task loads itself is refused
//!    in the worker.

/// (channel name, callers as `module:qualname`). Python before 3.11 names frames
/// without their class, so both spellings are listed.
pub const KNOWN_CHANNELS: &[(&str, &[&str])] = &[
    (
        "multiprocessing",
        &[
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
    ),
    // Dask distributed: the client, scheduler, nannies and workers of a cluster.
    // Nannies start workers with multiprocessing (spawn by default), whose own
    // loads are the multiprocessing channel's.
    (
        "dask",
        &[
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
    ),
];

/// The callers of the known channel `name`.
pub fn known_callers(name: &str) -> &'static [&'static str] {
    KNOWN_CHANNELS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(&[], |(_, callers)| callers)
}

/// The known channel whose callers include `caller`, if any.
pub fn known_channel(caller: &str) -> Option<&'static str> {
    KNOWN_CHANNELS
        .iter()
        .find(|(_, callers)| callers.contains(&caller))
        .map(|(name, _)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_multiprocessing_but_not_user_code() {
        assert_eq!(
            known_channel("multiprocessing.connection:_ConnectionBase.recv"),
            Some("multiprocessing")
        );
        assert_eq!(known_channel("app:load_model"), None);
    }

    #[test]
    fn recognises_dask_messages_but_not_tasks_or_user_api() {
        assert_eq!(
            known_channel("distributed.protocol.pickle:loads"),
            Some("dask")
        );
        assert_eq!(
            known_channel("distributed.shuffle._core:ShuffleRun.receive"),
            Some("dask")
        );
        // The worker runs tasks here, and dask's own readers of user files.
        assert_eq!(known_channel("distributed.worker:_run_task_simple"), None);
        assert_eq!(known_channel("dask._task_spec:Task.__call__"), None);
        assert_eq!(known_channel("dask.array.core:from_npy_stack"), None);
    }

    #[test]
    fn every_channel_is_a_valid_manifest_rule_matching_its_callers() {
        let mut seen = std::collections::HashSet::new();
        for (name, callers) in KNOWN_CHANNELS {
            assert!(!callers.is_empty(), "{name} has no callers");
            let list: Vec<String> = callers.iter().map(|c| format!("{c:?}")).collect();
            let text = format!(
                "version = 1\n[[channel]]\nname = {name:?}\ncallers = [{}]\n",
                list.join(", ")
            );
            let manifest = crate::manifest::Manifest::parse(&text, "known")
                .unwrap_or_else(|e| panic!("{name}: {}", e.located_message()));
            for caller in *callers {
                assert!(seen.insert(*caller), "{caller} is listed twice");
                assert!(!caller.contains(['*', '?']), "{caller} is a wildcard");
                assert!(manifest.channel_for(caller).is_some(), "{caller}");
                assert_eq!(known_channel(caller), Some(*name));
            }
        }
    }
}
