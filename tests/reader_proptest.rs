//! Property tests of `pickleguard::reader` on hand-built pickles and random bytes.
//!
//! The opcode tables below are written out from `pickletools`' documentation rather
//! than taken from the reader, so the two check each other. Hand-built pickles are
//! sequences of opcodes with well-formed arguments (the reader does not care whether
//! they would unpickle), ending in STOP, laid out in frames the way
//! `pickle._Unframer` allows: a FRAME starts where an opcode does and ends between
//! any two reads before the next FRAME; whatever follows it up to the next FRAME is
//! read unframed.
//!
//! Run with `cargo test --test reader_proptest` (no Python needed).

use std::collections::BTreeSet;

use pickleguard::reader::{delimit, delimit_stepwise, read_one, read_one_into, ReadError, Source};
use proptest::collection::{btree_set, vec};
use proptest::prelude::*;
use proptest::sample::{select, Index};

const STOP: u8 = b'.';
const FRAME: u8 = 0x95;
const PROTO: u8 = 0x80;
const MEMOIZE: u8 = 0x94;
const NEXT_BUFFER: u8 = 0x97;

/// Opcodes without an argument, STOP and NEXT_BUFFER aside.
const NO_ARGUMENT: &[u8] = &[
    b'(', // MARK
    b'0', // POP
    b'1', // POP_MARK
    b'2', // DUP
    b'N', // NONE
    b'Q', // BINPERSID
    b'R', // REDUCE
    b'a', // APPEND
    b'b', // BUILD
    b'd', // DICT
    b'}', // EMPTY_DICT
    b'e', // APPENDS
    b'l', // LIST
    b']', // EMPTY_LIST
    b'o', // OBJ
    b's', // SETITEM
    b't', // TUPLE
    b')', // EMPTY_TUPLE
    b'u', // SETITEMS
    0x81, // NEWOBJ
    0x85, // TUPLE1
    0x86, // TUPLE2
    0x87, // TUPLE3
    0x88, // NEWTRUE
    0x89, // NEWFALSE
    0x8f, // EMPTY_SET
    0x90, // ADDITEMS
    0x91, // FROZENSET
    0x92, // NEWOBJ_EX
    0x93, // STACK_GLOBAL
    0x94, // MEMOIZE
    0x98, // READONLY_BUFFER
];

/// Opcodes with a fixed-size argument, and its size.
const FIXED_ARGUMENT: &[(u8, usize)] = &[
    (b'K', 1), // BININT1
    (b'h', 1), // BINGET
    (b'q', 1), // BINPUT
    (0x80, 1), // PROTO
    (0x82, 1), // EXT1
    (b'M', 2), // BININT2
    (0x83, 2), // EXT2
    (b'J', 4), // BININT
    (b'j', 4), // LONG_BINGET
    (b'r', 4), // LONG_BINPUT
    (0x84, 4), // EXT4
    (b'G', 8), // BINFLOAT
];

/// Opcodes whose argument is one newline-terminated line:
/// FLOAT, INT, LONG, PERSID, STRING, UNICODE, GET, PUT.
const ONE_LINE: &[u8] = b"FILPSVgp";

/// Opcodes whose argument is two lines: GLOBAL, INST.
const TWO_LINES: &[u8] = b"ci";

/// Opcodes whose argument is a little-endian length of the given width, then that
/// many bytes.
const COUNTED: &[(u8, usize)] = &[
    (b'U', 1), // SHORT_BINSTRING
    (b'C', 1), // SHORT_BINBYTES
    (0x8c, 1), // SHORT_BINUNICODE
    (0x8a, 1), // LONG1
    (b'X', 4), // BINUNICODE
    (b'B', 4), // BINBYTES
    (b'T', 4), // BINSTRING (signed length)
    (0x8b, 4), // LONG4 (signed length)
    (0x8d, 8), // BINUNICODE8
    (0x8e, 8), // BINBYTES8
    (0x96, 8), // BYTEARRAY8
];

/// One opcode and its argument, split into the primitive reads an unpickler makes:
/// the opcode byte, then a fixed argument, a line, or a length prefix and a payload.
type Reads = Vec<Vec<u8>>;

