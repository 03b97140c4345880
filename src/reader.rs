//! Finds where exactly one pickle ends, reading no further and executing nothing.
//!
//! The reader walks opcodes and their arguments only. It follows the framing rules
//! of CPython's pure-Python unpickler (`pickle._Unframer`): a read that starts inside
//! a frame must end inside it, and a new frame may only start where the last one
//! ended. It is stricter than the C unpickler in one place: a frame that extends past
//! STOP is rejected, because the bytes after STOP would be verified with this pickle
//! but could be consumed by the next `load()` on the same Unpickler.

use std::fmt;

/// Opcodes of pickle protocols 0 to 5, named as in `pickletools`.
pub mod op {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const FLOAT: u8 = b'F';
    pub const INT: u8 = b'I';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const LONG: u8 = b'L';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const PERSID: u8 = b'P';
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const STRING: u8 = b'S';
    pub const BINSTRING: u8 = b'T';
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const UNICODE: u8 = b'V';
    pub const BINUNICODE: u8 = b'X';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const DICT: u8 = b'd';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const GET: u8 = b'g';
    pub const BINGET: u8 = b'h';
    pub const INST: u8 = b'i';
    pub const LONG_BINGET: u8 = b'j';
    pub const LIST: u8 = b'l';
    pub const EMPTY_LIST: u8 = b']';
    pub const OBJ: u8 = b'o';
    pub const PUT: u8 = b'p';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    pub const BINFLOAT: u8 = b'G';
    pub const PROTO: u8 = 0x80;
    pub const NEWOBJ: u8 = 0x81;
    pub const EXT1: u8 = 0x82;
    pub const EXT2: u8 = 0x83;
    pub const EXT4: u8 = 0x84;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINBYTES8: u8 = 0x8e;
    pub const EMPTY_SET: u8 = 0x8f;
    pub const ADDITEMS: u8 = 0x90;
    pub const FROZENSET: u8 = 0x91;
    pub const NEWOBJ_EX: u8 = 0x92;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;
    pub const BYTEARRAY8: u8 = 0x96;
    pub const NEXT_BUFFER: u8 = 0x97;
    pub const READONLY_BUFFER: u8 = 0x98;
}

/// How an opcode's argument is laid out after the opcode byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgLayout {
    None,
    Fixed(usize),
    /// One newline-terminated line.
    Line,
    /// Two newline-terminated lines (GLOBAL, INST).
    TwoLines,
    /// A little-endian length of `width` bytes, then that many bytes.
    Counted {
        width: usize,
        signed: bool,
    },
}

/// The argument layout of `code`, or `None` for a byte that is no opcode.
pub const fn arg_layout(code: u8) -> Option<ArgLayout> {
    use op::*;
    use ArgLayout::*;
    Some(match code {
        MARK | STOP | POP | POP_MARK | DUP | NONE | BINPERSID | REDUCE | APPEND | BUILD | DICT
        | EMPTY_DICT | APPENDS | LIST | EMPTY_LIST | OBJ | SETITEM | TUPLE | EMPTY_TUPLE
        | SETITEMS | NEWOBJ | TUPLE1 | TUPLE2 | TUPLE3 | NEWTRUE | NEWFALSE | EMPTY_SET
        | ADDITEMS | FROZENSET | NEWOBJ_EX | STACK_GLOBAL | MEMOIZE | NEXT_BUFFER
        | READONLY_BUFFER => None,
        BININT1 | BINGET | BINPUT | PROTO | EXT1 => Fixed(1),
        BININT2 | EXT2 => Fixed(2),
        BININT | LONG_BINGET | LONG_BINPUT | EXT4 => Fixed(4),
        BINFLOAT => Fixed(8),
        FRAME => Fixed(8),
        FLOAT | INT | LONG | PERSID | STRING | UNICODE | GET | PUT => Line,
        GLOBAL | INST => TwoLines,
        SHORT_BINSTRING | SHORT_BINBYTES | SHORT_BINUNICODE | LONG1 => Counted {
            width: 1,
            signed: false,
        },
        BINUNICODE | BINBYTES => Counted {
            width: 4,
            signed: false,
        },
        BINSTRING | LONG4 => Counted {
            width: 4,
            signed: true,
        },
        BINUNICODE8 | BINBYTES8 | BYTEARRAY8 => Counted {
            width: 8,
            signed: false,
        },
        _ => return Option::None,
    })
}

