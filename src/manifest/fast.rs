//! A fast reader for the shape of TOML that manifests have: `version = 1`, then
//! `[[pickle]]`, `[[artifact]]` and `[[channel]]` tables of plain strings and
//! arrays of plain strings, with comments and blank lines between them.
//!
//! It exists for start-up: the toml crate takes 20 to 40 ms over a 10,000-entry
//! manifest, this reader about a tenth of that. It accepts only a strict subset of
//! TOML and gives up (`None`) on anything outside it: another key, a quoted or
//! dotted key, a string with an escape, a literal or multi-line string, an inline
//! table, a control character, a duplicate key, a missing required key. The
//! caller then parses the text with the toml crate, which reads what this reader
//! does not and says what is wrong where. So this reader never decides whether a
//! manifest is valid; it only reads, faster, the manifests that certainly are, and
//! gives the same values and positions the toml crate would (tests compare the
//! two on mutated manifests).

use super::{RawChannel, RawEntry, RawManifest};
use std::borrow::Cow;
use std::ops::Range;
use toml::Spanned;

/// The table being filled.
enum Table<'t> {
    Root,
    Pickle(usize, RawEntry<'t>),
    Artifact(usize, RawEntry<'t>),
    Channel(PartialChannel),
}

#[derive(Default)]
struct PartialChannel {
    name: Option<Spanned<String>>,
    callers: Option<Spanned<Vec<Spanned<String>>>>,
    called_from: Option<Spanned<Vec<Spanned<String>>>>,
    note: Option<String>,
}

struct Reader<'t> {
    text: &'t str,
    bytes: &'t [u8],
    pos: usize,
}

/// Set `slot` once; a second value for the same key is outside the subset.
fn set_once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

impl<'t> Reader<'t> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// A newline (`\n` or `\r\n`) at the cursor, consumed.
    fn newline(&mut self) -> Option<()> {
        match self.peek()? {
            b'\n' => self.pos += 1,
            b'\r' if self.bytes.get(self.pos + 1) == Some(&b'\n') => self.pos += 2,
            _ => return None,
        }
        Some(())
    }

    /// A comment from its `#` up to (not including) the end of its line.
    fn comment(&mut self) -> Option<()> {
        debug_assert_eq!(self.peek(), Some(b'#'));
        self.pos += 1;
        while let Some(b) = self.peek() {
            match b {
                b'\n' => break,
                b'\r' if self.bytes.get(self.pos + 1) == Some(&b'\n') => break,
                b'\t' => {}
                0..=0x1f | 0x7f => return None,
                _ => {}
            }
            self.pos += 1;
        }
        Some(())
    }

    /// The rest of a line after a header or a value: blanks, maybe a comment, then
    /// a newline or the end of the text.
    fn end_of_line(&mut self) -> Option<()> {
        self.skip_blanks();
        if self.peek() == Some(b'#') {
            self.comment()?;
        }
        match self.peek() {
            None => Some(()),
            Some(_) => self.newline(),
        }
    }

    /// A bare key of lowercase letters, digits and `_`, then `=` and blanks.
    fn key(&mut self) -> Option<&'t str> {
        let start = self.pos;
        while matches!(self.peek(), Some(b'a'..=b'z' | b'0'..=b'9' | b'_')) {
            self.pos += 1;
        }
        let key = &self.text[start..self.pos];
        self.skip_blanks();
        if key.is_empty() || self.peek() != Some(b'=') {
            return None;
        }
        self.pos += 1;
        self.skip_blanks();
        Some(key)
    }

    /// A basic string without escapes; its span includes the quotes, as the toml
    /// crate's does.
    fn string(&mut self) -> Option<Spanned<String>> {
        let lent = self.lent_string()?;
        let span = lent.span();
        Some(Spanned::new(span, lent.into_inner().into_owned()))
    }

    /// [`Reader::string`], lent from the text.
    fn lent_string(&mut self) -> Option<Spanned<Cow<'t, str>>> {
        let start = self.pos;
        if self.peek() != Some(b'"') {
            return None;
        }
        self.pos += 1;
        let rest = &self.bytes[self.pos..];
        let end = memchr::memchr2(b'"', b'\\', rest)?;
        let body = &rest[..end];
        // A control character other than tab must be escaped; so must a line break.
        // (A fold, not `any`, so that the loop is vectorized.)
        let control = body.iter().fold(false, |found, &b| {
            found | ((b < 0x20) & (b != b'\t')) | (b == 0x7f)
        });
        if rest[end] == b'\\' || control {
            return None;
        }
        self.pos += end;
        let value = Cow::Borrowed(&self.text[start + 1..self.pos]);
        self.pos += 1;
        Some(Spanned::new(start..self.pos, value))
    }

    /// A decimal integer without sign, underscores or leading zeros.
    fn integer(&mut self) -> Option<Spanned<i64>> {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        let digits = &self.text[start..self.pos];
        if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
            return None;
        }
        Some(Spanned::new(start..self.pos, digits.parse().ok()?))
    }

    /// Blanks, newlines and comments between the items of an array.
    fn skip_array_space(&mut self) -> Option<()> {
        loop {
            match self.peek()? {
                b' ' | b'\t' => self.pos += 1,
                b'\n' | b'\r' => self.newline()?,
                b'#' => self.comment()?,
                _ => return Some(()),
            }
        }
    }

    /// An array of basic strings, on one line or several, a trailing comma allowed.
    fn strings(&mut self) -> Option<Spanned<Vec<Spanned<String>>>> {
        let lent = self.lent_strings()?;
        let span = lent.span();
        let owned = lent.into_inner().into_iter().map(|item| {
            let span = item.span();
            Spanned::new(span, item.into_inner().into_owned())
        });
        Some(Spanned::new(span, owned.collect()))
    }

    /// [`Reader::strings`], lent from the text.
    fn lent_strings(&mut self) -> Option<Spanned<Vec<Spanned<Cow<'t, str>>>>> {
        let start = self.pos;
        if self.peek() != Some(b'[') {
            return None;
        }
        self.pos += 1;
        let mut items = Vec::new();
        loop {
            self.skip_array_space()?;
            if self.peek()? == b']' {
                break;
            }
            items.push(self.lent_string()?);
            self.skip_array_space()?;
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => break,
                _ => return None,
            }
        }
        self.pos += 1;
        Some(Spanned::new(start..self.pos, items))
    }

    /// A `[[name]]` header at the cursor.
    fn header(&mut self) -> Option<&'t str> {
        let rest = &self.text[self.pos..];
        for name in ["pickle", "artifact", "channel"] {
            let header_len = name.len() + 4;
            if rest.len() >= header_len
                && rest.as_bytes()[..2] == *b"[["
                && rest[2..].starts_with(name)
                && rest.as_bytes()[name.len() + 2..header_len] == *b"]]"
            {
                self.pos += header_len;
                return Some(name);
            }
        }
        None
    }

    fn entry_value(&mut self, entry: &mut RawEntry<'t>, key: &str) -> Option<()> {
        match key {
            "sha256" => set_once(&mut entry.sha256, self.lent_string()?),
            "blake3" => set_once(&mut entry.blake3, self.lent_string()?),
            "stack" => set_once(&mut entry.stack, self.lent_strings()?.into_inner()),
            "note" => set_once(&mut entry.note, self.string()?.into_inner()),
            "source" => set_once(&mut entry.source, self.string()?.into_inner()),
            _ => None,
        }
    }

    fn channel_value(&mut self, channel: &mut PartialChannel, key: &str) -> Option<()> {
        match key {
            "name" => set_once(&mut channel.name, self.string()?),
            "callers" => set_once(&mut channel.callers, self.strings()?),
            "called_from" => set_once(&mut channel.called_from, self.strings()?),
            "note" => set_once(&mut channel.note, self.string()?.into_inner()),
            _ => None,
        }
    }
}

