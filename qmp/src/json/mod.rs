//! Splitting a byte stream into JSON values, as QEMU's `qobject/json-streamer.c` does.
//!
//! The lexer turns bytes into tokens; the streamer counts braces and brackets and hands the
//! tokens of one top-level value to the parser as soon as the counts return to zero (or go
//! negative, which is an error the parser reports). Any error resets the streamer, so the next
//! value starts clean: that is how QEMU resynchronises after garbage.

mod lexer;
mod parser;

use serde_json::Value;

use lexer::{Lexeme, Lexer, TokenKind};

/// QEMU's limit on nesting (`MAX_NESTING`).
const MAX_NESTING: i64 = 1 << 10;

/// QEMU's limit on tokens in one value (`MAX_TOKEN_COUNT`).
const MAX_TOKEN_COUNT: usize = 2 << 20;

/// One unit of output from the stream, in input order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Piece {
    /// A complete JSON value.
    Value(Value),
    /// A syntax or lexical error; the text is the reply's `desc`.
    Error(String),
    /// The buffered partial input went over the limit; the text is the reply's `desc`.
    Overflow(String),
}

/// The incremental JSON splitter for one connection.
#[derive(Debug)]
pub(crate) struct JsonStream {
    lexer: Lexer,
    /// Tokens of the value being read, each followed by one space (QEMU counts the same bytes).
    pending: Vec<u8>,
    /// Number of tokens in `pending`.
    tokens: usize,
    braces: i64,
    brackets: i64,
    limit: usize,
}

impl JsonStream {
    /// A stream that buffers at most `limit` bytes of an incomplete value.
    pub(crate) fn new(limit: usize) -> JsonStream {
        JsonStream {
            lexer: Lexer::new(),
            pending: Vec::new(),
            tokens: 0,
            braces: 0,
            brackets: 0,
            limit,
        }
    }

    /// Bytes held for the value being read (complete tokens plus the partial one).
    pub(crate) fn buffered(&self) -> usize {
        self.pending.len() + self.lexer.partial_len()
    }

    /// Feed bytes; completed values and errors are appended to `out` in order.
    pub(crate) fn feed(&mut self, bytes: &[u8], out: &mut Vec<Piece>) {
        let mut lexemes = Vec::with_capacity(2);
        for &byte in bytes {
            self.lexer.push(byte, &mut lexemes);
            for lexeme in lexemes.drain(..) {
                self.token(lexeme, out);
            }
            if self.buffered() > self.limit {
                self.overflow(out);
            }
        }
    }

    fn token(&mut self, lexeme: Lexeme, out: &mut Vec<Piece>) {
        match lexeme.kind {
            TokenKind::LCurly => self.braces += 1,
            TokenKind::RCurly => self.braces -= 1,
            TokenKind::LSquare => self.brackets += 1,
            TokenKind::RSquare => self.brackets -= 1,
            TokenKind::Error => {
                out.push(Piece::Error(stray(&lexeme.text)));
                self.reset();
                return;
            }
            _ => {}
        }
        if self.pending.len() + lexeme.text.len() + 1 > self.limit {
            self.overflow(out);
            return;
        }
        if self.tokens + 1 > MAX_TOKEN_COUNT {
            out.push(Piece::Error("JSON token count limit exceeded".to_owned()));
            self.reset();
            return;
        }
        if self.braces + self.brackets > MAX_NESTING {
            out.push(Piece::Error("JSON nesting depth limit exceeded".to_owned()));
            self.reset();
            return;
        }
        self.pending.extend_from_slice(&lexeme.text);
        self.pending.push(b' ');
        self.tokens += 1;
        let open = self.braces > 0 || self.brackets > 0;
        if open && self.braces >= 0 && self.brackets >= 0 {
            return;
        }
        out.push(match parser::parse(&self.pending) {
            Ok(value) => Piece::Value(value),
            Err(message) => Piece::Error(format!("JSON parse error, {message}")),
        });
        self.reset();
    }

    fn overflow(&mut self, out: &mut Vec<Piece>) {
        out.push(Piece::Overflow("JSON token size limit exceeded".to_owned()));
        self.reset();
        self.lexer.recover();
    }

    fn reset(&mut self) {
        self.pending.clear();
        self.tokens = 0;
        self.braces = 0;
        self.brackets = 0;
    }
}

/// QEMU prints the stray bytes as a C string: up to the first NUL, invalid UTF-8 replaced.
fn stray(text: &[u8]) -> String {
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    format!(
        "JSON parse error, stray '{}'",
        String::from_utf8_lossy(&text[..end])
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn feed_all(stream: &mut JsonStream, chunks: &[&[u8]]) -> Vec<Piece> {
        let mut out = Vec::new();
        for chunk in chunks {
            stream.feed(chunk, &mut out);
        }
        out
    }

    #[test]
    fn value_split_across_reads_comes_out_once_complete() {
        let mut stream = JsonStream::new(1 << 20);
        let out = feed_all(&mut stream, &[b"{\"a\"", b": [1, 2", b"]}"]);
        assert_eq!(out, [Piece::Value(json!({"a": [1, 2]}))]);
    }

    #[test]
    fn stray_closing_brace_is_reported_and_stream_continues() {
        let mut stream = JsonStream::new(1 << 20);
        let out = feed_all(&mut stream, &[b"} {}"]);
        assert_eq!(
            out,
            [
                Piece::Error("JSON parse error, expecting value".to_owned()),
                Piece::Value(json!({}))
            ]
        );
    }

    #[test]
    fn stray_nul_is_reported_as_an_empty_c_string() {
        let mut stream = JsonStream::new(1 << 20);
        assert_eq!(
            feed_all(&mut stream, &[b"\0"]),
            [Piece::Error("JSON parse error, stray ''".to_owned())]
        );
    }

    #[test]
    fn invalid_utf8_stray_byte_is_shown_as_replacement_character() {
        let mut stream = JsonStream::new(1 << 20);
        assert_eq!(
            feed_all(&mut stream, &[b"\xff"]),
            [Piece::Error(
                "JSON parse error, stray '\u{fffd}'".to_owned()
            )]
        );
    }

    #[test]
    fn nesting_deeper_than_qemu_allows_is_an_error() {
        let mut stream = JsonStream::new(1 << 20);
        let deep = vec![b'['; 1025];
        let out = feed_all(&mut stream, &[&deep]);
        assert_eq!(
            out,
            [Piece::Error("JSON nesting depth limit exceeded".to_owned())]
        );
    }

    #[test]
    fn deepest_nesting_qemu_allows_parses() {
        let mut stream = JsonStream::new(1 << 20);
        let mut input = b"{\"a\":".repeat(512);
        input.extend(b"[".repeat(512));
        input.extend(b"]".repeat(512));
        input.extend(b"}".repeat(512));
        let out = feed_all(&mut stream, &[&input]);
        let [Piece::Value(value)] = out.as_slice() else {
            panic!("one value expected")
        };
        assert!(value.pointer(&format!("{}/0", "/a".repeat(511))).is_none());
        assert!(value.pointer(&"/a".repeat(512)).is_some());
    }

    #[test]
    fn partial_string_longer_than_limit_overflows() {
        let mut stream = JsonStream::new(64);
        let mut input = b"{\"execute\": \"".to_vec();
        input.extend_from_slice(&[b'x'; 100]);
        let out = feed_all(&mut stream, &[&input]);
        assert_eq!(
            out,
            [Piece::Overflow("JSON token size limit exceeded".to_owned())]
        );
        assert!(stream.buffered() <= 64);
    }
}