/// The end of a counted argument (its length prefix of `width` bytes, then that
/// many bytes) of the opcode at `pos`, if the prefix lies before `limit` and is
/// not negative where it is signed; checked against `limit` by the caller.
#[inline]
fn counted_end(data: &[u8], pos: usize, width: usize, limit: usize, signed: bool) -> Option<usize> {
    let start = pos + 1 + width;
    if start > limit {
        return None;
    }
    let mut bytes = [0u8; 8];
    bytes[..width].copy_from_slice(&data[pos + 1..start]);
    let len = u64::from_le_bytes(bytes);
    // A negative signed length is the general step's error to report.
    if signed && (len as u32 as i32) < 0 {
        return None;
    }
    start.checked_add(usize::try_from(len).ok()?)
}

// How `skip_plain_opcodes` steps over each opcode, from `arg_layout`: the kind,
// the argument's width in bytes (a fixed argument's, or a counted one's length
// prefix), and flags.
// An opcode left to the general step has 0.
const STEP_FIXED: u16 = 1 << 4;
const STEP_COUNTED: u16 = 1 << 5;
const STEP_WIDTH: u16 = 0b1111;
const STEP_SIGNED: u16 = 1 << 6;
const STEP_GLOBAL: u16 = 1 << 7;
const STEP_BUFFER: u16 = 1 << 8;

const PLAIN_STEP: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut code = 0usize;
    while code < 256 {
        table[code] = plain_step(code as u8);
        code += 1;
    }
    table
};

const fn plain_step(code: u8) -> u16 {
    let flags = match code {
        op::STACK_GLOBAL | op::EXT1 | op::EXT2 | op::EXT4 => STEP_GLOBAL,
        op::NEXT_BUFFER => STEP_BUFFER,
        _ => 0,
    };
    // FRAME and STOP change the scan's state: always the general step's.
    if code == op::FRAME || code == op::STOP {
        return 0;
    }
    flags
        | match arg_layout(code) {
            Some(ArgLayout::None) => STEP_FIXED,
            Some(ArgLayout::Fixed(n)) => STEP_FIXED | n as u16,
            Some(ArgLayout::Counted { width, signed }) => {
                STEP_COUNTED | width as u16 | if signed { STEP_SIGNED } else { 0 }
            }
            Some(ArgLayout::Line) | Some(ArgLayout::TwoLines) | None => return 0,
        }
}

/// Why a pickle could not be delimited. Messages follow CPython's where it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError<E> {
    /// The input ended before the first opcode (`EOFError` in CPython).
    Empty,
    /// The input ended where an opcode should start (`EOFError` in CPython too).
    EndAtOpcode,
    /// The input ended inside the pickle.
    Truncated,
    InvalidOpcode(u8),
    /// A signed length prefix was negative.
    NegativeLength(u8),
    /// A length prefix exceeds what the platform can address (`OverflowError`).
    TooLarge(u8),
    /// A read started inside a frame but did not end inside it.
    FrameExhausted,
    /// A FRAME opcode appeared before the current frame was used up.
    FrameOverlap,
    /// The frame holding STOP has bytes after it.
    FramePastStop,
    /// The underlying stream failed.
    Source(E),
}

impl<E> ReadError<E> {
    /// Whether CPython raises `EOFError` (rather than `UnpicklingError`) for this.
    pub fn is_eof(&self) -> bool {
        matches!(self, ReadError::Empty | ReadError::EndAtOpcode)
    }