/// A pickle built by hand, and what `delimit` must report for it.
#[derive(Debug, Clone)]
struct Built {
    bytes: Vec<u8>,
    out_of_band_buffers: usize,
}

impl Built {
    /// (length, out-of-band buffers): what `delimit` must report.
    fn extent(&self) -> (usize, usize) {
        (self.bytes.len(), self.out_of_band_buffers)
    }
}

fn line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // What picklers write, and bytes that look like opcodes.
        select(vec![
            b"0".to_vec(),
            b"01".to_vec(),
            b"-7".to_vec(),
            b"123456789012345678901234567890L".to_vec(),
            b"'a.b('".to_vec(),
            b"nan".to_vec(),
            b"builtins".to_vec(),
            b".".to_vec(),
            b"\x95\x80".to_vec(),
            Vec::new(),
        ]),
        vec(any::<u8>(), 0..40).prop_map(|mut bytes| {
            bytes.retain(|&b| b != b'\n');
            bytes
        }),
    ]
}

fn terminated(mut line: Vec<u8>) -> Vec<u8> {
    line.push(b'\n');
    line
}

fn opcode() -> impl Strategy<Value = Reads> {
    prop_oneof![
        select(NO_ARGUMENT).prop_map(|code| vec![vec![code]]),
        Just(vec![vec![NEXT_BUFFER]]),
        (select(FIXED_ARGUMENT), any::<[u8; 8]>())
            .prop_map(|((code, size), arg)| vec![vec![code], arg[..size].to_vec()]),
        (select(ONE_LINE), line()).prop_map(|(code, line)| vec![vec![code], terminated(line)]),
        (select(TWO_LINES), line(), line()).prop_map(|(code, module, name)| vec![
            vec![code],
            terminated(module),
            terminated(name)
        ]),
        (select(COUNTED), vec(any::<u8>(), 0..300)).prop_map(|((code, width), mut payload)| {
            if width == 1 {
                payload.truncate(255);
            }
            let prefix = (payload.len() as u64).to_le_bytes()[..width].to_vec();
            vec![vec![code], prefix, payload]
        }),
    ]
}

fn frame_header(len: usize) -> Vec<u8> {
    let mut header = vec![FRAME];
    header.extend_from_slice(&(len as u64).to_le_bytes());
    header
}

/// Lays `ops` out with a FRAME in front of each op whose index is in `starts`. The
/// frame covers the reads up to the next FRAME, or only the first `covers[i]` of them
/// when `full[i]` is false.
fn lay_out(ops: &[Reads], starts: &BTreeSet<usize>, covers: &[Index], full: &[bool]) -> Vec<u8> {
    let starts: Vec<usize> = starts.iter().copied().filter(|&s| s < ops.len()).collect();
    let mut out = Vec::new();
    let mut cursor = 0;
    for (i, &start) in starts.iter().enumerate() {
        let next = starts.get(i + 1).copied().unwrap_or(ops.len());
        out.extend(ops[cursor..start].iter().flatten().flatten());
        let reads: Vec<&Vec<u8>> = ops[start..next].iter().flatten().collect();
        let covered = if full[i % full.len()] {
            reads.len()
        } else {
            covers[i % covers.len()].index(reads.len() + 1)
        };
        let len = reads[..covered].iter().map(|read| read.len()).sum();
        out.extend(frame_header(len));
        out.extend(reads.into_iter().flatten());
        cursor = next;
    }
    out.extend(ops[cursor..].iter().flatten().flatten());
    out
}

/// Any opcodes with well-formed arguments, then STOP, in frames or not.
fn opcode_sequence() -> impl Strategy<Value = Built> {
    (
        vec(opcode(), 0..24),
        btree_set(0..25usize, 0..5),
        vec(any::<Index>(), 5),
        vec(any::<bool>(), 5),
    )
        .prop_map(|(mut ops, starts, covers, full)| {
            let out_of_band_buffers = ops.iter().filter(|op| op[0] == [NEXT_BUFFER]).count();
            ops.push(vec![vec![STOP]]);
            Built {
                bytes: lay_out(&ops, &starts, &covers, &full),
                out_of_band_buffers,
            }
        })
}