fn empty_entry<'t>() -> RawEntry<'t> {
    RawEntry {
        sha256: None,
        blake3: None,
        stack: None,
        note: None,
        source: None,
    }
}

/// Read `text` if it has the manifest's plain shape; `None` if anything in it is
/// outside that subset of TOML (then parse it with the toml crate).
/// How many `[[pickle]]` and `[[artifact]]` headers `bytes` holds, to size the
/// tables (a count, not a parse: a header inside a comment counts too).
fn count_headers(bytes: &[u8]) -> (usize, usize) {
    let (mut pickles, mut artifacts) = (0, 0);
    for at in memchr::memchr_iter(b'[', bytes) {
        let rest = &bytes[at..];
        pickles += usize::from(rest.starts_with(b"[[pickle]]"));
        artifacts += usize::from(rest.starts_with(b"[[artifact]]"));
    }
    (pickles, artifacts)
}

pub(super) fn parse(text: &str) -> Option<RawManifest<'_>> {
    let mut reader = Reader {
        text,
        bytes: text.as_bytes(),
        pos: 0,
    };
    // Sized up front: growing them would copy every entry read so far, each time.
    let (pickles, artifacts) = count_headers(text.as_bytes());
    let mut manifest = RawManifest {
        version: None,
        pickle: Vec::with_capacity(pickles),
        artifact: Vec::with_capacity(artifacts),
        channel: Vec::new(),
    };
    let mut table = Table::Root;
    loop {
        reader.skip_blanks();
        let Some(b) = reader.peek() else { break };
        match b {
            b'\n' | b'\r' => reader.newline()?,
            b'#' => {
                reader.comment()?;
                reader.end_of_line()?;
            }
            b'[' => {
                let start = reader.pos;
                let name = reader.header()?;
                reader.end_of_line()?;
                finish(&mut manifest, table, start)?;
                table = match name {
                    "pickle" => Table::Pickle(start, empty_entry()),
                    "artifact" => Table::Artifact(start, empty_entry()),
                    _ => Table::Channel(PartialChannel::default()),
                };
            }
            _ => {
                let key = reader.key()?;
                match &mut table {
                    Table::Root if key == "version" => {
                        set_once(&mut manifest.version, reader.integer()?)?
                    }
                    Table::Root => return None,
                    Table::Pickle(_, entry) | Table::Artifact(_, entry) => {
                        reader.entry_value(entry, key)?
                    }
                    Table::Channel(channel) => reader.channel_value(channel, key)?,
                }
                reader.end_of_line()?;
            }
        }
    }
    finish(&mut manifest, table, text.len())?;
    Some(manifest)
}

/// Add the table just read, which ends where the next one starts, to `manifest`.
fn finish<'t>(manifest: &mut RawManifest<'t>, table: Table<'t>, end: usize) -> Option<()> {
    let span = |start: usize| -> Range<usize> { start..end };
    match table {
        Table::Root => {}
        Table::Pickle(start, entry) => manifest.pickle.push(Spanned::new(span(start), entry)),
        Table::Artifact(start, entry) => manifest.artifact.push(Spanned::new(span(start), entry)),
        Table::Channel(channel) => manifest.channel.push(RawChannel {
            name: channel.name?,
            callers: channel.callers?,
            called_from: channel.called_from,
            note: channel.note,
        }),
    }
    Some(())
}
