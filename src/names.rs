//! Names the gate treats specially: pickleguard's own modules, pickle's machinery
//! (frames skipped when naming a caller), and the imports the backstop refuses
//! even inside an admitted load.

/// pickleguard's own modules.
pub fn is_internal(module: &str) -> bool {
    module == "pickleguard" || module.starts_with("pickleguard.")
}

/// Frames that are part of loading rather than asking for a load.
pub fn is_pickle_machinery(module: &str) -> bool {
    matches!(module, "pickle" | "_pickle" | "copyreg") || is_internal(module)
}

/// Engines' worker start-up modules, which run as `python -m MODULE` and load
/// their start-up data in top-level code. Their `__main__` frames are named by
/// the module (`MODULE:<module>`), so a channel rule can name them apart from
/// any script's top level; every other `__main__` keeps its name.
pub const ENGINE_MAIN_MODULES: &[&str] = &[
    // loky, joblib's default process backend (vendored, and standalone).
    "joblib.externals.loky.backend.popen_loky_posix",
    "loky.backend.popen_loky_posix",
];

/// Why an import is refused whatever admitted it, or None.
pub fn refused_even_when_admitted(module: &str, name: &str) -> Option<String> {
    // A pickle may name pickleguard.errors: a worker sends a denial back to its
    // parent as a pickle. Anything else of pickleguard's reaches its internals.
    if is_internal(module) && module != "pickleguard.errors" {
        return Some(format!(
            "a pickle may not import pickleguard's own {module}.{name}"
        ));
    }
    // A dotted name walks attributes (protocol 4). Picklers write dotted names for
    // nested classes and methods, never through dunders such as __self__ or
    // __base__, which reach pickleguard's internals or the original unpicklers.
    let mut parts = name.split('.').collect::<Vec<_>>();
    parts.pop();
    if parts
        .iter()
        .any(|p| p.starts_with("__") && p.ends_with("__"))
    {
        return Some(format!(
            "a pickle may not reach {module}.{name} through a special attribute"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_modules_are_internal_and_prefixes_are_not() {
        assert!(is_internal("pickleguard"));
        assert!(is_internal("pickleguard._core"));
        assert!(!is_internal("pickleguardian"));
        assert!(is_pickle_machinery("copyreg"));
        assert!(is_pickle_machinery("pickleguard._gate"));
        assert!(!is_pickle_machinery("pickletools"));
    }

    #[test]
    fn pickleguard_imports_are_refused_but_its_errors() {
        assert!(refused_even_when_admitted("pickleguard._core", "record_layer").is_some());
        assert!(refused_even_when_admitted("pickleguard", "activate").is_some());
        assert!(refused_even_when_admitted("pickleguard.errors", "NoPickleError").is_none());
    }

    #[test]
    fn dotted_names_may_not_walk_special_attributes() {
        let walk = refused_even_when_admitted("pickle", "loads.__self__.record_layer");
        assert!(walk.unwrap().contains("special attribute"));
        assert!(refused_even_when_admitted("pickle", "Unpickler.__base__.load").is_some());
        // Nested classes and methods are ordinary dotted names.
        assert!(refused_even_when_admitted("app.models", "Outer.Inner").is_none());
        assert!(refused_even_when_admitted("builtins", "str.upper").is_none());
        // A dunder as the last part is the attribute itself, not a walk through one.
        assert!(refused_even_when_admitted("app", "Model.__new__").is_none());
        assert!(refused_even_when_admitted("builtins", "__import__").is_none());
    }
}
