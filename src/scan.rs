//! Lists the globals a pickle would import, by following its opcodes on a model of
//! the unpickler's stack. Nothing is executed; this is for review, not for a decision.

use crate::classify::{classify, Class};
use crate::reader::{arg_layout, op, ArgLayout};

/// A global the pickle names: `module` and `name` as the unpickler would look them up.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Import {
    Global {
        module: String,
        name: String,
    },
    /// STACK_GLOBAL whose operands are not plain strings in the pickle.
    Dynamic,
    /// EXT1/EXT2/EXT4: resolved through `copyreg`'s extension registry at load time.
    Extension(u32),
}

impl Import {
    pub fn render(&self) -> String {
        match self {
            Import::Global { module, name } => format!("{module}.{name}"),
            Import::Dynamic => "<computed at load time>".into(),
            Import::Extension(code) => format!("<copyreg extension {code}>"),
        }
    }

    /// How a reviewer should treat this import: see [`crate::classify`]. A computed
    /// import and a copyreg extension are risky: what they load is not in the pickle.
    pub fn class(&self) -> Class {
        match self {
            Import::Global { .. } => classify(&self.render()),
            Import::Dynamic | Import::Extension(_) => Class::Risky,
        }
    }

    /// Whether this global is known to run code, touch files or the network, or
    /// reach what it is not handed. Flagged so a reviewer looks twice; not a verdict.
    pub fn is_risky(&self) -> bool {
        self.class() == Class::Risky
    }
}

#[derive(Clone)]
enum Value {
    Mark,
    Text(String),
    Other,
}

fn line(data: &[u8], from: usize) -> Option<(&[u8], usize)> {
    let end = data[from..].iter().position(|&b| b == b'\n')? + from;
    Some((&data[from..end], end + 1))
}

fn le(data: &[u8]) -> u64 {
    let mut raw = [0u8; 8];
    raw[..data.len()].copy_from_slice(data);
    u64::from_le_bytes(raw)
}

