//! Where an admitted unpickler raises its `pickle.find_class` events, and whether
//! an event comes from there. The backstop admits an import only then: code an
//! admitted pickle calls runs in other frames, so an unpickler it starts is not
//! admitted by the outer load. Frames and code objects are named by address,
//! gathered by the binding; `None` is no Python frame at all.

/// Where the events of one admitted unpickler come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// From `frame` itself: an original with no Python frame of its own (the C
    /// `loads`, the C `find_class`), called from `frame`.
    InFrame { frame: Option<usize> },
    /// From a call of the code object `code` made by `frame`: an original that is
    /// a Python function (the pure-Python `find_class`).
    InCallee { frame: Option<usize>, code: usize },
}

impl Admission {
    /// Whether an event raised in `frame` comes from where this admission says.
    /// `code_and_caller` gives that frame's code object and calling frame; it is
    /// asked only for an `InCallee` admission.
    pub fn admits(
        &self,
        frame: Option<usize>,
        code_and_caller: impl FnOnce() -> (Option<usize>, Option<usize>),
    ) -> bool {
        match *self {
            Admission::InFrame { frame: admitted } => frame == admitted,
            Admission::InCallee {
                frame: admitted,
                code,
            } => {
                if frame.is_none() {
                    return false;
                }
                let (event_code, caller) = code_and_caller();
                event_code == Some(code) && caller.is_some() && caller == admitted
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_in_frame_admission_admits_only_its_own_frame() {
        let admission = Admission::InFrame { frame: Some(10) };
        let never = || -> (Option<usize>, Option<usize>) { panic!("not asked") };
        assert!(admission.admits(Some(10), never));
        assert!(!admission.admits(Some(11), never));
        assert!(!admission.admits(None, never));
        // No Python frame when admitted, none when raised: the same place.
        assert!(Admission::InFrame { frame: None }.admits(None, never));
    }

    #[test]
    fn an_in_callee_admission_needs_its_code_called_from_its_frame() {
        let admission = Admission::InCallee {
            frame: Some(10),
            code: 7,
        };
        assert!(admission.admits(Some(20), || (Some(7), Some(10))));
        // Other code called from the frame (a REDUCE target), or the same code
        // called from elsewhere (a nested unpickler), is not admitted.
        assert!(!admission.admits(Some(20), || (Some(8), Some(10))));
        assert!(!admission.admits(Some(20), || (Some(7), Some(11))));
        assert!(!admission.admits(None, || panic!("not asked")));
        let frameless = Admission::InCallee {
            frame: None,
            code: 7,
        };
        assert!(!frameless.admits(Some(20), || (Some(7), None)));
    }
}
