//! Glob patterns over call-stack frames written `module:qualname`.
//!
//! `*` matches any run of characters (dots included), `?` exactly one. Line numbers
//! are deliberately not part of a frame, so a pattern survives edits to the file.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramePattern {
    text: String,
    module: Vec<char>,
    qualname: Vec<char>,
}

/// Why a pattern was rejected, with the 0-based byte offset of the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

fn allowed(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '.' | '<' | '>' | '*' | '?')
}

impl FramePattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let err = |offset: usize, message: String| Err(PatternError { offset, message });
        let Some(colon) = text.find(':') else {
            return err(
                0,
                format!("stack pattern {text:?} has no ':'; write it as \"module:qualname\", e.g. \"myapp.models:load_*\""),
            );
        };
        for (offset, c) in text.char_indices() {
            if c == ':' {
                if offset != colon {
                    return err(
                        offset,
                        format!("stack pattern {text:?} has more than one ':'"),
                    );
                }
            } else if !allowed(c) {
                return err(
                    offset,
                    format!("stack pattern {text:?} has the character {c:?}; patterns use identifiers, '.', '<', '>', '*' and '?'"),
                );
            }
        }
        let (module, qualname) = (&text[..colon], &text[colon + 1..]);
        if module.is_empty() || qualname.is_empty() {
            return err(
                0,
                format!(
                    "stack pattern {text:?} needs both a module and a qualname; use '*' for any"
                ),
            );
        }
        Ok(FramePattern {
            text: text.to_owned(),
            module: module.chars().collect(),
            qualname: qualname.chars().collect(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether this pattern matches a frame named `module:qualname`.
    pub fn matches(&self, frame: &str) -> bool {
        let Some((module, qualname)) = frame.split_once(':') else {
            return false;
        };
        glob(&self.module, module) && glob(&self.qualname, qualname)
    }
}

impl fmt::Display for FramePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Wildcard match with single-star backtracking: linear in practice, never exponential.
fn glob(pattern: &[char], text: &str) -> bool {
    // Frame names are ASCII almost always: match their bytes without collecting.
    if text.is_ascii() {
        glob_in(pattern, text.as_bytes(), char::from)
    } else {
        let chars: Vec<char> = text.chars().collect();
        glob_in(pattern, &chars, |c| c)
    }
}

fn glob_in<T: Copy>(pattern: &[char], text: &[T], as_char: impl Fn(T) -> char) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == as_char(text[t]) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// Whether `patterns` match `frames` (both outermost first) as a subsequence.
pub fn stack_matches<F: AsRef<str>>(patterns: &[FramePattern], frames: &[F]) -> bool {
    let mut remaining = patterns.iter().peekable();
    for frame in frames {
        match remaining.peek() {
            Some(pattern) if pattern.matches(frame.as_ref()) => {
                remaining.next();
            }
            Some(_) => {}
            None => break,
        }
    }
    remaining.peek().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> FramePattern {
        FramePattern::parse(text).unwrap()
    }

    #[test]
    fn globs() {
        assert!(p("myapp.models:load_*").matches("myapp.models:load_weights"));
        assert!(!p("myapp.models:load_*").matches("myapp.models:save"));
        assert!(p("myapp.*:*").matches("myapp.a.b:C.method.<locals>.f"));
        assert!(p("*:<module>").matches("__main__:<module>"));
        assert!(p("m:f?").matches("m:f1"));
        assert!(!p("m:f?").matches("m:f12"));
        assert!(p("m:*a*b*c").matches("m:xaybzc"));
        // `?` is one character, also outside ASCII.
        assert!(p("m:f?").matches("m:fé"));
        assert!(p("m:é*").matches("m:éa"));
        assert!(!p("m:f??").matches("m:fé"));
        assert!(!p("m:*a*b*c").matches("m:xaybz"));
    }

    #[test]
    fn bad_patterns() {
        assert!(FramePattern::parse("no_colon").is_err());
        assert!(FramePattern::parse("a:b:c").is_err());
        assert_eq!(FramePattern::parse("a:b c").unwrap_err().offset, 3);
        assert!(FramePattern::parse(":f").is_err());
        assert!(FramePattern::parse("m:").is_err());
        // Offsets are in bytes, so a position after a multi-byte character is exact.
        assert_eq!(FramePattern::parse("é:b c").unwrap_err().offset, 4);
    }

    #[test]
    fn subsequence_outermost_first() {
        let frames: Vec<String> = [
            "__main__:<module>",
            "app:main",
            "lib:helper",
            "app.models:load_ckpt",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert!(stack_matches(
            &[p("app:main"), p("app.models:load_*")],
            &frames
        ));
        assert!(stack_matches(&[p("app.models:load_*")], &frames));
        assert!(!stack_matches(
            &[p("app.models:load_*"), p("app:main")],
            &frames
        ));
        assert!(stack_matches(&[], &frames));
    }
}