    /// Whether CPython raises `OverflowError` for this.
    pub fn is_overflow(&self) -> bool {
        matches!(self, ReadError::TooLarge(_))
    }

    pub fn map_source<F, E2>(self, f: F) -> ReadError<E2>
    where
        F: FnOnce(E) -> E2,
    {
        match self {
            ReadError::Empty => ReadError::Empty,
            ReadError::EndAtOpcode => ReadError::EndAtOpcode,
            ReadError::Truncated => ReadError::Truncated,
            ReadError::InvalidOpcode(c) => ReadError::InvalidOpcode(c),
            ReadError::NegativeLength(c) => ReadError::NegativeLength(c),
            ReadError::TooLarge(c) => ReadError::TooLarge(c),
            ReadError::FrameExhausted => ReadError::FrameExhausted,
            ReadError::FrameOverlap => ReadError::FrameOverlap,
            ReadError::FramePastStop => ReadError::FramePastStop,
            ReadError::Source(e) => ReadError::Source(f(e)),
        }
    }
}

fn counted_name(code: u8) -> &'static str {
    match code {
        op::BINSTRING => "BINSTRING",
        op::LONG4 => "LONG",
        op::BINUNICODE8 => "BINUNICODE",
        op::BINBYTES8 => "BINBYTES",
        op::BYTEARRAY8 => "BYTEARRAY8",
        op::FRAME => "FRAME",
        _ => "opcode",
    }
}

impl<E: fmt::Display> fmt::Display for ReadError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Empty | ReadError::EndAtOpcode => f.write_str("Ran out of input"),
            ReadError::Truncated => f.write_str("pickle data was truncated"),
            ReadError::InvalidOpcode(c) if c.is_ascii_graphic() || *c == b' ' => {
                write!(f, "invalid load key, '{}'.", *c as char)
            }
            ReadError::InvalidOpcode(c) => write!(f, "invalid load key, '\\x{c:02x}'."),
            ReadError::NegativeLength(c) => {
                write!(f, "{} pickle has negative byte count", counted_name(*c))
            }
            ReadError::TooLarge(c) => write!(
                f,
                "{} exceeds system's maximum size of {} bytes",
                counted_name(*c),
                isize::MAX
            ),
            ReadError::FrameExhausted => f.write_str("pickle exhausted before end of frame"),
            ReadError::FrameOverlap => {
                f.write_str("beginning of a new frame before end of current frame")
            }
            ReadError::FramePastStop => f.write_str(
                "pickle frame extends past STOP; the bytes after STOP would run unverified",
            ),
            ReadError::Source(e) => write!(f, "{e}"),
        }
    }
}

/// What the reader learned about one pickle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Bytes from the start of the pickle through STOP (and through its frame).
    pub len: usize,
    /// How many NEXT_BUFFER opcodes the pickle holds: out-of-band buffers it consumes.
    pub out_of_band_buffers: usize,
    /// Whether it names any global (GLOBAL, INST, STACK_GLOBAL, EXT1/2/4). Without
    /// one, a pickle can build only literals and containers, and call nothing.
    pub uses_globals: bool,
}

/// A byte stream read the way the C unpickler reads a file without `peek`:
/// `read(n)` for counted data and `readline()` for line arguments, so nothing past
/// the pickle is ever consumed.
pub trait Source {
    type Error;
    /// Append up to `n` bytes to `out`; fewer only at the end of the stream.
    fn read(&mut self, n: usize, out: &mut Vec<u8>) -> Result<usize, Self::Error>;
    /// Append bytes through the next newline, or to the end of the stream.
    fn read_line(&mut self, out: &mut Vec<u8>) -> Result<usize, Self::Error>;
}

/// Largest single request made to a [`Source`], so a lying length prefix is refused
/// at end of stream instead of allocating what it claims.
const READ_CHUNK: usize = 1 << 24;