/// The imports named by the pickle at the start of `data`, in order of appearance,
/// without duplicates. Scanning stops at STOP or at the first malformed opcode.
pub fn imports(data: &[u8]) -> Vec<Import> {
    let mut found: Vec<Import> = Vec::new();
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: std::collections::HashMap<u64, Value> = std::collections::HashMap::new();
    let mut pos = 0usize;
    let mut note = |import: Import| {
        if !found.contains(&import) {
            found.push(import);
        }
    };
    let pop_to_mark = |stack: &mut Vec<Value>| {
        while let Some(v) = stack.pop() {
            if matches!(v, Value::Mark) {
                break;
            }
        }
    };
    while pos < data.len() {
        let code = data[pos];
        pos += 1;
        let Some(layout) = arg_layout(code) else {
            break;
        };
        let arg_start = pos;
        let arg: &[u8] = match layout {
            ArgLayout::None => &[],
            ArgLayout::Fixed(n) => {
                let Some(a) = data.get(pos..pos + n) else {
                    break;
                };
                pos += n;
                a
            }
            ArgLayout::Line => {
                let Some((a, next)) = line(data, pos) else {
                    break;
                };
                pos = next;
                a
            }
            ArgLayout::TwoLines => {
                let Some((_, mid)) = line(data, pos) else {
                    break;
                };
                let Some((_, next)) = line(data, mid) else {
                    break;
                };
                pos = next;
                &data[arg_start..next]
            }
            ArgLayout::Counted { width, .. } => {
                let Some(len) = data.get(pos..pos + width).map(le) else {
                    break;
                };
                pos += width;
                let Ok(len) = usize::try_from(len) else { break };
                let Some(a) = pos.checked_add(len).and_then(|end| data.get(pos..end)) else {
                    break;
                };
                pos += len;
                a
            }
        };
        let text = |bytes: &[u8]| Value::Text(String::from_utf8_lossy(bytes).into_owned());
        match code {
            op::STOP => break,
            op::MARK => stack.push(Value::Mark),
            op::POP => {
                stack.pop();
            }
            op::POP_MARK => pop_to_mark(&mut stack),
            op::DUP => {
                let top = stack.last().cloned().unwrap_or(Value::Other);
                stack.push(top);
            }
            op::SHORT_BINUNICODE
            | op::BINUNICODE
            | op::BINUNICODE8
            | op::SHORT_BINSTRING
            | op::BINSTRING => stack.push(text(arg)),
            op::UNICODE => stack.push(text(arg)),
            op::STRING => {
                let trimmed = arg
                    .strip_prefix(b"'")
                    .and_then(|a| a.strip_suffix(b"'"))
                    .or_else(|| arg.strip_prefix(b"\"").and_then(|a| a.strip_suffix(b"\"")))
                    .unwrap_or(arg);
                stack.push(text(trimmed))
            }
            op::GLOBAL | op::INST => {
                let mut parts = arg.split(|&b| b == b'\n');
                let module = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                let name = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                note(Import::Global { module, name });
                if code == op::INST {
                    pop_to_mark(&mut stack);
                }
                stack.push(Value::Other);
            }
            op::STACK_GLOBAL => {
                let name = stack.pop();
                let module = stack.pop();
                match (module, name) {
                    (Some(Value::Text(module)), Some(Value::Text(name))) => {
                        note(Import::Global { module, name })
                    }
                    _ => note(Import::Dynamic),
                }
                stack.push(Value::Other);
            }
            op::EXT1 | op::EXT2 | op::EXT4 => {
                note(Import::Extension(le(arg) as u32));
                stack.push(Value::Other);
            }
            op::PUT | op::BINPUT | op::LONG_BINPUT | op::MEMOIZE => {
                let key = match code {
                    op::PUT => std::str::from_utf8(arg)
                        .ok()
                        .and_then(|s| s.trim().parse().ok())
                        .unwrap_or(u64::MAX),
                    op::MEMOIZE => memo.len() as u64,
                    _ => le(arg),
                };
                memo.insert(key, stack.last().cloned().unwrap_or(Value::Other));
            }
            op::GET | op::BINGET | op::LONG_BINGET => {
                let key = match code {
                    op::GET => std::str::from_utf8(arg)
                        .ok()
                        .and_then(|s| s.trim().parse().ok())
                        .unwrap_or(u64::MAX),
                    _ => le(arg),
                };
                stack.push(memo.get(&key).cloned().unwrap_or(Value::Other));
            }
            op::APPEND | op::BUILD | op::BINPERSID | op::READONLY_BUFFER => {
                let top = stack.pop();
                if matches!(code, op::BINPERSID | op::READONLY_BUFFER) {
                    stack.push(top.map(|_| Value::Other).unwrap_or(Value::Other));
                }
            }
            op::SETITEM => {
                stack.pop();
                stack.pop();
            }
            op::REDUCE | op::NEWOBJ => {
                stack.pop();
                stack.pop();
                stack.push(Value::Other);
            }
            op::NEWOBJ_EX => {
                stack.truncate(stack.len().saturating_sub(3));
                stack.push(Value::Other);
            }
            op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                let n = (code - op::TUPLE1 + 1) as usize;
                stack.truncate(stack.len().saturating_sub(n));
                stack.push(Value::Other);
            }
            op::APPENDS | op::SETITEMS | op::ADDITEMS => pop_to_mark(&mut stack),
            op::TUPLE | op::LIST | op::DICT | op::FROZENSET | op::OBJ => {
                pop_to_mark(&mut stack);
                stack.push(Value::Other);
            }
            op::PROTO | op::FRAME => {}
            _ => stack.push(Value::Other),
        }
    }
    found
}

