//! A parser for Python literal syntax, as found in the McAuley 2014 Amazon meta files.
//!
//! Each line of a 2014 `meta_*.json.gz` file is the `repr` of a Python 2 dict, not JSON:
//! `{'asin': '0000031852', 'title': "Girls' Ballet Tutu", 'price': 3.17, 'categories': [['Toys']]}`.
//! This module parses that syntax properly (nothing is evaluated) into a [`serde_json::Value`]:
//!
//! - dicts become objects; string keys are kept, number keys become their decimal text,
//!   `True`/`False`/`None` keys become `"True"`/`"False"`/`"None"`; a later duplicate key wins;
//! - lists, tuples (`()`, `(x,)`, `(x, y)`) and sets (`{x, y}`) become arrays; `(x)` is just `x`;
//! - strings in `'`, `"`, `'''` or `"""` quotes with optional `u`, `b`, `r` prefixes (any case, any
//!   combination but `u` with `b`); adjacent literals are concatenated (`'a' "b"` is `"ab"`);
//! - escapes: `\\ \' \" \a \b \f \n \r \t \v`, octal `\ooo`, `\xNN`, `\uNNNN`, `\UNNNNNNNN` (not in
//!   `b` strings), backslash-newline (line continuation, removed); unknown escapes such as `\d` or
//!   `\N{...}` keep their backslash, as in Python; raw strings keep every backslash;
//! - ints (decimal, `0x`, `0o`, `0b`, `_` separators, a Python 2 `L` suffix; beyond 64 bits they
//!   become floats), floats (`1.5`, `.5`, `1.`, `1e-3`), unary `-`/`+`, `True`, `False`, `None`;
//! - whitespace (including newlines and backslash continuations) between tokens, trailing commas.
//!
//! Byte escapes and the Python 2 heritage: the 2014 files were written by Python 2, whose plain
//! `str` is a byte string, so non-ASCII text appears as escaped UTF-8 bytes (`'Caf\xc3\xa9'`). In
//! strings without a `u` prefix, `\xNN` and octal escapes are therefore collected as bytes; a run of
//! them that is valid UTF-8 is decoded as UTF-8, and any byte that is not is taken as the Latin-1
//! code point `U+00NN` (which is what Python 3 would give). In `u'...'` strings `\xNN` is always
//! the code point `U+00NN`. `\u` escapes forming a UTF-16 surrogate pair are combined into one
//! character; a lone surrogate becomes U+FFFD (a Rust string cannot hold it).
//!
//! Errors name the 1-based character column (and carry the byte offset) and say what was expected.
//! The parser works on bytes, allocates only the output, and has a nesting limit of
//! [`MAX_DEPTH`]. [`lookup`] finds one top-level key of a dict without building the other values
//! (the meta readers' fast path for `asin`).

use serde_json::{Map, Number, Value};

/// Deepest nesting of dicts, lists and tuples accepted.
pub const MAX_DEPTH: usize = 128;

/// A Python literal could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct PyLiteralError {
    /// Byte offset into the input where the problem is.
    pub offset: usize,
    /// 1-based character column of `offset`.
    pub column: usize,
    /// What was expected and what was found, e.g. "expected ':' after a dict key, found ','".
    pub message: String,
}

/// Parses one complete Python literal; only whitespace may follow it.
pub fn parse(input: &str) -> Result<Value, PyLiteralError> {
    let mut parser = Parser::new(input);
    parser.ws();
    let value = parser.value(true)?;
    parser.ws();
    if parser.pos < parser.bytes.len() {
        return Err(parser.expected("end of input after the value"));
    }
    Ok(value)
}

/// The value of `key` in the top-level dict literal `input`, without building the values of the
/// keys before it; the rest of the input after that value is not looked at. `Ok(None)` when the
/// dict has no such key. Errors when `input` is not a dict or is malformed up to the key.
pub fn lookup(input: &str, key: &str) -> Result<Option<Value>, PyLiteralError> {
    let mut parser = Parser::new(input);
    parser.ws();
    if parser.peek() != Some(b'{') {
        return Err(parser.expected("'{' (a dict)"));
    }
    parser.pos += 1;
    parser.ws();
    if parser.peek() == Some(b'}') {
        return Ok(None);
    }
    loop {
        let key_start = parser.pos;
        let found = parser.value(true)?;
        let found = parser.dict_key(found, key_start)?;
        parser.ws();
        if parser.peek() != Some(b':') {
            return Err(parser.expected("':' after a dict key"));
        }
        parser.pos += 1;
        parser.ws();
        if found == key {
            return parser.value(true).map(Some);
        }
        parser.value(false)?;
        parser.ws();
        match parser.peek() {
            Some(b',') => {
                parser.pos += 1;
                parser.ws();
                if parser.peek() == Some(b'}') {
                    return Ok(None);
                }
            }
            Some(b'}') => return Ok(None),
            _ => return Err(parser.expected("',' or '}' after a dict value")),
        }
    }
}

/// How a string literal's prefix letters make it behave.
#[derive(Clone, Copy)]
struct StrKind {
    raw: bool,
    /// `b'...'`: no `\u`/`\U` escapes.
    bytes: bool,
    /// `u'...'`: `\xNN` is a code point, not a byte.
    unicode: bool,
}