/// Where the scanner gets bytes: a complete slice, or a stream read on demand.
trait Input {
    type Error;
    fn data(&self) -> &[u8];
    /// Make `data()[pos..pos + n]` available. `Ok(false)` at end of input.
    fn ensure(&mut self, pos: usize, n: usize) -> Result<bool, Self::Error>;
    /// Make a line starting at `pos` available; returns the index just past its
    /// newline, or `None` at end of input.
    fn ensure_line(
        &mut self,
        pos: usize,
        limit: Option<usize>,
    ) -> Result<Option<usize>, Self::Error>;
}

fn find_newline(data: &[u8], from: usize, to: usize) -> Option<usize> {
    data[from..to]
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| from + i + 1)
}

struct SliceInput<'a>(&'a [u8]);

impl Input for SliceInput<'_> {
    type Error = std::convert::Infallible;
    fn data(&self) -> &[u8] {
        self.0
    }
    fn ensure(&mut self, pos: usize, n: usize) -> Result<bool, Self::Error> {
        Ok(pos.checked_add(n).is_some_and(|end| end <= self.0.len()))
    }
    fn ensure_line(
        &mut self,
        pos: usize,
        limit: Option<usize>,
    ) -> Result<Option<usize>, Self::Error> {
        let to = limit.unwrap_or(self.0.len()).min(self.0.len());
        Ok(find_newline(self.0, pos, to))
    }
}

struct StreamInput<'s, S: Source> {
    source: &'s mut S,
    buf: Vec<u8>,
}

impl<S: Source> Input for StreamInput<'_, S> {
    type Error = S::Error;
    fn data(&self) -> &[u8] {
        &self.buf
    }
    fn ensure(&mut self, pos: usize, n: usize) -> Result<bool, S::Error> {
        let Some(end) = pos.checked_add(n) else {
            return Ok(false);
        };
        while self.buf.len() < end {
            let want = (end - self.buf.len()).min(READ_CHUNK);
            self.buf.reserve(want);
            // A short read ends the input, as the C unpickler takes it ("pickle data
            // was truncated"): asking again could wait on a stream forever.
            if self.source.read(want, &mut self.buf)? < want {
                return Ok(false);
            }
        }
        Ok(true)
    }
    fn ensure_line(&mut self, pos: usize, limit: Option<usize>) -> Result<Option<usize>, S::Error> {
        if let Some(limit) = limit {
            // Inside a frame every byte is buffered already.
            let to = limit.min(self.buf.len());
            return Ok(find_newline(&self.buf, pos.min(to), to));
        }
        if let Some(end) = find_newline(&self.buf, pos.min(self.buf.len()), self.buf.len()) {
            return Ok(Some(end));
        }
        let before = self.buf.len();
        self.source.read_line(&mut self.buf)?;
        Ok(find_newline(&self.buf, before, self.buf.len()))
    }
}

/// The framing state of the scan: where the current frame ends, if inside one.
struct Scanner<I> {
    input: I,
    pos: usize,
    frame_end: Option<usize>,
    /// Step over runs of plain opcodes at once (always, but in the test that
    /// compares it with the general step alone).
    skip_plain: bool,
}

impl<I: Input> Scanner<I> {
    /// One primitive read of `n` bytes, subject to the framing rules.
    fn take(&mut self, n: usize) -> Result<usize, ReadError<I::Error>> {
        self.leave_finished_frame();
        if let Some(frame_end) = self.frame_end {
            if self.pos.checked_add(n).is_none_or(|end| end > frame_end) {
                return Err(ReadError::FrameExhausted);
            }
        }
        if !self.input.ensure(self.pos, n).map_err(ReadError::Source)? {
            return Err(ReadError::Truncated);
        }
        let start = self.pos;
        self.pos += n;
        Ok(start)
    }

    fn take_line(&mut self) -> Result<(), ReadError<I::Error>> {
        self.leave_finished_frame();
        match self
            .input
            .ensure_line(self.pos, self.frame_end)
            .map_err(ReadError::Source)?
        {
            Some(end) => {
                self.pos = end;
                Ok(())
            }
            None if self.frame_end.is_some() => Err(ReadError::FrameExhausted),
            None => Err(ReadError::Truncated),
        }
    }

