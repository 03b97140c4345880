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

/// One opcode's argument in `data`, the opcode byte just before `pos`: the
/// argument's bytes and where the next opcode starts. `None` when it is cut short.
fn read_arg(data: &[u8], pos: usize, layout: ArgLayout) -> Option<(&[u8], usize)> {
    match layout {
        ArgLayout::None => Some((&[], pos)),
        ArgLayout::Fixed(n) => Some((data.get(pos..pos + n)?, pos + n)),
        ArgLayout::Line => line(data, pos),
        ArgLayout::TwoLines => {
            let (_, mid) = line(data, pos)?;
            let (_, next) = line(data, mid)?;
            Some((&data[pos..next], next))
        }
        ArgLayout::Counted { width, .. } => {
            let len = data.get(pos..pos + width).map(le)?;
            let start = pos + width;
            let len = usize::try_from(len).ok()?;
            let end = start.checked_add(len)?;
            Some((data.get(start..end)?, end))
        }
    }
}

fn text(bytes: &[u8]) -> Value {
    Value::Text(String::from_utf8_lossy(bytes).into_owned())
}

/// A memo key in the protocol-0 text form (`PUT`, `GET`); `u64::MAX` if malformed.
fn text_key(arg: &[u8]) -> u64 {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(u64::MAX)
}

/// The unpickler's stack and memo, modelled just enough to follow the strings that
/// STACK_GLOBAL takes its module and name from; and the imports found so far.
#[derive(Default)]
struct StackModel {
    found: Vec<Import>,
    stack: Vec<Value>,
    memo: std::collections::HashMap<u64, Value>,
}

impl StackModel {
    fn note(&mut self, import: Import) {
        if !self.found.contains(&import) {
            self.found.push(import);
        }
    }

    fn pop_to_mark(&mut self) {
        while let Some(v) = self.stack.pop() {
            if matches!(v, Value::Mark) {
                break;
            }
        }
    }

    fn top(&self) -> Value {
        self.stack.last().cloned().unwrap_or(Value::Other)
    }

    /// Follow one opcode (not STOP) with its argument.
    fn step(&mut self, code: u8, arg: &[u8]) {
        match code {
            op::GLOBAL | op::INST | op::STACK_GLOBAL | op::EXT1 | op::EXT2 | op::EXT4 => {
                self.import(code, arg)
            }
            op::PUT | op::BINPUT | op::LONG_BINPUT | op::MEMOIZE => {
                let key = match code {
                    op::PUT => text_key(arg),
                    op::MEMOIZE => self.memo.len() as u64,
                    _ => le(arg),
                };
                self.memo.insert(key, self.top());
            }
            op::GET | op::BINGET | op::LONG_BINGET => {
                let key = if code == op::GET {
                    text_key(arg)
                } else {
                    le(arg)
                };
                let value = self.memo.get(&key).cloned().unwrap_or(Value::Other);
                self.stack.push(value);
            }
            op::SHORT_BINUNICODE
            | op::BINUNICODE
            | op::BINUNICODE8
            | op::SHORT_BINSTRING
            | op::BINSTRING
            | op::UNICODE => self.stack.push(text(arg)),
            op::STRING => {
                let trimmed = arg
                    .strip_prefix(b"'")
                    .and_then(|a| a.strip_suffix(b"'"))
                    .or_else(|| arg.strip_prefix(b"\"").and_then(|a| a.strip_suffix(b"\"")))
                    .unwrap_or(arg);
                self.stack.push(text(trimmed))
            }
            _ => self.shuffle(code),
        }
    }

    /// The opcodes that name a global.
    fn import(&mut self, code: u8, arg: &[u8]) {
        match code {
            op::GLOBAL | op::INST => {
                let mut parts = arg.split(|&b| b == b'\n');
                let module = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                let name = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                self.note(Import::Global { module, name });
                if code == op::INST {
                    self.pop_to_mark();
                }
            }
            op::STACK_GLOBAL => {
                let name = self.stack.pop();
                let module = self.stack.pop();
                match (module, name) {
                    (Some(Value::Text(module)), Some(Value::Text(name))) => {
                        self.note(Import::Global { module, name })
                    }
                    _ => self.note(Import::Dynamic),
                }
            }
            // EXT1, EXT2, EXT4.
            _ => self.note(Import::Extension(le(arg) as u32)),
        }
        self.stack.push(Value::Other);
    }

    /// The opcodes that only move values on the stack, as far as strings go.
    fn shuffle(&mut self, code: u8) {
        match code {
            op::MARK => self.stack.push(Value::Mark),
            op::POP => {
                self.stack.pop();
            }
            op::POP_MARK | op::APPENDS | op::SETITEMS | op::ADDITEMS => self.pop_to_mark(),
            op::DUP => {
                let top = self.top();
                self.stack.push(top)
            }
            op::APPEND | op::BUILD | op::BINPERSID | op::READONLY_BUFFER => {
                let top = self.stack.pop();
                if matches!(code, op::BINPERSID | op::READONLY_BUFFER) {
                    self.stack
                        .push(top.map(|_| Value::Other).unwrap_or(Value::Other));
                }
            }
            op::SETITEM => {
                self.stack.pop();
                self.stack.pop();
            }
            op::REDUCE | op::NEWOBJ => {
                self.stack.pop();
                self.stack.pop();
                self.stack.push(Value::Other);
            }
            op::NEWOBJ_EX => {
                self.stack.truncate(self.stack.len().saturating_sub(3));
                self.stack.push(Value::Other);
            }
            op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                let n = (code - op::TUPLE1 + 1) as usize;
                self.stack.truncate(self.stack.len().saturating_sub(n));
                self.stack.push(Value::Other);
            }
            op::TUPLE | op::LIST | op::DICT | op::FROZENSET | op::OBJ => {
                self.pop_to_mark();
                self.stack.push(Value::Other);
            }
            op::PROTO | op::FRAME => {}
            _ => self.stack.push(Value::Other),
        }
    }
}

/// The imports named by the pickle at the start of `data`, in order of appearance,
/// without duplicates. Scanning stops at STOP or at the first malformed opcode.
pub fn imports(data: &[u8]) -> Vec<Import> {
    let mut model = StackModel::default();
    let mut pos = 0usize;
    while pos < data.len() {
        let code = data[pos];
        let Some(layout) = arg_layout(code) else {
            break;
        };
        let Some((arg, next)) = read_arg(data, pos + 1, layout) else {
            break;
        };
        if code == op::STOP {
            break;
        }
        model.step(code, arg);
        pos = next;
    }
    model.found
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
    fn arguments_cut_short_end_the_scan() {
        let counted = ArgLayout::Counted {
            width: 1,
            signed: false,
        };
        assert_eq!(read_arg(b"X\x02ab.", 1, counted), Some((&b"ab"[..], 4)));
        assert_eq!(read_arg(b"X\x03ab", 1, counted), None);
        assert_eq!(read_arg(b"cos\nsys", 1, ArgLayout::TwoLines), None);
        assert_eq!(text_key(b"7\n"), 7);
        assert_eq!(text_key(b"x"), u64::MAX);
        // A cut-short opcode ends the scan with what was found before it.
        assert_eq!(
            imports(b"cos\nsystem\n\x8c\x09sh"),
            vec![global("os", "system")]
        );
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