struct Parser<'a> {
    src: &'a str,
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
    /// Bytes from `\x`/octal escapes not yet decoded (see the module docs); reused across strings.
    pending: Vec<u8>,
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Self {
        Self {
            src,
            bytes: src.as_bytes(),
            pos: 0,
            depth: 0,
            pending: Vec::new(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<u8> {
        self.bytes.get(self.pos + ahead).copied()
    }

    /// Skips whitespace, newlines and backslash line continuations.
    fn ws(&mut self) {
        while let Some(b) = self.peek() {
            match b {
                b' ' | b'\t' | b'\n' | b'\r' | 0x0c => self.pos += 1,
                b'\\' if self.peek_at(1) == Some(b'\n') => self.pos += 2,
                b'\\' if self.peek_at(1) == Some(b'\r') => {
                    self.pos += 2;
                    if self.peek() == Some(b'\n') {
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn error_at(&self, offset: usize, message: String) -> PyLiteralError {
        let mut offset = offset.min(self.src.len());
        while !self.src.is_char_boundary(offset) {
            offset -= 1;
        }
        PyLiteralError {
            offset,
            column: self.src[..offset].chars().count() + 1,
            message,
        }
    }

    /// "expected X, found <what is at the current position>".
    fn expected(&self, what: &str) -> PyLiteralError {
        let found = self.describe_here();
        self.error_at(self.pos, format!("expected {what}, found {found}"))
    }

    fn describe_here(&self) -> String {
        let mut at = self.pos.min(self.src.len());
        while !self.src.is_char_boundary(at) {
            at -= 1;
        }
        match self.src[at..].chars().next() {
            None => "end of input".to_string(),
            Some(c) if c.is_alphabetic() || c == '_' => {
                let word: String = self.src[at..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .take(20)
                    .collect();
                format!("`{word}`")
            }
            Some(c) => format!("{c:?}"),
        }
    }

    /// Parses a value at the current position (whitespace already skipped). With `build` false the
    /// value is checked for syntax and skipped, and `Value::Null` is returned.
    fn value(&mut self, build: bool) -> Result<Value, PyLiteralError> {
        match self.peek() {
            Some(b'{') => self.brace(build),
            Some(b'[') => {
                let start = self.pos;
                self.enter()?;
                self.pos += 1;
                let items = self.sequence(b']', Vec::new(), build, start)?;
                self.depth -= 1;
                Ok(Value::Array(items))
            }
            Some(b'(') => self.paren(build),
            Some(b'\'' | b'"') => self.strings(build),
            Some(b'0'..=b'9' | b'-' | b'+' | b'.') => self.number(),
            Some(b) if b.is_ascii_alphabetic() || b == b'_' => {
                if self.string_prefix().is_some() {
                    self.strings(build)
                } else {
                    self.name()
                }
            }
            _ => {
                Err(self
                    .expected("a value (dict, list, tuple, string, number, True, False or None)"))
            }
        }
    }

    fn enter(&mut self) -> Result<(), PyLiteralError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error_at(self.pos, format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        self.depth += 1;
        Ok(())
    }

    /// The items of a list, tuple or set up to `close`; the opening bracket (and, for tuples and
    /// sets, the first item and its comma) are already consumed.
    fn sequence(
        &mut self,
        close: u8,
        mut items: Vec<Value>,
        build: bool,
        open_at: usize,
    ) -> Result<Vec<Value>, PyLiteralError> {
        let closing = close as char;
        loop {
            self.ws();
            if self.peek() == Some(close) {
                self.pos += 1;
                return Ok(items);
            }
            if self.peek().is_none() {
                return Err(self.unclosed(open_at, closing));
            }
            let item = self.value(build)?;
            if build {
                items.push(item);
            }
            self.ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b) if b == close => {
                    self.pos += 1;
                    return Ok(items);
                }
                None => return Err(self.unclosed(open_at, closing)),
                _ => return Err(self.expected(&format!("',' or {closing:?}"))),
            }
        }
    }

    /// The input ended inside a container opened at `open_at`.
    fn unclosed(&self, open_at: usize, closing: char) -> PyLiteralError {
        let opened = self.error_at(open_at, String::new()).column;
        self.expected(&format!(
            "{closing:?} to close the bracket opened at column {opened}"
        ))
    }

    /// `(`: the empty tuple, a parenthesized value, or a tuple.
    fn paren(&mut self, build: bool) -> Result<Value, PyLiteralError> {
        let start = self.pos;
        self.enter()?;
        self.pos += 1;
        self.ws();
        if self.peek() == Some(b')') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(Value::Array(Vec::new()));
        }
        let first = self.value(build)?;
        self.ws();
        let result = match self.peek() {
            Some(b')') => {
                self.pos += 1;
                first
            }
            Some(b',') => {
                self.pos += 1;
                let items = if build { vec![first] } else { Vec::new() };
                Value::Array(self.sequence(b')', items, build, start)?)
            }
            None => return Err(self.unclosed(start, ')')),
            _ => return Err(self.expected("',' or ')'")),
        };
        self.depth -= 1;
        Ok(result)
    }

    /// `{`: a dict, the empty dict, or a set.
    fn brace(&mut self, build: bool) -> Result<Value, PyLiteralError> {
        let start = self.pos;
        self.enter()?;
        self.pos += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(Value::Object(Map::new()));
        }
        let mut key_start = self.pos;
        let first = self.value(build)?;
        self.ws();
        match self.peek() {
            Some(b':') => {}
            Some(b',' | b'}') => {
                // A set literal.
                let items = if build { vec![first] } else { Vec::new() };
                if self.peek() == Some(b',') {
                    self.pos += 1;
                    let items = self.sequence(b'}', items, build, start)?;
                    self.depth -= 1;
                    return Ok(Value::Array(items));
                }
                self.pos += 1;
                self.depth -= 1;
                return Ok(Value::Array(items));
            }
            _ => return Err(self.expected("':' after a dict key")),
        }
        let mut map = Map::new();
        let mut key = first;
        loop {
            // At the ':' after `key`.
            let name = if build {
                self.dict_key(key, key_start)?
            } else {
                String::new()
            };
            self.pos += 1;
            self.ws();
            let value = self.value(build)?;
            if build {
                map.insert(name, value);
            }
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.ws();
                }
                Some(b'}') => {}
                None => return Err(self.unclosed(start, '}')),
                _ => return Err(self.expected("',' or '}' after a dict value")),
            }
            if self.peek() == Some(b'}') {
                self.pos += 1;
                self.depth -= 1;
                return Ok(Value::Object(map));
            }
            if self.peek().is_none() {
                return Err(self.unclosed(start, '}'));
            }
            key_start = self.pos;
            key = self.value(build)?;
            self.ws();
            if self.peek() != Some(b':') {
                return Err(self.expected("':' after a dict key"));
            }
        }
    }

    /// Turns a parsed key into an object key.
    fn dict_key(&self, key: Value, at: usize) -> Result<String, PyLiteralError> {
        match key {
            Value::String(s) => Ok(s),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(true) => Ok("True".to_string()),
            Value::Bool(false) => Ok("False".to_string()),
            Value::Null => Ok("None".to_string()),
            Value::Array(_) | Value::Object(_) => Err(self.error_at(
                at,
                "expected a string or a number as a dict key, found a container".to_string(),
            )),
        }
    }

    /// The length of a string prefix (`u`, `r`, `b`, `br`, ...) at the current position, when it
    /// is followed by a quote, and what it means.
    fn string_prefix(&self) -> Option<(usize, StrKind)> {
        let mut kind = StrKind {
            raw: false,
            bytes: false,
            unicode: false,
        };
        let mut len = 0;
        loop {
            match self.peek_at(len)? {
                b'\'' | b'"' => break,
                b'r' | b'R' if !kind.raw => kind.raw = true,
                b'b' | b'B' if !kind.bytes && !kind.unicode => kind.bytes = true,
                b'u' | b'U' if !kind.bytes && !kind.unicode => kind.unicode = true,
                _ => return None,
            }
            len += 1;
        }
        Some((len, kind))
    }

    /// One or more adjacent string literals, concatenated.
    fn strings(&mut self, build: bool) -> Result<Value, PyLiteralError> {
        let mut out = String::new();
        loop {
            self.string(&mut out, build)?;
            let after = self.pos;
            self.ws();
            let next_is_string = match self.peek() {
                Some(b'\'' | b'"') => true,
                Some(b) if b.is_ascii_alphabetic() => self.string_prefix().is_some(),
                _ => false,
            };
            if !next_is_string {
                self.pos = after;
                if !build {
                    return Ok(Value::Null);
                }
                self.flush(&mut out);
                return Ok(Value::String(out));
            }
        }
    }

    /// One string literal (prefix included), appended to `out` when `build`.
    fn string(&mut self, out: &mut String, build: bool) -> Result<(), PyLiteralError> {
        let start = self.pos;
        let (prefix, kind) = self
            .string_prefix()
            .ok_or_else(|| self.expected("a string"))?;
        self.pos += prefix;
        let quote = self.bytes[self.pos];
        let triple = self.peek_at(1) == Some(quote) && self.peek_at(2) == Some(quote);
        self.pos += if triple { 3 } else { 1 };
        let unterminated = |parser: &Self| {
            parser.error_at(
                start,
                "unterminated string: expected the closing quote before the end of the line"
                    .to_string(),
            )
        };
        loop {
            let rest = &self.bytes[self.pos..];
            let Some(run) = rest
                .iter()
                .position(|&b| b == quote || b == b'\\' || b == b'\n' || b == b'\r')
            else {
                return Err(unterminated(self));
            };
            if build && run > 0 {
                self.flush(out);
                out.push_str(&self.src[self.pos..self.pos + run]);
            }
            self.pos += run;
            let b = self.bytes[self.pos];
            if b == quote {
                if !triple {
                    self.pos += 1;
                    break;
                }
                if self.peek_at(1) == Some(quote) && self.peek_at(2) == Some(quote) {
                    self.pos += 3;
                    break;
                }
                if build {
                    self.flush(out);
                    out.push(quote as char);
                }
                self.pos += 1;
            } else if b == b'\n' || b == b'\r' {
                if !triple {
                    return Err(unterminated(self));
                }
                if build {
                    self.flush(out);
                    out.push(b as char);
                }
                self.pos += 1;
            } else {
                self.escape(out, build, kind, quote)?;
            }
        }
        // Escaped bytes still pending may continue in an adjacent literal (Python 2 byte strings
        // concatenate as bytes); `strings` flushes them.
        Ok(())
    }

    /// A backslash inside a string (at the current position).
    fn escape(
        &mut self,
        out: &mut String,
        build: bool,
        kind: StrKind,
        quote: u8,
    ) -> Result<(), PyLiteralError> {
        let at = self.pos;
        let Some(e) = self.peek_at(1) else {
            // The closing quote is missing; let the caller's scan report it.
            self.pos += 1;
            if build {
                self.flush(out);
                out.push('\\');
            }
            return Ok(());
        };
        if kind.raw {
            // The backslash stays; it only stops a following quote or backslash from ending the
            // string or starting an escape.
            self.pos += 1;
            if build {
                self.flush(out);
                out.push('\\');
            }
            if e == quote || e == b'\\' {
                self.pos += 1;
                if build {
                    out.push(e as char);
                }
            } else if e == b'\n' || e == b'\r' {
                self.pos += 1;
                if build {
                    out.push(e as char);
                }
                if e == b'\r' && self.peek() == Some(b'\n') {
                    self.pos += 1;
                    if build {
                        out.push('\n');
                    }
                }
            }
            return Ok(());
        }
        self.pos += 2;
        let simple = match e {
            b'\n' => return Ok(()),
            b'\r' => {
                if self.peek() == Some(b'\n') {
                    self.pos += 1;
                }
                return Ok(());
            }
            b'\\' | b'\'' | b'"' => Some(e as char),
            b'a' => Some('\u{7}'),
            b'b' => Some('\u{8}'),
            b'f' => Some('\u{c}'),
            b'n' => Some('\n'),
            b'r' => Some('\r'),
            b't' => Some('\t'),
            b'v' => Some('\u{b}'),
            _ => None,
        };
        if let Some(c) = simple {
            if build {
                self.flush(out);
                out.push(c);
            }
            return Ok(());
        }
        match e {
            b'0'..=b'7' => {
                let mut code = u32::from(e - b'0');
                for _ in 0..2 {
                    match self.peek() {
                        Some(d @ b'0'..=b'7') => {
                            code = code * 8 + u32::from(d - b'0');
                            self.pos += 1;
                        }
                        _ => break,
                    }
                }
                if build {
                    self.code_unit(out, code, kind);
                }
            }
            b'x' => {
                let code = self.hex_digits(2, at, "\\x")?;
                if build {
                    self.code_unit(out, code, kind);
                }
            }
            b'u' | b'U' if !kind.bytes => {
                let (count, name) = if e == b'u' { (4, "\\u") } else { (8, "\\U") };
                let mut code = self.hex_digits(count, at, name)?;
                if (0xD800..0xDC00).contains(&code)
                    && self.peek() == Some(b'\\')
                    && self.peek_at(1) == Some(b'u')
                {
                    let save = self.pos;
                    self.pos += 2;
                    match self.hex_digits(4, save, "\\u") {
                        Ok(low) if (0xDC00..0xE000).contains(&low) => {
                            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                        }
                        _ => self.pos = save,
                    }
                }
                let c = match char::from_u32(code) {
                    Some(c) => c,
                    None if (0xD800..0xE000).contains(&code) => '\u{FFFD}',
                    None => {
                        return Err(self.error_at(
                            at,
                            format!(
                                "escape {name} names U+{code:X}, which is not a Unicode code point"
                            ),
                        ));
                    }
                };
                if build {
                    self.flush(out);
                    out.push(c);
                }
            }
            _ => {
                // Unknown escape: the backslash stays and the next character is read normally.
                self.pos = at + 1;
                if build {
                    self.flush(out);
                    out.push('\\');
                }
            }
        }
        Ok(())
    }

    /// A `\x` or octal escape's value: a byte in byte strings, a code point in `u` strings.
    fn code_unit(&mut self, out: &mut String, code: u32, kind: StrKind) {
        if kind.unicode || code > 0xFF {
            self.flush(out);
            // Values up to 0o777 are all valid scalar values.
            out.push(char::from_u32(code).unwrap_or('\u{FFFD}'));
        } else {
            self.pending.push(code as u8);
        }
    }

    /// Decodes pending escaped bytes into `out`: UTF-8 where valid, Latin-1 otherwise.
    fn flush(&mut self, out: &mut String) {
        if self.pending.is_empty() {
            return;
        }
        for chunk in self.pending.utf8_chunks() {
            out.push_str(chunk.valid());
            out.extend(chunk.invalid().iter().map(|&b| char::from(b)));
        }
        self.pending.clear();
    }

    fn hex_digits(
        &mut self,
        count: usize,
        escape_at: usize,
        name: &str,
    ) -> Result<u32, PyLiteralError> {
        let mut code = 0u32;
        for _ in 0..count {
            match self.peek().and_then(|b| (b as char).to_digit(16)) {
                Some(d) => {
                    code = code * 16 + d;
                    self.pos += 1;
                }
                None => {
                    let found = self.describe_here();
                    return Err(self.error_at(
                        escape_at,
                        format!("expected {count} hex digits after {name}, found {found}"),
                    ));
                }
            }
        }
        Ok(code)
    }

    /// `True`, `False` or `None`.
    fn name(&mut self) -> Result<Value, PyLiteralError> {
        let start = self.pos;
        let len = self.bytes[start..]
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
            .unwrap_or(self.bytes.len() - start);
        let value = match &self.src[start..start + len] {
            "True" => Value::Bool(true),
            "False" => Value::Bool(false),
            "None" => Value::Null,
            _ => {
                return Err(self
                    .expected("a value (dict, list, tuple, string, number, True, False or None)"));
            }
        };
        self.pos += len;
        Ok(value)
    }

    /// Scans digits of `radix` with single `_` separators between them; returns how many digits.
    fn digits(&mut self, radix: u32) -> usize {
        let mut count = 0;
        while let Some(b) = self.peek() {
            if (b as char).is_digit(radix) {
                count += 1;
                self.pos += 1;
            } else if b == b'_'
                && count > 0
                && self.peek_at(1).is_some_and(|n| (n as char).is_digit(radix))
            {
                self.pos += 1;
            } else {
                break;
            }
        }
        count
    }

    fn number(&mut self) -> Result<Value, PyLiteralError> {
        let start = self.pos;
        let mut negative = false;
        if let Some(sign @ (b'-' | b'+')) = self.peek() {
            negative = sign == b'-';
            self.pos += 1;
            self.ws();
            match self.peek() {
                Some(b'0'..=b'9') => {}
                Some(b'.') if self.peek_at(1).is_some_and(|b| b.is_ascii_digit()) => {}
                _ => return Err(self.expected("a number after the sign")),
            }
        }
        let num_start = self.pos;
        let radix = match (self.peek(), self.peek_at(1)) {
            (Some(b'0'), Some(b'x' | b'X')) => 16,
            (Some(b'0'), Some(b'o' | b'O')) => 8,
            (Some(b'0'), Some(b'b' | b'B')) => 2,
            _ => 10,
        };
        let value = if radix != 10 {
            self.pos += 2;
            if self.peek() == Some(b'_') {
                self.pos += 1;
            }
            let digits_start = self.pos;
            if self.digits(radix) == 0 {
                return Err(self.expected("digits after the base prefix"));
            }
            let text = &self.src[digits_start..self.pos];
            self.skip_long_suffix();
            int_value(text, radix, negative)
                .ok_or_else(|| self.error_at(start, "integer too large for a float".to_string()))?
        } else {
            let int_digits = self.digits(10);
            let mut is_float = false;
            if self.peek() == Some(b'.') {
                is_float = true;
                self.pos += 1;
                let frac_digits = self.digits(10);
                if int_digits == 0 && frac_digits == 0 {
                    self.pos = num_start;
                    return Err(self.expected(
                        "a value (dict, list, tuple, string, number, True, False or None)",
                    ));
                }
            } else if int_digits == 0 {
                return Err(self.expected("a number"));
            }
            if let Some(b'e' | b'E') = self.peek() {
                let save = self.pos;
                self.pos += 1;
                if let Some(b'+' | b'-') = self.peek() {
                    self.pos += 1;
                }
                if self.digits(10) == 0 {
                    self.pos = save + 1;
                    return Err(self.expected("digits in the exponent"));
                }
                is_float = true;
            }
            let text = &self.src[num_start..self.pos];
            if is_float {
                let cleaned;
                let text = if text.contains('_') {
                    cleaned = text.replace('_', "");
                    cleaned.as_str()
                } else {
                    text
                };
                let f: f64 = text
                    .parse()
                    .map_err(|_| self.error_at(num_start, format!("not a valid float: {text}")))?;
                let f = if negative { -f } else { f };
                Value::Number(
                    Number::from_f64(f).ok_or_else(|| {
                        self.error_at(start, format!("float out of range: {text}"))
                    })?,
                )
            } else {
                if text.len() > 1
                    && text.starts_with('0')
                    && text.bytes().any(|b| b != b'0' && b != b'_')
                {
                    return Err(self.error_at(
                        num_start,
                        "leading zeros in a decimal integer are not allowed (use 0o for octal)"
                            .to_string(),
                    ));
                }
                self.skip_long_suffix();
                int_value(text, 10, negative).ok_or_else(|| {
                    self.error_at(start, "integer too large for a float".to_string())
                })?
            }
        };
        if let Some(b) = self.peek()
            && (b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(self.expected("',' or a closing bracket after a number"));
        }
        Ok(value)
    }

    /// Python 2 long integers: `123L`.
    fn skip_long_suffix(&mut self) {
        if let Some(b'L' | b'l') = self.peek()
            && !self
                .peek_at(1)
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            self.pos += 1;
        }
    }
}

/// An integer literal's digits (underscores allowed) as a JSON number: `i64`/`u64` where it fits,
/// otherwise the nearest float.
fn int_value(digits: &str, radix: u32, negative: bool) -> Option<Value> {
    let mut magnitude: u128 = 0;
    let mut overflow = false;
    let mut approx: f64 = 0.0;
    for c in digits.chars().filter(|&c| c != '_') {
        let d = c.to_digit(radix).expect("digits were checked");
        approx = approx * f64::from(radix) + f64::from(d);
        if !overflow {
            match magnitude
                .checked_mul(u128::from(radix))
                .and_then(|m| m.checked_add(u128::from(d)))
            {
                Some(m) => magnitude = m,
                None => overflow = true,
            }
        }
    }
    if !overflow {
        if negative {
            if magnitude <= i64::MAX as u128 + 1 {
                return Some(Value::Number(Number::from(
                    (magnitude as i128).wrapping_neg() as i64,
                )));
            }
        } else if let Ok(m) = u64::try_from(magnitude) {
            return Some(Value::Number(Number::from(m)));
        }
    }
    let f = if negative { -approx } else { approx };
    Number::from_f64(f).map(Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> Value {
        parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> PyLiteralError {
        match parse(s) {
            Ok(v) => panic!("{s} parsed as {v}"),
            Err(e) => e,
        }
    }

    #[test]
    fn real_2014_meta_line() {
        let line = r#"{'asin': '0000031852', 'title': "Girls' Ballet Tutu Zebra Hot Pink", 'price': 3.17, 'imUrl': 'http://ecx.images-amazon.com/images/I/51fAmVkTbyL._SY300_.jpg', 'related': {'also_bought': ['B00JHONN1S']}, 'salesRank': {'Toys & Games': 211836}, 'categories': [['Sports & Outdoors', 'Other Sports', 'Dance']], 'description': 'A \'tutu\'\n'}"#;
        assert_eq!(
            p(line),
            json!({
                "asin": "0000031852",
                "title": "Girls' Ballet Tutu Zebra Hot Pink",
                "price": 3.17,
                "imUrl": "http://ecx.images-amazon.com/images/I/51fAmVkTbyL._SY300_.jpg",
                "related": {"also_bought": ["B00JHONN1S"]},
                "salesRank": {"Toys & Games": 211836},
                "categories": [["Sports & Outdoors", "Other Sports", "Dance"]],
                "description": "A 'tutu'\n",
            })
        );
        assert_eq!(lookup(line, "asin").unwrap(), Some(json!("0000031852")));
        assert_eq!(
            lookup(line, "salesRank").unwrap(),
            Some(json!({"Toys & Games": 211836}))
        );
        assert_eq!(lookup(line, "brand").unwrap(), None);
    }

    #[test]
    fn scalars() {
        assert_eq!(p("True"), json!(true));
        assert_eq!(p("False"), json!(false));
        assert_eq!(p("None"), json!(null));
        assert_eq!(p("  42 "), json!(42));
        assert_eq!(p("-7"), json!(-7));
        assert_eq!(p("- 7"), json!(-7));
        assert_eq!(p("+7"), json!(7));
        assert_eq!(p("0"), json!(0));
        assert_eq!(p("000"), json!(0));
        assert_eq!(p("1_000_000"), json!(1_000_000));
        assert_eq!(p("0x1F"), json!(31));
        assert_eq!(p("0o17"), json!(15));
        assert_eq!(p("0b101"), json!(5));
        assert_eq!(p("-0x10"), json!(-16));
        assert_eq!(p("12345L"), json!(12345));
        assert_eq!(p("18446744073709551615"), json!(u64::MAX));
        assert_eq!(p("-9223372036854775808"), json!(i64::MIN));
        assert_eq!(p("18446744073709551616"), json!(18446744073709551616.0));
    }

    #[test]
    fn floats() {
        assert_eq!(p("3.17"), json!(3.17));
        assert_eq!(p("-3.5"), json!(-3.5));
        assert_eq!(p(".5"), json!(0.5));
        assert_eq!(p("5."), json!(5.0));
        assert_eq!(p("1e3"), json!(1000.0));
        assert_eq!(p("1E-3"), json!(0.001));
        assert_eq!(p("2.5e+2"), json!(250.0));
        assert_eq!(p("1.e2"), json!(100.0));
        assert_eq!(p("-1.5e-2"), json!(-0.015));
        assert_eq!(p("1_0.2_5"), json!(10.25));
        assert!(p("3.0").is_f64());
    }

    #[test]
    fn containers() {
        assert_eq!(p("[]"), json!([]));
        assert_eq!(p("{}"), json!({}));
        assert_eq!(p("()"), json!([]));
        assert_eq!(p("(1,)"), json!([1]));
        assert_eq!(p("(1, 'a')"), json!([1, "a"]));
        assert_eq!(p("(1)"), json!(1));
        assert_eq!(p("((1))"), json!(1));
        assert_eq!(p("[1, 2, 3,]"), json!([1, 2, 3]));
        assert_eq!(p("{'a': 1,}"), json!({"a": 1}));
        assert_eq!(p("{1, 2}"), json!([1, 2]));
        assert_eq!(p("{1}"), json!([1]));
        assert_eq!(p("{1,}"), json!([1]));
        assert_eq!(
            p("{ 'a' : [ ( 1 , 2 ) , { 'b' : None } ] ,\n 'c' : ( ) }"),
            json!({"a": [[1, 2], {"b": null}], "c": []})
        );
        assert_eq!(p("[[[[]]]]"), json!([[[[]]]]));
    }

    #[test]
    fn dict_keys() {
        assert_eq!(
            p("{1: 'a', -2: 'b', 1.5: 'c', True: 'd', None: 'e', \"k\": 'f'}"),
            json!({"1": "a", "-2": "b", "1.5": "c", "True": "d", "None": "e", "k": "f"})
        );
        assert_eq!(p("{'a': 1, 'a': 2}"), json!({"a": 2}));
        let e = err("{(1, 2): 3}");
        assert_eq!(e.column, 2);
        assert!(e.message.contains("dict key"), "{e}");
    }

    #[test]
    fn string_escapes() {
        assert_eq!(p(r#"'a\\b'"#), json!("a\\b"));
        assert_eq!(p(r#"'it\'s'"#), json!("it's"));
        assert_eq!(p(r#""say \"hi\"""#), json!("say \"hi\""));
        assert_eq!(
            p(r#"'\n\t\r\a\b\f\v'"#),
            json!("\n\t\r\u{7}\u{8}\u{c}\u{b}")
        );
        assert_eq!(p(r#"'\x41\x7e'"#), json!("A~"));
        assert_eq!(p(r#"u'\xe9'"#), json!("é"));
        assert_eq!(p(r#"'\u00e9\u2122'"#), json!("é™"));
        assert_eq!(p(r#"'\U0001F600'"#), json!("😀"));
        assert_eq!(p(r#"'\ud83d\ude00'"#), json!("😀"));
        assert_eq!(p(r#"'\ud83d!'"#), json!("\u{FFFD}!"));
        assert_eq!(p(r#"'\101\60\0'"#), json!("A0\0"));
        assert_eq!(p(r#"u'\351'"#), json!("é"));
        assert_eq!(p(r#"'\d\N{DASH}'"#), json!("\\d\\N{DASH}"));
        assert_eq!(p("'a\\\nb'"), json!("ab"));
        assert_eq!(p("'a\\\r\nb'"), json!("ab"));
        assert_eq!(p("\"it's\""), json!("it's"));
        assert_eq!(p("'say \"hi\"'"), json!("say \"hi\""));
        assert_eq!(p("'caf\u{e9} \u{2122}'"), json!("café ™"));
    }

    #[test]
    fn python2_byte_escapes_decode_as_utf8() {
        // Python 2 repr of the UTF-8 bytes of "Café – ’".
        assert_eq!(
            p(r#"'Caf\xc3\xa9 \xe2\x80\x93 \xe2\x80\x99'"#),
            json!("Café – ’")
        );
        // Octal escapes are bytes too.
        assert_eq!(p(r#"'\303\251'"#), json!("é"));
        // Bytes that are not UTF-8 fall back to Latin-1, one character each.
        assert_eq!(p(r#"'\xe9t\xe9'"#), json!("été"));
        assert_eq!(p(r#"'\xc3'"#), json!("Ã"));
        assert_eq!(p(r#"'\xa0x\xc3\xa9'"#), json!("\u{a0}xé"));
        // In u'' strings \x is a code point.
        assert_eq!(p(r#"u'\xc3\xa9'"#), json!("Ã©"));
        assert_eq!(p(r#"b'\xc3\xa9'"#), json!("é"));
        // Adjacent byte-string literals concatenate as bytes.
        assert_eq!(p(r#"'\xc3' '\xa9'"#), json!("é"));
        assert_eq!(p(r#"'\xc3' u'\xa9'"#), json!("Ã©"));
    }

    #[test]
    fn prefixes_and_raw_strings() {
        assert_eq!(p("u'x'"), json!("x"));
        assert_eq!(p("U\"x\""), json!("x"));
        assert_eq!(p("b'x'"), json!("x"));
        assert_eq!(p(r#"r'a\nb'"#), json!("a\\nb"));
        assert_eq!(p(r#"r'a\'b'"#), json!("a\\'b"));
        assert_eq!(p(r#"R"a\\""#), json!("a\\\\"));
        assert_eq!(p(r#"br'\x41'"#), json!("\\x41"));
        assert_eq!(p(r#"Rb'\x41'"#), json!("\\x41"));
        assert_eq!(p(r#"ur'\u00e9'"#), json!("\\u00e9"));
        assert_eq!(p(r#"b'\u00e9'"#), json!("\\u00e9"));
        assert!(parse("ub'x'").is_err());
        assert!(parse("f'x'").is_err());
    }

    #[test]
    fn triple_quotes_and_concatenation() {
        assert_eq!(p("'''a 'b' \"c\"\nd'''"), json!("a 'b' \"c\"\nd"));
        assert_eq!(p(r#""""x "y""""#), json!("x \"y"));
        assert_eq!(p("'a' \"b\" u'c'\n 'd'"), json!("abcd"));
        assert_eq!(p("['a' 'b', 'c']"), json!(["ab", "c"]));
        assert_eq!(p("{'k' 'ey': 'v' r'\\w'}"), json!({"key": "v\\w"}));
        assert_eq!(p("''"), json!(""));
    }

    #[test]
    fn whitespace_and_continuations() {
        assert_eq!(
            p("\t{\n'a' :\r\n 1 \\\n, 'b': [ ]\u{c}}\n"),
            json!({"a": 1, "b": []})
        );
    }

    #[test]
    fn errors_name_column_and_expectation() {
        let e = err("{'a' 1}");
        assert_eq!((e.column, e.offset), (6, 5));
        assert_eq!(e.message, "expected ':' after a dict key, found '1'");
        assert_eq!(
            e.to_string(),
            "column 6: expected ':' after a dict key, found '1'"
        );

        let e = err("{'a': 1 'b': 2}");
        assert_eq!(
            e.message,
            "expected ',' or '}' after a dict value, found '\\''"
        );

        let e = err("[1, 2");
        assert!(
            e.message.starts_with(
                "expected ']' to close the bracket opened at column 1, found end of input"
            ),
            "{e}"
        );

        let e = err("{'a': 1");
        assert_eq!(
            e.message,
            "expected '}' to close the bracket opened at column 1, found end of input"
        );
        let e = err("[(1, {'a': (2");
        assert_eq!(
            e.message,
            "expected ')' to close the bracket opened at column 12, found end of input"
        );

        let e = err("{'a': true}");
        assert_eq!(e.column, 7);
        assert!(e.message.contains("found `true`"), "{e}");

        let e = err("'abc");
        assert_eq!(e.column, 1);
        assert!(e.message.contains("unterminated string"), "{e}");

        let e = err("'ab\ncd'");
        assert!(e.message.contains("unterminated string"), "{e}");

        let e = err(r#"'\x4'"#);
        assert_eq!(e.column, 2);
        assert_eq!(e.message, "expected 2 hex digits after \\x, found '\\''");

        let e = err(r#"'\U00110000'"#);
        assert!(e.message.contains("not a Unicode code point"), "{e}");

        // Columns count characters, offsets count bytes.
        let e = err("['éé', x]");
        assert_eq!((e.column, e.offset), (8, 9));

        assert!(err("1 2").message.contains("end of input after the value"));
        assert!(err("").message.contains("found end of input"));
        assert!(err("012").message.contains("leading zeros"));
        assert!(err("1j").message.contains("found `j`"));
        assert!(err("1e").message.contains("exponent"));
        assert!(err("-").message.contains("a number after the sign"));
        assert!(err("-'a'").message.contains("a number after the sign"));
        assert!(err("0x").message.contains("digits after the base prefix"));
        assert!(err("1e999").message.contains("float out of range"));
        assert!(err("[,]").message.contains("expected a value"));
        assert!(err("{,}").message.contains("expected a value"));
        assert!(err("(1 2)").message.contains("',' or ')'"));
        assert!(err("set()").message.contains("found `set`"));
        assert!(
            err("{'a': 1, 'b'}")
                .message
                .contains("':' after a dict key")
        );
        assert!(err("1__0").message.contains("found `__0`"));
    }

    #[test]
    fn nesting_limit() {
        let deep_ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(&deep_ok).is_ok());
        let too_deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(err(&too_deep).message.contains("nesting deeper"));
        let unclosed = "[".repeat(100_000);
        assert!(parse(&unclosed).is_err());
    }

    #[test]
    fn lookup_skips_other_values_and_stops_early() {
        let line = r#"{'related': {'also_bought': ['A', 'B'], 'x': (1, 2)}, 'title': 'T \'q\'', 'asin': 'B00X', 'rest': <not parsed>"#;
        assert_eq!(lookup(line, "asin").unwrap(), Some(json!("B00X")));
        assert_eq!(lookup(line, "title").unwrap(), Some(json!("T 'q'")));
        assert_eq!(lookup("{}", "asin").unwrap(), None);
        assert_eq!(lookup("{'a': 1,}", "asin").unwrap(), None);
        assert_eq!(
            lookup("{'a': r'\\'', 'asin': 'X'}", "asin").unwrap(),
            Some(json!("X"))
        );
        assert_eq!(
            lookup("{'a': '''x'y''', 'asin': 'X'}", "asin").unwrap(),
            Some(json!("X"))
        );
        assert!(
            lookup("['asin']", "asin")
                .unwrap_err()
                .message
                .contains("'{' (a dict)")
        );
        assert!(lookup("{'a': [1, 'asin': 'X'}", "asin").is_err());
        assert!(lookup("{'a': 'x}", "asin").is_err());
    }

    #[test]
    fn skipping_matches_parsing() {
        // Everything `parse` accepts, `lookup` can skip over.
        for value in [
            "{'a': [1, (2,), {3}, {}, ()], 'b': u'x' r'y' b'z', 'c': -1.5e3}",
            r#"'\xc3\xa9\n\\\''"#,
            "0x_ff",
            "[True, False, None]",
        ] {
            parse(value).unwrap();
            let line = format!("{{'skip': {value}, 'asin': 'X'}}");
            assert_eq!(lookup(&line, "asin").unwrap(), Some(json!("X")), "{line}");
        }
    }
}