/// What protocol 4 writes for a short str: PROTO 4, FRAME, SHORT_BINUNICODE,
/// MEMOIZE, STOP, all in one frame.
fn protocol4_short_str() -> impl Strategy<Value = Built> {
    // At most 60 chars of at most 4 UTF-8 bytes: fits SHORT_BINUNICODE's 255.
    vec(any::<char>(), 0..60).prop_map(|chars| {
        let text: String = chars.into_iter().collect();
        let mut body = vec![0x8c, text.len() as u8];
        body.extend_from_slice(text.as_bytes());
        body.extend([MEMOIZE, STOP]);
        let mut bytes = vec![PROTO, 4];
        bytes.extend(frame_header(body.len()));
        bytes.extend(body);
        Built {
            bytes,
            out_of_band_buffers: 0,
        }
    })
}

/// What protocol 0 writes for a list of ints: MARK, LIST, PUT 0, then an INT line
/// and APPEND for each item, STOP.
fn protocol0_int_list() -> impl Strategy<Value = Built> {
    vec(any::<i64>(), 0..20).prop_map(|ints| {
        let mut bytes = b"(lp0\n".to_vec();
        for int in ints {
            bytes.extend(format!("I{int}\na").bytes());
        }
        bytes.push(STOP);
        Built {
            bytes,
            out_of_band_buffers: 0,
        }
    })
}

/// What protocols 4 and 5 write for a payload of 64 KiB or more: the frame ends
/// after BINBYTES and its length, the payload follows unframed, and a new frame holds
/// the rest.
fn protocol4_large_payload_outside_frames() -> impl Strategy<Value = Built> {
    (vec(any::<u8>(), 0..600), any::<bool>()).prop_map(|(payload, next_buffer)| {
        let mut head = vec![b']', MEMOIZE, b'(', b'B'];
        head.extend((payload.len() as u32).to_le_bytes());
        let mut tail = vec![MEMOIZE];
        if next_buffer {
            tail.push(NEXT_BUFFER);
        }
        tail.extend([b'e', STOP]);
        let mut bytes = vec![PROTO, 5];
        bytes.extend(frame_header(head.len()));
        bytes.extend(head);
        bytes.extend(payload);
        bytes.extend(frame_header(tail.len()));
        bytes.extend(tail);
        Built {
            bytes,
            out_of_band_buffers: usize::from(next_buffer),
        }
    })
}

fn hand_built() -> impl Strategy<Value = Built> {
    prop_oneof![
        4 => opcode_sequence(),
        1 => protocol4_short_str(),
        1 => protocol0_int_list(),
        1 => protocol4_large_payload_outside_frames(),
    ]
}

/// A source that returns at most `max` bytes per `read`, and `extra` bytes more than
/// asked for when it can: short reads, as from a raw pipe, and over-long ones, as
/// from a misbehaving file object.
struct Uneven<'a> {
    data: &'a [u8],
    max: usize,
    extra: usize,
}

impl Source for Uneven<'_> {
    type Error = std::convert::Infallible;
    fn read(&mut self, n: usize, out: &mut Vec<u8>) -> Result<usize, Self::Error> {
        let n = n
            .saturating_add(self.extra)
            .min(self.max)
            .min(self.data.len());
        out.extend_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
    fn read_line(&mut self, out: &mut Vec<u8>) -> Result<usize, Self::Error> {
        self.data.read_line(out)
    }
}