    fn leave_finished_frame(&mut self) {
        if self.frame_end == Some(self.pos) {
            self.frame_end = None;
        }
    }

    fn length(
        &mut self,
        code: u8,
        width: usize,
        signed: bool,
    ) -> Result<usize, ReadError<I::Error>> {
        let at = self.take(width)?;
        let mut raw = [0u8; 8];
        raw[..width].copy_from_slice(&self.input.data()[at..at + width]);
        let value = u64::from_le_bytes(raw);
        if signed && width == 4 && (value as u32 as i32) < 0 {
            return Err(ReadError::NegativeLength(code));
        }
        usize::try_from(value)
            .ok()
            .filter(|&len| len <= isize::MAX as usize)
            .ok_or(ReadError::TooLarge(code))
    }

    fn scan(&mut self) -> Result<Extent, ReadError<I::Error>> {
        let mut out_of_band_buffers = 0usize;
        let mut uses_globals = false;
        if !self.input.ensure(0, 1).map_err(ReadError::Source)? {
            return Err(ReadError::Empty);
        }
        loop {
            if self.skip_plain {
                self.skip_plain_opcodes(&mut out_of_band_buffers, &mut uses_globals);
            }
            let at = match self.take(1) {
                Err(ReadError::Truncated) => return Err(ReadError::EndAtOpcode),
                other => other?,
            };
            let code = self.input.data()[at];
            let layout = arg_layout(code).ok_or(ReadError::InvalidOpcode(code))?;
            match layout {
                ArgLayout::None => {}
                ArgLayout::Fixed(n) => {
                    let arg = self.take(n)?;
                    if code == op::FRAME {
                        self.enter_frame(arg)?;
                    }
                }
                ArgLayout::Line => self.take_line()?,
                ArgLayout::TwoLines => {
                    self.take_line()?;
                    self.take_line()?;
                }
                ArgLayout::Counted { width, signed } => {
                    let len = self.length(code, width, signed)?;
                    self.take(len)?;
                }
            }
            match code {
                op::NEXT_BUFFER => out_of_band_buffers += 1,
                op::GLOBAL | op::INST | op::STACK_GLOBAL | op::EXT1 | op::EXT2 | op::EXT4 => {
                    uses_globals = true
                }
                op::STOP => {
                    if self.frame_end.is_some_and(|end| end > self.pos) {
                        return Err(ReadError::FramePastStop);
                    }
                    return Ok(Extent {
                        len: self.pos,
                        out_of_band_buffers,
                        uses_globals,
                    });
                }
                _ => {}
            }
        }
    }

    /// Step over the opcodes that lie whole in the bytes already at hand (and in
    /// the current frame), without reading more: the ones with no argument, a
    /// fixed one or a counted one, which make up nearly every framed pickle. It
    /// stops before anything else (FRAME, STOP, an argument on a line, an opcode
    /// that is unknown, cut off, too long or past its frame), which the general
    /// step then takes, reading or failing exactly as it would have here.
    #[inline]
    fn skip_plain_opcodes(&mut self, out_of_band_buffers: &mut usize, uses_globals: &mut bool) {
        let data = self.input.data();
        let mut pos = self.pos;
        loop {
            if self.frame_end == Some(pos) {
                self.frame_end = None;
            }
            let limit = self.frame_end.map_or(data.len(), |end| end.min(data.len()));
            while pos < limit {
                let step = PLAIN_STEP[data[pos] as usize];
                let width = (step & STEP_WIDTH) as usize;
                let end = if step & STEP_COUNTED == 0 {
                    if step == 0 {
                        self.pos = pos;
                        return;
                    }
                    pos + 1 + width
                } else {
                    match counted_end(data, pos, width, limit, step & STEP_SIGNED != 0) {
                        Some(end) => end,
                        None => break,
                    }
                };
                if end > limit {
                    break;
                }
                if step & (STEP_GLOBAL | STEP_BUFFER) != 0 {
                    if step & STEP_BUFFER != 0 {
                        *out_of_band_buffers += 1;
                    } else {
                        *uses_globals = true;
                    }
                }
                pos = end;
            }
            // Only the end of a frame lets the scan go on here.
            if self.frame_end != Some(pos) {
                break;
            }
        }
        self.pos = pos;
    }