/// Whether the unpickler can be run on `data` with every global replaced by an inert
/// placeholder, to find the error plain pickle would raise, without it using memory
/// the input does not pay for or code the input does not name:
///
/// * no EXT opcodes: both unpicklers take extensions from `copyreg`'s cache without
///   asking `find_class`, so a warm cache would hand the run real functions;
/// * no memo index beyond the input's length: the C unpickler grows its memo array
///   to twice the index it is given;
/// * no counted length beyond what is left of the input: the C unpickler allocates
///   the object before it reads into it.
pub fn dry_run_safe(data: &[u8]) -> bool {
    let limit = data.len() as u64;
    let mut pos = 0usize;
    while pos < data.len() {
        let code = data[pos];
        pos += 1;
        let Some(layout) = arg_layout(code) else {
            return true; // the run stops at this opcode too
        };
        match layout {
            ArgLayout::None => {}
            ArgLayout::Fixed(n) => {
                let Some(arg) = data.get(pos..pos + n) else {
                    return true;
                };
                pos += n;
                match code {
                    op::EXT1 | op::EXT2 | op::EXT4 => return false,
                    op::BINPUT | op::LONG_BINPUT if le(arg) > limit => return false,
                    _ => {}
                }
            }
            ArgLayout::Line => {
                let Some((arg, next)) = line(data, pos) else {
                    return true;
                };
                pos = next;
                if code == op::PUT {
                    let index = std::str::from_utf8(arg)
                        .ok()
                        .and_then(|s| s.trim().parse::<u64>().ok());
                    if index.is_none_or(|i| i > limit) {
                        return false;
                    }
                }
            }
            ArgLayout::TwoLines => {
                let Some((_, mid)) = line(data, pos) else {
                    return true;
                };
                let Some((_, next)) = line(data, mid) else {
                    return true;
                };
                pos = next;
            }
            ArgLayout::Counted { width, .. } => {
                let Some(len) = data.get(pos..pos + width).map(le) else {
                    return true;
                };
                pos += width;
                let remaining = (data.len() - pos) as u64;
                // Signed widths (BINSTRING, LONG4) are refused when negative anyway.
                let len = if width == 4 { len as u32 as u64 } else { len };
                if len > remaining {
                    return false;
                }
                pos += len as usize;
            }
        }
        if code == op::STOP {
            return true;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dry_run_safety() {
        assert!(dry_run_safe(b"\x80\x02]q\x00K\x01a"));
        // EXT opcodes read copyreg's cache.
        assert!(!dry_run_safe(b"\x80\x02\x82\xf1"));
        // A memo index the input does not pay for.
        assert!(!dry_run_safe(b"\x80\x02]r\x00\x00\x00\x01"));
        assert!(!dry_run_safe(b"]p4294967295\n"));
        // A length longer than the rest of the input.
        assert!(!dry_run_safe(b"\x8e\x00\x00\x00\x00\x01\x00\x00\x00ab"));
        assert!(dry_run_safe(b"C\x02ab"));
    }

    fn global(m: &str, n: &str) -> Import {
        Import::Global {
            module: m.into(),
            name: n.into(),
        }
    }

    #[test]
    fn protocol0_global_and_inst() {
        let found = imports(b"cos\nsystem\n(S'echo'\ntR(ibuiltins\nlist\n.");
        assert_eq!(
            found,
            vec![global("os", "system"), global("builtins", "list")]
        );
        assert!(found[0].is_risky());
        assert!(!found[1].is_risky());
    }

    #[test]
    fn stack_global_with_memoized_operands() {
        // "os" memoized, fetched back with BINGET, then "system": STACK_GLOBAL.
        let data = b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93\x8c\x02os\x94h\x00h\x01\x93.";
        let found = imports(data);
        assert_eq!(found, vec![global("os", "system")]);
    }

    #[test]
    fn computed_and_extension_imports_are_risky() {
        let found = imports(b"\x80\x04K\x01K\x02\x93\x82\x05.");
        assert_eq!(found, vec![Import::Dynamic, Import::Extension(5)]);
        assert!(found.iter().all(Import::is_risky));
    }

    #[test]
    fn dotted_names_and_builtins() {
        assert!(global("builtins", "eval").is_risky());
        assert!(global("os.path", "join").is_risky());
        assert!(!global("collections", "OrderedDict").is_risky());
        assert!(!global("numpy.core.multiarray", "_reconstruct").is_risky());
    }

    #[test]
    fn classes_follow_the_rendered_name() {
        assert_eq!(global("collections", "OrderedDict").class(), Class::Safe);
        assert_eq!(global("mylib", "Model").class(), Class::Review);
        assert_eq!(global("pydoc", "locate").class(), Class::Risky);
        // A dotted name reaching into a risky submodule is risky, however it is split.
        assert_eq!(
            global("numpy", "testing._private.utils.runstring").class(),
            Class::Risky
        );
        assert_eq!(
            global("numpy.testing._private.utils", "runstring").class(),
            Class::Risky
        );
        assert_eq!(Import::Dynamic.class(), Class::Risky);
        assert_eq!(Import::Extension(1).class(), Class::Risky);
    }
}