/// Checks that hold for any input: no panic, the slice and stream readers agree,
/// the stream reader consumes exactly the pickle, and the verdict depends only on
/// the bytes through STOP.
fn check_any(data: &[u8]) -> Result<(), TestCaseError> {
    let expected = delimit(data);
    // Skipping runs of plain opcodes at once decides as stepping through each.
    prop_assert_eq!(&delimit_stepwise(data), &expected);

    let mut rest = data;
    let mut buf = Vec::new();
    let streamed = read_one_into(&mut rest, &mut buf);
    prop_assert_eq!(&streamed, &expected);
    let consumed = data.len() - rest.len();
    match expected {
        Ok(extent) => {
            prop_assert_eq!(consumed, extent.len);
            prop_assert_eq!(&buf[..], &data[..extent.len]);
            prop_assert_eq!(data[extent.len - 1], STOP);
            prop_assert_eq!(delimit(&data[..extent.len]), Ok(extent));
            prop_assert!(delimit(&data[..extent.len - 1]).is_err());
        }
        // On error the buffer holds every byte read.
        Err(_) => prop_assert_eq!(&buf[..], &data[..consumed]),
    }

    for (max, extra) in [(1, 0), (3, 0), (usize::MAX, 1), (usize::MAX, 9), (2, 5)] {
        let mut source = Uneven { data, max, extra };
        let mut buf = Vec::new();
        let result = read_one_into(&mut source, &mut buf);
        if max == usize::MAX {
            // Over-long reads change nothing.
            prop_assert_eq!(&result, &expected, "max {} extra {}", max, extra);
        } else if result != expected {
            // A short read ends the input, as the C unpickler takes it: the same
            // verdict, or the pickle is cut off there; never another pickle.
            prop_assert_eq!(
                &result,
                &Err(ReadError::Truncated),
                "max {} extra {}",
                max,
                extra
            );
        }
        if let Ok(extent) = result {
            prop_assert_eq!(&buf[..], &data[..extent.len]);
        }
    }
    Ok(())
}

fn mutate(mut data: Vec<u8>, edits: &[(u8, Index, u8)]) -> Vec<u8> {
    for &(kind, index, value) in edits {
        match kind % 4 {
            0 => data.insert(index.index(data.len() + 1), value),
            _ if data.is_empty() => {}
            1 => {
                let at = index.index(data.len());
                data[at] ^= value | 1;
            }
            2 => {
                data.remove(index.index(data.len()));
            }
            _ => {
                let at = index.index(data.len());
                data[at] = value;
            }
        }
    }
    data
}

/// Bytes that mean something to the reader, for mutations.
fn meaningful_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        any::<u8>(),
        select(vec![STOP, b'\n', b'(', FRAME, PROTO, 0x00, 0xff, 0x96])
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(data in vec(any::<u8>(), 0..512)) {
        check_any(&data)?;
    }

    #[test]
    fn random_bytes_after_a_header_never_panic(
        header in select(vec![
            vec![PROTO, 2],
            vec![PROTO, 4],
            [vec![PROTO, 5], frame_header(32)].concat(),
        ]),
        data in vec(any::<u8>(), 0..512),
    ) {
        check_any(&[header, data].concat())?;
    }

    #[test]
    fn hand_built_pickles_are_delimited_exactly(
        built in hand_built(),
        trailing in vec(any::<u8>(), 0..64),
    ) {
        let data = [built.bytes.as_slice(), &trailing].concat();
        let found = delimit(&data).map(|e| (e.len, e.out_of_band_buffers));
        prop_assert_eq!(found, Ok(built.extent()));

        let mut rest: &[u8] = &data;
        let (bytes, extent) = read_one(&mut rest).expect("a hand-built pickle");
        prop_assert_eq!((extent.len, extent.out_of_band_buffers), built.extent());
        prop_assert_eq!(&bytes, &built.bytes);
        prop_assert_eq!(rest, &trailing[..]);

        // Every proper prefix is incomplete.
        let len = built.bytes.len();
        prop_assert_eq!(delimit(&data[..0]), Err(ReadError::Empty));
        for k in [len / 2, len - 1] {
            prop_assert!(delimit(&data[..k]).is_err(), "prefix of {} bytes", k);
        }
        check_any(&data)?;
    }

    #[test]
    fn mutated_pickles_never_panic(
        built in hand_built(),
        trailing in vec(any::<u8>(), 0..16),
        edits in vec((any::<u8>(), any::<Index>(), meaningful_byte()), 1..5),
    ) {
        let data = mutate([built.bytes, trailing].concat(), &edits);
        check_any(&data)?;
    }
}
