//! Transports whose pickles are produced by the same program on every run, with a
//! new hash each time: `pickleguard record` writes a `[[channel]]` rule for the
//! callers it sees load them instead of pinning each message.

/// (channel name, callers as `module:qualname`). Python before 3.11 names frames
/// without their class, so both spellings are listed.
pub const KNOWN_CHANNELS: &[(&str, &[&str])] = &[(
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
)];

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
}
