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
//! # Adding an engine (Celery, for instance)
//!
//! 1. Run a small workload of the engine under `pickleguard record -o m.toml
//!    --journal DIR -- CMD`, with every kind of worker the engine has, and read the
//!    `caller` and `stack` of each line of `DIR/journal-*.jsonl`.
//! 2. Keep the callers that decode the engine's own traffic, read in the engine's
//!    source, and add them below under a new channel name, each with a comment
//!    saying what it loads. Name each as Python 3.11+ names frames
//!    (`module:Class.method`) and, for methods, as earlier versions do
//!    (`module:method`). If a caller is also a function a task could call on
//!    its own bytes, set `called_from` to the engine's own modules, or to the
//!    engine's own functions that call it; callers that need a different
//!    `called_from` (or none) go in another entry with the same name.
//! 3. Add a test under `tests/integration/` (see `test_dask.py`): record, then run
//!    the same workload, then show that a pickle a task loads itself is refused
//!    in the worker.

/// A rule that `record` writes for a transport it knows. A transport may need
/// several rules, with the same `name`, when its callers are called from
/// different places: each rule has one `called_from` for all its callers.
pub struct KnownChannel {
    /// The rule's `name` in the manifest; rules of one transport share it.
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
    // multiprocessing, and concurrent.futures' process pools built on it. Its
    // queues are objects multiprocessing made, over pipes between the program's
    // own processes: a user's get() on one is the transport.
    KnownChannel {
        name: "multiprocessing",
        callers: &[
            // Queue (and JoinableQueue, concurrent.futures' call queue) and
            // SimpleQueue (a pool's task queue and change notifier). Before 3.11
            // both are "multiprocessing.queues:get".
            "multiprocessing.queues:Queue.get",
            "multiprocessing.queues:SimpleQueue.get",
            "multiprocessing.queues:get",
        ],
        called_from: &[],
    },
    // Connection.recv, though, is also what a program calls on any connection: a
    // Listener's peer on a TCP port, Connection(fd) on a file, a subclass that
    // reads from elsewhere. Only multiprocessing's own calls of it are the
    // transport, and of spawn._main, which reads a new process's start-up data.
    KnownChannel {
        name: "multiprocessing",
        callers: &[
            "multiprocessing.connection:_ConnectionBase.recv",
            "multiprocessing.connection:recv",
            "multiprocessing.spawn:_main",
        ],
        called_from: &[
            // A pool's results, and the tasks its terminate() drains.
            "multiprocessing.pool:Pool._handle_results",
            "multiprocessing.pool:_handle_results",
            "multiprocessing.pool:Pool._help_stuff_finish",
            "multiprocessing.pool:_help_stuff_finish",
            // concurrent.futures.ProcessPoolExecutor's results.
            "concurrent.futures.process:_ExecutorManagerThread.wait_result_broken_or_wakeup",
            "concurrent.futures.process:wait_result_broken_or_wakeup",
            // Managers: the address a new server sends back (start), the
            // requests its server reads (serve_client, and the first request of
            // a connection: handle_request in 3.9, _handle_request from 3.10),
            // the replies proxies and the manager read (_callmethod, dispatch).
            "multiprocessing.managers:BaseManager.start",
            "multiprocessing.managers:start",
            "multiprocessing.managers:Server._handle_request",
            "multiprocessing.managers:_handle_request",
            "multiprocessing.managers:handle_request",
            "multiprocessing.managers:Server.serve_client",
            "multiprocessing.managers:serve_client",
            "multiprocessing.managers:BaseProxy._callmethod",
            "multiprocessing.managers:_callmethod",
            "multiprocessing.managers:dispatch",
            // The resource sharer's requests, when a connection or socket is
            // pickled to another process.
            "multiprocessing.resource_sharer:_ResourceSharer._serve",
            "multiprocessing.resource_sharer:_serve",
            // spawn._main, in a spawn child and in a forkserver's fork.
            "multiprocessing.spawn:spawn_main",
            "multiprocessing.forkserver:_serve_one",
            // joblib.Parallel's pools over multiprocessing connections: loky's
            // results, read by its executor's manager thread (joblib's vendored
            // copy and standalone loky), and the task queue's get() in each
            // worker of joblib's multiprocessing backend (3.11+ names the
            // closure, earlier versions only `get`).
            "joblib.externals.loky.process_executor:_ExecutorManagerThread.wait_result_broken_or_wakeup",
            "joblib.externals.loky.process_executor:wait_result_broken_or_wakeup",
            "loky.process_executor:_ExecutorManagerThread.wait_result_broken_or_wakeup",
            "loky.process_executor:wait_result_broken_or_wakeup",
            "joblib.pool:CustomizablePicklingQueue._make_methods.<locals>.get",
            "joblib.pool:get",
        ],
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
    // joblib.Parallel's process backends. loky (the default) starts each worker
    // as `python -m ...popen_loky_posix`, whose top-level code loads the start-up
    // data its parent writes to the pipe it made; its tasks arrive through a
    // multiprocessing queue (the rule above) and its results through the pipe the
    // executor's manager thread reads (the multiprocessing rule above lists it).
    KnownChannel {
        name: "joblib",
        callers: &[
            "joblib.externals.loky.backend.popen_loky_posix:<module>",
            "loky.backend.popen_loky_posix:<module>",
        ],
        called_from: &["runpy:_run_code"],
    },
    // The arrays of 1 MB and more that Parallel passes to its workers: the parent
    // dumps each to a file in its temporary folder, and the task's message names
    // it; load_temporary_memmap maps it, in place, as the message is loaded. The
    // file is shared (the verified-copy route would break sharing, results that
    // refer back to it, and its clean-up), so only this rule admits it, and only
    // while a task message of one of the pools above is loaded.
    KnownChannel {
        name: "joblib",
        callers: &["joblib.numpy_pickle:load_temporary_memmap"],
        called_from: &[
            "multiprocessing.queues:Queue.get",
            "multiprocessing.queues:get",
            "multiprocessing.connection:_ConnectionBase.recv",
            "multiprocessing.connection:recv",
        ],
    },
    // torch.distributed's object collectives: every rank pickles its objects into
    // a byte tensor, and the ranks that receive one decode it in
    // _tensor_to_object, with pickle or, with weights_only=True, with
    // torch.load(io.BytesIO(...), weights_only=True): a buffer in memory, which
    // channel rules cover as they do a pickle. Only the collectives' own calls of
    // it are the transport.
    KnownChannel {
        name: "torch.distributed",
        callers: &["torch.distributed.distributed_c10d:_tensor_to_object"],
        called_from: &[
            "torch.distributed.distributed_c10d:all_gather_object",
            "torch.distributed.distributed_c10d:gather_object",
            "torch.distributed.distributed_c10d:broadcast_object_list",
            "torch.distributed.distributed_c10d:scatter_object_list",
            "torch.distributed.distributed_c10d:recv_object_list",
        ],
    },
    // torch.multiprocessing.spawn: a child that raises pickles its traceback (a
    // string) into an error file the parent created, and the parent's
    // ProcessContext.join loads it to raise ProcessRaisedException. Only while
    // spawn() or start_processes() joins: a program that joins itself
    // (join=False) names its own function in a rule.
    KnownChannel {
        name: "torch.multiprocessing",
        callers: &[
            "torch.multiprocessing.spawn:ProcessContext.join",
            "torch.multiprocessing.spawn:join",
        ],
        called_from: &["torch.multiprocessing.spawn:start_processes"],
    },
    // Ray: a driver, and the worker processes its raylet starts. Every object
    // (task arguments, results, the object store's values, with their
    // out-of-band buffers) is decoded by _deserialize_pickle5_data, which only
    // the serialization context's own msgpack decoder calls.
    KnownChannel {
        name: "ray",
        callers: &[
            "ray._private.serialization:SerializationContext._deserialize_pickle5_data",
            "ray._private.serialization:_deserialize_pickle5_data",
        ],
        called_from: &[
            "ray._private.serialization:SerializationContext._deserialize_msgpack_data",
            "ray._private.serialization:_deserialize_msgpack_data",
        ],
    },
    // A task's or an actor's exception, pickled by the worker that raised it
    // (a NoPickleError among them), as the driver or the caller decodes the
    // error Ray sends back. RayError.from_bytes is public: a task calling it
    // on bytes of its own is not told apart from Ray's own calls.
    KnownChannel {
        name: "ray",
        callers: &[
            "ray.exceptions:RayError.from_ray_exception",
            "ray.exceptions:from_ray_exception",
        ],
        called_from: &[
            "ray.exceptions:RayError.from_bytes",
            "ray.exceptions:from_bytes",
            "ray._private.serialization:SerializationContext._deserialize_actor_died_error",
            "ray._private.serialization:_deserialize_actor_died_error",
        ],
    },
    // Remote functions and actor classes: the driver exports each, pickled by
    // cloudpickle (so with a new hash on every run), to the cluster's key-value
    // store, and a worker loads it before running it. The table entry
    // (fetch_registered_method), the function in it, the actor class entry and
    // the class in it, each only as Ray's function manager (and its worker
    // setup hook) fetches them.
    KnownChannel {
        name: "ray",
        callers: &[
            "ray._private.function_manager:FunctionActorManager.fetch_registered_method",
            "ray._private.function_manager:fetch_registered_method",
        ],
        called_from: &[
            "ray._private.function_manager:FunctionActorManager.fetch_and_register_remote_function",
            "ray._private.function_manager:fetch_and_register_remote_function",
            "ray._private.runtime_env.setup_hook:load_and_execute_setup_hook_func",
        ],
    },
    KnownChannel {
        name: "ray",
        callers: &[
            "ray._private.function_manager:FunctionActorManager.fetch_and_register_remote_function",
            "ray._private.function_manager:fetch_and_register_remote_function",
        ],
        called_from: &[
            "ray._private.function_manager:FunctionActorManager._wait_for_function",
            "ray._private.function_manager:_wait_for_function",
        ],
    },
    KnownChannel {
        name: "ray",
        callers: &[
            "ray._private.function_manager:FunctionActorManager._load_actor_class_from_gcs",
            "ray._private.function_manager:_load_actor_class_from_gcs",
        ],
        called_from: &[
            "ray._private.function_manager:FunctionActorManager.load_actor_class",
            "ray._private.function_manager:load_actor_class",
        ],
    },
];

/// Globals whose import by a recorded pickle shows that the program uses a
/// transport, for one whose messages a run may never load: torch's spawn parent
/// loads an error report only when a child fails, but every child it starts loads
/// its process object, which names torch's `_wrap`. `record` writes that
/// transport's rules too.
pub const USED_WHEN_IMPORTED: &[(&str, &str)] =
    &[("torch.multiprocessing.spawn._wrap", "torch.multiprocessing")];

/// The known transports that a pickle importing `imports` (as `module.name`)
/// shows in use.
pub fn channels_used_by<'a>(imports: impl IntoIterator<Item = &'a str>) -> Vec<&'static str> {
    let mut found: Vec<&'static str> = Vec::new();
    for import in imports {
        for (global, name) in USED_WHEN_IMPORTED {
            if import == *global && !found.contains(name) {
                found.push(name);
            }
        }
    }
    found
}