    fn enter_frame(&mut self, len_at: usize) -> Result<(), ReadError<I::Error>> {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&self.input.data()[len_at..len_at + 8]);
        let len = usize::try_from(u64::from_le_bytes(raw))
            .ok()
            .filter(|&len| len <= isize::MAX as usize)
            .ok_or(ReadError::TooLarge(op::FRAME))?;
        if self.frame_end.is_some_and(|end| end > self.pos) {
            return Err(ReadError::FrameOverlap);
        }
        if !self
            .input
            .ensure(self.pos, len)
            .map_err(ReadError::Source)?
        {
            return Err(ReadError::Truncated);
        }
        self.frame_end = Some(self.pos + len);
        Ok(())
    }
}

/// Delimit the pickle at the start of `data`. Bytes after it are ignored, as
/// `pickle.loads` ignores them.
pub fn delimit(data: &[u8]) -> Result<Extent, ReadError<std::convert::Infallible>> {
    Scanner {
        input: SliceInput(data),
        pos: 0,
        frame_end: None,
        skip_plain: true,
    }
    .scan()
}

/// Whether `buffered`, bytes that begin at an opcode and that an unpickler read in
/// one call and keeps in its own buffer (one frame's body, or the opcode STOP
/// alone), end with the STOP of its pickle: scanned as one frame, STOP comes at
/// its very end. When it does not, the unpickler holds bytes past STOP, which
/// its next load would run first.
pub fn ends_at_stop(buffered: &[u8]) -> bool {
    Scanner {
        input: SliceInput(buffered),
        pos: 0,
        frame_end: Some(buffered.len()),
        skip_plain: true,
    }
    .scan()
    .is_ok_and(|extent| extent.len == buffered.len())
}

/// [`delimit`] taking every opcode through the general step: for the property
/// test that shows skipping runs of plain opcodes changes no verdict.
#[doc(hidden)]
pub fn delimit_stepwise(data: &[u8]) -> Result<Extent, ReadError<std::convert::Infallible>> {
    Scanner {
        input: SliceInput(data),
        pos: 0,
        frame_end: None,
        skip_plain: false,
    }
    .scan()
}

/// The length of the first frame of a framed pickle (protocol 4 and later), from
/// the pickle's first bytes: `PROTO n`, then `FRAME` and its 8-byte length. `None`
/// for a pickle without one, or if `head` is too short to tell.
pub fn first_frame_len(head: &[u8]) -> Option<u64> {
    match head {
        [op::PROTO, protocol, op::FRAME, len @ ..] if *protocol >= 4 && len.len() >= 8 => {
            Some(u64::from_le_bytes(len[..8].try_into().ok()?))
        }
        _ => None,
    }
}

/// Read exactly one pickle from `source` and return its bytes.
pub fn read_one<S: Source>(source: &mut S) -> Result<(Vec<u8>, Extent), ReadError<S::Error>> {
    let mut buf = Vec::new();
    let extent = read_one_into(source, &mut buf)?;
    Ok((buf, extent))
}

/// As [`read_one`], into `buf` (cleared first). On error `buf` holds every byte that
/// was read, so the caller can explain the failure from them.
pub fn read_one_into<S: Source>(
    source: &mut S,
    buf: &mut Vec<u8>,
) -> Result<Extent, ReadError<S::Error>> {
    buf.clear();
    let mut scanner = Scanner {
        input: StreamInput {
            source,
            buf: std::mem::take(buf),
        },
        pos: 0,
        frame_end: None,
        skip_plain: true,
    };
    let result = scanner.scan();
    *buf = scanner.input.buf;
    let extent = result?;
    // A source that returned more than requested leaves bytes past STOP; they are
    // not part of this pickle.
    buf.truncate(extent.len);
    Ok(extent)
}