/// The rules `record` writes for the transport `name`, in the order above; none
/// for a name it does not know.
pub fn known_rules(name: &str) -> impl Iterator<Item = &'static KnownChannel> + '_ {
    KNOWN_CHANNELS.iter().filter(move |c| c.name == name)
}

/// Every caller of the transport `name`'s rules.
pub fn known_callers(name: &str) -> Vec<&'static str> {
    known_rules(name)
        .flat_map(|c| c.callers.iter().copied())
        .collect()
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

    /// (caller, called_from) of each load multiprocessing made of its own messages
    /// under `pickleguard record` (pools, queues, managers, executors, the resource
    /// sharer; fork, spawn and forkserver), as Python 3.11 and 3.9 name them.
    const MULTIPROCESSING_LOADS: &[(&str, &str)] = &[
        ("multiprocessing.queues:Queue.get", "__main__:consume"),
        (
            "multiprocessing.queues:Queue.get",
            "concurrent.futures.process:_process_worker",
        ),
        (
            "multiprocessing.queues:SimpleQueue.get",
            "multiprocessing.pool:worker",
        ),
        (
            "multiprocessing.queues:SimpleQueue.get",
            "multiprocessing.pool:Pool._wait_for_updates",
        ),
        ("multiprocessing.queues:get", "multiprocessing.pool:worker"),
        ("multiprocessing.queues:get", "__main__:<listcomp>"),
        (
            "multiprocessing.connection:_ConnectionBase.recv",
            "multiprocessing.pool:Pool._handle_results",
        ),
        (
            "multiprocessing.connection:recv",
            "multiprocessing.pool:_handle_results",
        ),
        (
            "multiprocessing.connection:_ConnectionBase.recv",
            "concurrent.futures.process:_ExecutorManagerThread.wait_result_broken_or_wakeup",
        ),
        (
            "multiprocessing.connection:recv",
            "concurrent.futures.process:wait_result_broken_or_wakeup",
        ),
        (
            "multiprocessing.connection:_ConnectionBase.recv",
            "multiprocessing.managers:BaseManager.start",
        ),
        (
            "multiprocessing.connection:_ConnectionBase.recv",
            "multiprocessing.managers:Server._handle_request",
        ),
        (
            "multiprocessing.connection:_ConnectionBase.recv",
            "multiprocessing.managers:Server.serve_client",
        ),
        (
            "multiprocessing.connection:_ConnectionBase.recv",
            "multiprocessing.managers:BaseProxy._callmethod",
        ),
        (
            "multiprocessing.connection:_ConnectionBase.recv",
            "multiprocessing.managers:dispatch",
        ),
        (
            "multiprocessing.connection:recv",
            "multiprocessing.managers:start",
        ),
        (
            "multiprocessing.connection:recv",
            "multiprocessing.managers:handle_request",
        ),
        (
            "multiprocessing.connection:recv",
            "multiprocessing.managers:serve_client",
        ),
        (
            "multiprocessing.connection:recv",
            "multiprocessing.managers:_callmethod",
        ),
        (
            "multiprocessing.connection:recv",
            "multiprocessing.managers:dispatch",
        ),
        (
            "multiprocessing.connection:_ConnectionBase.recv",
            "multiprocessing.resource_sharer:_ResourceSharer._serve",
        ),
        (
            "multiprocessing.spawn:_main",
            "multiprocessing.spawn:spawn_main",
        ),
        (
            "multiprocessing.spawn:_main",
            "multiprocessing.forkserver:_serve_one",
        ),
    ];

    #[test]
    fn recognises_multiprocessing_but_not_user_code() {
        for (caller, outer) in MULTIPROCESSING_LOADS {
            assert_eq!(
                known_channel(caller, Some(outer)),
                Some("multiprocessing"),
                "{caller} called by {outer}"
            );
        }
        assert_eq!(known_channel("app:load_model", None), None);
        // A program's own recv() on a connection (a Listener's, Connection(fd)'s,
        // a subclass's), and a subclass's recv calling the base class's.
        for recv in [
            "multiprocessing.connection:_ConnectionBase.recv",
            "multiprocessing.connection:recv",
        ] {
            for outer in [
                Some("__main__:<module>"),
                Some("app.server:handle"),
                Some("app.conn:FileConnection.recv"),
                Some("multiprocessing.connection:Listener.accept"),
                None,
            ] {
                assert_eq!(
                    known_channel(recv, outer),
                    None,
                    "{recv} called by {outer:?}"
                );
            }
        }
        assert_eq!(
            known_channel("multiprocessing.spawn:_main", Some("app:main")),
            None
        );
    }

    #[test]
    fn a_transports_rules_are_found_by_its_name() {
        let rules: Vec<_> = known_rules("multiprocessing").collect();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].callers, KNOWN_CHANNELS[0].callers);
        assert_eq!(rules[1].called_from, KNOWN_CHANNELS[1].called_from);
        let all = known_callers("multiprocessing");
        assert_eq!(
            all.len(),
            KNOWN_CHANNELS[0].callers.len() + KNOWN_CHANNELS[1].callers.len()
        );
        assert_eq!(known_callers("dask"), KNOWN_CHANNELS[2].callers);
        for missing in ["multiprocessing/2", "celery", "torch", ""] {
            assert_eq!(known_rules(missing).count(), 0, "{missing}");
        }
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
    fn recognises_joblibs_pools_and_memmaps_but_not_user_calls() {
        // As `record` saw them on Python 3.11: loky's start-up and results, the
        // multiprocessing backend's task queue, and both backends' memmaps.
        let pools = [
            (
                "multiprocessing.connection:_ConnectionBase.recv",
                "joblib.externals.loky.process_executor:_ExecutorManagerThread.wait_result_broken_or_wakeup",
            ),
            (
                "multiprocessing.connection:_ConnectionBase.recv",
                "joblib.pool:CustomizablePicklingQueue._make_methods.<locals>.get",
            ),
            ("multiprocessing.connection:recv", "joblib.pool:get"),
        ];
        for (caller, called_from) in pools {
            assert_eq!(
                known_channel(caller, Some(called_from)),
                Some("multiprocessing")
            );
        }
        let joblib_loads = [
            (
                "joblib.externals.loky.backend.popen_loky_posix:<module>",
                "runpy:_run_code",
            ),
            (
                "joblib.numpy_pickle:load_temporary_memmap",
                "multiprocessing.queues:Queue.get",
            ),
            (
                "joblib.numpy_pickle:load_temporary_memmap",
                "multiprocessing.connection:_ConnectionBase.recv",
            ),
        ];
        for (caller, called_from) in joblib_loads {
            assert_eq!(
                known_channel(caller, Some(called_from)),
                Some("joblib"),
                "{caller} from {called_from}"
            );
        }
        // A script's own top level, a program's own recv(), and a task that maps
        // a file itself are not joblib's traffic.
        assert_eq!(
            known_channel("__main__:<module>", Some("runpy:_run_code")),
            None
        );
        assert_eq!(
            known_channel(
                "multiprocessing.connection:_ConnectionBase.recv",
                Some("app.workers:wait")
            ),
            None
        );
        assert_eq!(
            known_channel(
                "joblib.numpy_pickle:load_temporary_memmap",
                Some("app:task")
            ),
            None
        );
        assert_eq!(
            known_channel("joblib.numpy_pickle:load_temporary_memmap", None),
            None
        );
    }

    #[test]
    fn recognises_torchs_collectives_and_spawn_but_not_user_calls() {
        let decode = "torch.distributed.distributed_c10d:_tensor_to_object";
        for collective in [
            "broadcast_object_list",
            "all_gather_object",
            "gather_object",
            "scatter_object_list",
            "recv_object_list",
        ] {
            let outer = format!("torch.distributed.distributed_c10d:{collective}");
            assert_eq!(
                known_channel(decode, Some(&outer)),
                Some("torch.distributed")
            );
        }
        // The decoder called on a program's own bytes, or by another part of torch.
        for outer in [
            Some("app:decode"),
            Some("torch.distributed.rpc.internal:_InternalRPCPickler.deserialize"),
            None,
        ] {
            assert_eq!(known_channel(decode, outer), None, "{outer:?}");
        }
        for join in [
            "torch.multiprocessing.spawn:ProcessContext.join",
            "torch.multiprocessing.spawn:join",
        ] {
            assert_eq!(
                known_channel(join, Some("torch.multiprocessing.spawn:start_processes")),
                Some("torch.multiprocessing")
            );
            assert_eq!(known_channel(join, Some("app:main")), None);
        }
    }

    #[test]
    fn a_spawned_childs_process_object_shows_torch_spawn_in_use() {
        let child = [
            "multiprocessing.context.SpawnProcess",
            "torch.multiprocessing.spawn._wrap",
            "__main__.rank_main",
        ];
        assert_eq!(channels_used_by(child), ["torch.multiprocessing"]);
        assert!(channels_used_by(["multiprocessing.context.SpawnProcess"]).is_empty());
        for (_, name) in USED_WHEN_IMPORTED {
            assert!(known_rules(name).count() > 0, "{name}");
        }
    }

    #[test]
    fn recognises_rays_objects_functions_and_actors_but_not_tasks() {
        let module = "ray._private.function_manager:FunctionActorManager";
        let loads = [
            (
                "ray._private.serialization:SerializationContext._deserialize_pickle5_data",
                "ray._private.serialization:SerializationContext._deserialize_msgpack_data",
            ),
            (
                &format!("{module}.fetch_registered_method"),
                &format!("{module}.fetch_and_register_remote_function"),
            ),
            (
                &format!("{module}.fetch_and_register_remote_function"),
                &format!("{module}._wait_for_function"),
            ),
            (
                &format!("{module}._load_actor_class_from_gcs"),
                &format!("{module}.load_actor_class"),
            ),
        ];
        for (caller, outer) in loads {
            assert_eq!(known_channel(caller, Some(outer)), Some("ray"), "{caller}");
            // A task calling Ray's decoder or its function manager itself.
            assert_eq!(known_channel(caller, Some("app:task")), None, "{caller}");
            assert_eq!(known_channel(caller, None), None, "{caller}");
        }
        // A task's own loads, called from the worker's loop.
        assert_eq!(
            known_channel("app:unpickle", Some("ray._private.worker:Worker.main_loop")),
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
            assert!(
                !name.contains('/'),
                "{name}: '/' numbers a transport's rules"
            );
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
            for pattern in channel.called_from {
                let outer = pattern.replace('*', "x");
                for caller in channel.callers {
                    assert!(
                        manifest.channel_for(caller, Some(&outer)).is_some(),
                        "{caller} called by {outer}"
                    );
                    assert_eq!(known_channel(caller, Some(&outer)), Some(name));
                }
            }
            for caller in channel.callers {
                // Callers are unique across every rule: `record` finds a caller's
                // rule by it.
                assert!(seen.insert(*caller), "{caller} is listed twice");
                assert!(!caller.contains(['*', '?']), "{caller} is a wildcard");
                if channel.called_from.is_empty() {
                    assert!(manifest.channel_for(caller, None).is_some(), "{caller}");
                    assert_eq!(known_channel(caller, None), Some(name));
                } else {
                    assert!(manifest.channel_for(caller, Some("app:main")).is_none());
                    assert_eq!(known_channel(caller, Some("app:main")), None);
                }
            }
        }
    }
}