/// A [`Source`] over an in-memory slice, consumed from the front. Used by tests
/// and by callers that hold the whole stream.
impl Source for &[u8] {
    type Error = std::convert::Infallible;
    fn read(&mut self, n: usize, out: &mut Vec<u8>) -> Result<usize, Self::Error> {
        let n = n.min(self.len());
        out.extend_from_slice(&self[..n]);
        *self = &self[n..];
        Ok(n)
    }
    fn read_line(&mut self, out: &mut Vec<u8>) -> Result<usize, Self::Error> {
        let n = self
            .iter()
            .position(|&b| b == b'\n')
            .map_or(self.len(), |i| i + 1);
        out.extend_from_slice(&self[..n]);
        *self = &self[n..];
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len_of(data: &[u8]) -> usize {
        delimit(data).expect("valid pickle").len
    }

    #[test]
    fn first_frame_lengths() {
        let framed = b"\x80\x04\x95\x03\x00\x00\x00\x00\x00\x00\x00K\x01.";
        assert_eq!(first_frame_len(framed), Some(3));
        assert_eq!(len_of(framed), framed.len());
        assert_eq!(first_frame_len(&framed[..10]), None);
        assert_eq!(
            first_frame_len(b"\x80\x03\x95\x03\x00\x00\x00\x00\x00\x00\x00"),
            None
        );
        assert_eq!(first_frame_len(b"\x80\x04K\x01."), None);
        assert_eq!(first_frame_len(b""), None);
    }

    #[test]
    fn buffered_bytes_ending_at_stop() {
        // A frame's body whose STOP is its last byte, STOP alone, and a body with
        // opcodes past its STOP (a hidden tail), cut short, or empty.
        assert!(ends_at_stop(b"}\x94(K\x01K\x02u."));
        assert!(ends_at_stop(b"."));
        assert!(!ends_at_stop(b"N.N."));
        assert!(!ends_at_stop(b"N.cposix\nmkdir\n(V/x\ntR."));
        assert!(!ends_at_stop(b"K\x01"));
        assert!(!ends_at_stop(b"K"));
        assert!(!ends_at_stop(b""));
        // No frame may begin inside one.
        assert!(!ends_at_stop(b"\x95\x01\x00\x00\x00\x00\x00\x00\x00."));
    }

    #[test]
    fn protocol0_lines_and_globals() {
        let data = b"cos\nsystem\n(S'echo hi'\ntR.trailing";
        assert_eq!(len_of(data), data.len() - b"trailing".len());
    }

    #[test]
    fn counted_and_fixed_arguments() {
        // PROTO 2, BININT1 5, SHORT_BINBYTES 3 "abc", TUPLE2, STOP
        let data = b"\x80\x02K\x05C\x03abc\x86.";
        assert_eq!(len_of(data), data.len());
    }

    #[test]
    fn empty_and_truncated() {
        assert_eq!(delimit(b""), Err(ReadError::Empty));
        assert_eq!(delimit(b"\x80\x04K"), Err(ReadError::Truncated));
        // Like CPython: ending where an opcode should start is an EOFError.
        assert_eq!(delimit(b"\x80\x04K\x01"), Err(ReadError::EndAtOpcode));
        assert_eq!(delimit(b"S'abc"), Err(ReadError::Truncated));
        assert_eq!(delimit(b"X\xff\xff\xff\x00ab"), Err(ReadError::Truncated));
    }

    #[test]
    fn invalid_opcode_message_matches_cpython() {
        let err = delimit(b"\x00").unwrap_err();
        assert_eq!(err.to_string(), "invalid load key, '\\x00'.");
        let err = delimit(b"zzz").unwrap_err();
        assert_eq!(err.to_string(), "invalid load key, 'z'.");
    }

    #[test]
    fn negative_and_oversized_lengths() {
        assert_eq!(
            delimit(b"T\xff\xff\xff\xff"),
            Err(ReadError::NegativeLength(op::BINSTRING))
        );
        assert_eq!(
            delimit(b"\x8e\xff\xff\xff\xff\xff\xff\xff\xff"),
            Err(ReadError::TooLarge(op::BINBYTES8))
        );
    }

    #[test]
    fn frames_follow_the_unframer_rules() {
        // FRAME 3: K 1 . -- exactly the frame.
        assert_eq!(
            len_of(b"\x80\x04\x95\x03\x00\x00\x00\x00\x00\x00\x00K\x01."),
            14
        );
        // FRAME 2 holding "K\x01" then STOP outside it.
        assert_eq!(len_of(b"\x95\x02\x00\x00\x00\x00\x00\x00\x00K\x01."), 12);
        // A BININT whose argument straddles the frame end.
        assert_eq!(
            delimit(b"\x95\x02\x00\x00\x00\x00\x00\x00\x00J\x01\x00\x00\x00."),
            Err(ReadError::FrameExhausted)
        );
        // STOP inside a frame that goes on.
        assert_eq!(
            delimit(b"\x95\x03\x00\x00\x00\x00\x00\x00\x00N.N"),
            Err(ReadError::FramePastStop)
        );
        // A new frame before the current one is used up.
        assert_eq!(
            delimit(b"\x95\x0a\x00\x00\x00\x00\x00\x00\x00\x95\x00\x00\x00\x00\x00\x00\x00\x00N"),
            Err(ReadError::FrameOverlap)
        );
        // A frame longer than the data.
        assert_eq!(
            delimit(b"\x95\x09\x00\x00\x00\x00\x00\x00\x00N."),
            Err(ReadError::Truncated)
        );
    }

    #[test]
    fn notes_whether_globals_are_named() {
        assert!(!delimit(b"\x80\x04K\x01.").unwrap().uses_globals);
        assert!(delimit(b"cos\nsystem\n.").unwrap().uses_globals);
        assert!(
            delimit(b"\x80\x04\x8c\x01a\x8c\x01b\x93.")
                .unwrap()
                .uses_globals
        );
        assert!(delimit(b"\x80\x02\x82\x01.").unwrap().uses_globals);
    }

    #[test]
    fn counts_out_of_band_buffers() {
        let data = b"\x80\x05\x97\x97\x98\x86.";
        assert_eq!(delimit(data).unwrap().out_of_band_buffers, 2);
    }

    #[test]
    fn stream_reads_nothing_past_stop() {
        let data: &[u8] = b"\x80\x02K\x05.\x80\x02K\x06.";
        let mut source = data;
        let (first, _) = read_one(&mut source).unwrap();
        assert_eq!(first, b"\x80\x02K\x05.");
        assert_eq!(source, b"\x80\x02K\x06.");
        let (second, _) = read_one(&mut source).unwrap();
        assert_eq!(second, b"\x80\x02K\x06.");
        assert!(matches!(read_one(&mut source), Err(ReadError::Empty)));
    }

    #[test]
    fn stream_line_opcodes_use_readline() {
        let data: &[u8] = b"I42\n.rest";
        let mut source = data;
        let (bytes, _) = read_one(&mut source).unwrap();
        assert_eq!(bytes, b"I42\n.");
        assert_eq!(source, b"rest");
    }

    #[test]
    fn lying_length_fails_without_allocating_its_claim() {
        // Claims ~1 EiB of bytes; the stream ends after 3.
        let data: &[u8] = b"\x8e\x00\x00\x00\x00\x00\x00\x00\x0fabc";
        let mut source = data;
        assert!(matches!(read_one(&mut source), Err(ReadError::Truncated)));
    }
}
