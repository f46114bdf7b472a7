//! The JSON parser that turns one complete token sequence into a value, with the error texts of
//! QEMU's `qobject/json-parser.c` (the caller prefixes them with "JSON parse error, ").

use std::collections::VecDeque;

use serde_json::{Map, Number, Value};

use super::lexer::{Lexeme, Lexer, TokenKind};

/// Parse the tokens of one top-level value, written out separated by spaces. Tokens are lexed
/// as the parser asks for them, so parsing holds no more than the value being built.
pub(crate) fn parse(text: &[u8]) -> Result<Value, String> {
    let mut parser = Parser {
        text,
        pos: 0,
        lexer: Lexer::new(),
        ahead: VecDeque::new(),
    };
    parser.value()
}

struct Parser<'a> {
    text: &'a [u8],
    pos: usize,
    lexer: Lexer,
    ahead: VecDeque<Lexeme>,
}

impl Parser<'_> {
    /// Lex until a token is available or the text (plus one terminating space) is used up.
    fn fill(&mut self) {
        while self.ahead.is_empty() && self.pos <= self.text.len() {
            let byte = self.text.get(self.pos).copied().unwrap_or(b' ');
            self.pos += 1;
            let mut out = Vec::with_capacity(2);
            self.lexer.push(byte, &mut out);
            self.ahead.extend(out);
        }
    }

    fn peek_kind(&mut self) -> Result<TokenKind, String> {
        self.fill();
        self.ahead.front().map(|t| t.kind).ok_or_else(premature_eoi)
    }

    fn pop(&mut self) -> Result<Lexeme, String> {
        self.fill();
        self.ahead.pop_front().ok_or_else(premature_eoi)
    }

    /// Parse one value. Iterative, with an explicit stack of open containers, so that the
    /// deepest nesting the streamer lets through cannot exhaust the thread's stack.
    fn value(&mut self) -> Result<Value, String> {
        let mut open: Vec<Open> = Vec::new();
        loop {
            let Some(mut done) = self.start_value(&mut open)? else {
                continue;
            };
            loop {
                match open.pop() {
                    None => return Ok(done),
                    Some(container) => match self.close(container, done, &mut open)? {
                        Closed::Value(value) => done = value,
                        Closed::NeedValue => break,
                    },
                }
            }
        }
    }

    /// Read the start of a value: a scalar, an empty container, or the opening of a container
    /// (pushed on `open`, returning `None`).
    fn start_value(&mut self, open: &mut Vec<Open>) -> Result<Option<Value>, String> {
        let (close, container) = match self.peek_kind()? {
            TokenKind::LCurly => (TokenKind::RCurly, Open::Key(Map::new())),
            TokenKind::LSquare => (TokenKind::RSquare, Open::List(Vec::new())),
            TokenKind::String => return string(&self.pop()?.text).map(|s| Some(Value::String(s))),
            TokenKind::Integer => return Ok(Some(integer(&self.pop()?.text))),
            TokenKind::Float => return Ok(Some(float(&self.pop()?.text))),
            TokenKind::Keyword => return keyword(&self.pop()?.text).map(Some),
            _ => return Err("expecting value".to_owned()),
        };
        self.pop()?;
        if self.peek_kind()? == close {
            self.pop()?;
            return Ok(Some(match container {
                Open::List(_) => Value::Array(Vec::new()),
                _ => Value::Object(Map::new()),
            }));
        }
        open.push(container);
        Ok(None)
    }

    /// Give the value just read to the innermost open container and read what follows it.
    fn close(
        &mut self,
        container: Open,
        done: Value,
        open: &mut Vec<Open>,
    ) -> Result<Closed, String> {
        match container {
            Open::List(mut items) => {
                items.push(done);
                match self.pop()?.kind {
                    TokenKind::RSquare => Ok(Closed::Value(Value::Array(items))),
                    TokenKind::Comma => {
                        open.push(Open::List(items));
                        Ok(Closed::NeedValue)
                    }
                    _ => Err("expected separator in list".to_owned()),
                }
            }
            Open::Key(map) => {
                let Value::String(key) = done else {
                    return Err("key is not a string in object".to_owned());
                };
                if self.pop()?.kind != TokenKind::Colon {
                    return Err("missing : in object pair".to_owned());
                }
                open.push(Open::Member(map, key));
                Ok(Closed::NeedValue)
            }
            Open::Member(mut map, key) => {
                if map.contains_key(&key) {
                    return Err("duplicate key".to_owned());
                }
                map.insert(key, done);
                match self.pop()?.kind {
                    TokenKind::RCurly => Ok(Closed::Value(Value::Object(map))),
                    TokenKind::Comma => {
                        open.push(Open::Key(map));
                        Ok(Closed::NeedValue)
                    }
                    _ => Err("expected separator in dict".to_owned()),
                }
            }
        }
    }
}

/// A container whose closing token has not been read yet.
enum Open {
    /// A list; the next value is an element.
    List(Vec<Value>),
    /// An object; the next value is a key.
    Key(Map<String, Value>),
    /// An object; the next value belongs to this key.
    Member(Map<String, Value>, String),
}

/// What follows a value inside a container.
enum Closed {
    /// The container closed, giving this value.
    Value(Value),
    /// Another value follows.
    NeedValue,
}

fn premature_eoi() -> String {
    "premature EOI".to_owned()
}

fn keyword(text: &[u8]) -> Result<Value, String> {
    match text {
        b"true" => Ok(Value::Bool(true)),
        b"false" => Ok(Value::Bool(false)),
        b"null" => Ok(Value::Null),
        _ => Err(format!(
            "invalid keyword '{}'",
            String::from_utf8_lossy(text)
        )),
    }
}

/// As QEMU: a signed 64-bit integer if it fits, else unsigned, else a double.
fn integer(text: &[u8]) -> Value {
    let text = String::from_utf8_lossy(text);
    if let Ok(n) = text.parse::<i64>() {
        return Value::Number(n.into());
    }
    if let Ok(n) = text.parse::<u64>() {
        return Value::Number(n.into());
    }
    float(text.as_bytes())
}

fn float(text: &[u8]) -> Value {
    let parsed = String::from_utf8_lossy(text).parse::<f64>().unwrap_or(0.0);
    // JSON has no infinities; saturate like a client would expect from an overlong number.
    let finite = if parsed.is_finite() {
        parsed
    } else {
        f64::MAX.copysign(parsed)
    };
    Number::from_f64(finite).map_or(Value::Null, Value::Number)
}

/// Decode a quoted string token (either quote), validating escapes and UTF-8.
fn string(token: &[u8]) -> Result<String, String> {
    let body = token
        .get(1..token.len().saturating_sub(1))
        .unwrap_or_default();
    let mut out = String::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i] == b'\\' {
            i = escape(body, i, &mut out)?;
        } else {
            let end = body[i..]
                .iter()
                .position(|&b| b == b'\\')
                .map_or(body.len(), |p| i + p);
            let run = std::str::from_utf8(&body[i..end])
                .map_err(|_| "invalid UTF-8 sequence in string".to_owned())?;
            out.push_str(run);
            i = end;
        }
    }
    Ok(out)
}

/// Decode the escape at `body[at]` (a backslash); returns the index after it.
fn escape(body: &[u8], at: usize, out: &mut String) -> Result<usize, String> {
    let simple = match body.get(at + 1) {
        Some(b'"') => '"',
        Some(b'\'') => '\'',
        Some(b'\\') => '\\',
        Some(b'/') => '/',
        Some(b'b') => '\u{8}',
        Some(b'f') => '\u{c}',
        Some(b'n') => '\n',
        Some(b'r') => '\r',
        Some(b't') => '\t',
        Some(b'u') => return unicode_escape(body, at, out),
        _ => return Err("invalid escape sequence in string".to_owned()),
    };
    out.push(simple);
    Ok(at + 2)
}

fn unicode_escape(body: &[u8], at: usize, out: &mut String) -> Result<usize, String> {
    let mut end = at + 6;
    let mut cp = hex4(body, at + 2);
    if let Some(lead @ 0xd800..=0xdbff) = cp {
        if body.get(end) == Some(&b'\\') && body.get(end + 1) == Some(&b'u') {
            cp = match hex4(body, end + 2) {
                Some(trail @ 0xdc00..=0xdfff) => {
                    end += 6;
                    Some(0x10000 + ((lead & 0x3ff) << 10) + (trail & 0x3ff))
                }
                _ => None,
            };
        }
    }
    match cp.and_then(char::from_u32) {
        Some(c) => {
            out.push(c);
            Ok(end)
        }
        None => {
            let shown = body.get(at..end.min(body.len())).unwrap_or_default();
            Err(format!(
                "{} is not a valid Unicode character",
                String::from_utf8_lossy(shown)
            ))
        }
    }
}

fn hex4(body: &[u8], at: usize) -> Option<u32> {
    let digits = body.get(at..at + 4)?;
    let text = std::str::from_utf8(digits).ok()?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_value_parses_like_serde_json() {
        let text = br#"{ "a" : [ 1 , -2 , 3.5 , "x" , true , false , null ] , "b" : { } } "#;
        assert_eq!(
            parse(text),
            Ok(json!({"a": [1, -2, 3.5, "x", true, false, null], "b": {}}))
        );
    }

    #[test]
    fn single_quoted_strings_are_accepted_as_in_qemu() {
        assert_eq!(parse(br#"'it\'s "q"' "#), Ok(json!("it's \"q\"")));
    }

    #[test]
    fn escapes_and_surrogate_pairs_decode() {
        assert_eq!(
            parse(br#""\u00e9\n\ud83d\ude00\/" "#),
            Ok(json!("\u{e9}\n\u{1f600}/"))
        );
    }

    #[test]
    fn lone_surrogate_is_not_a_valid_unicode_character() {
        assert_eq!(
            parse(br#""\ud800x" "#),
            Err("\\ud800 is not a valid Unicode character".to_owned())
        );
    }

    #[test]
    fn large_integers_become_unsigned_then_float() {
        assert_eq!(
            parse(b"18446744073709551615 "),
            Ok(json!(18446744073709551615u64))
        );
        assert_eq!(
            parse(b"18446744073709551616 "),
            Ok(json!(18446744073709551616.0))
        );
    }

    #[test]
    fn syntax_errors_use_qemu_messages() {
        assert_eq!(
            parse(b"{ 1 : 2 } "),
            Err("key is not a string in object".to_owned())
        );
        assert_eq!(
            parse(br#"{ "a" 1 } "#),
            Err("missing : in object pair".to_owned())
        );
        assert_eq!(parse(br#"{ "a" : } "#), Err("expecting value".to_owned()));
        assert_eq!(
            parse(br#"{ "a" : 1 ] "#),
            Err("expected separator in dict".to_owned())
        );
        assert_eq!(
            parse(b"[ 1 } "),
            Err("expected separator in list".to_owned())
        );
        assert_eq!(parse(b"} "), Err("expecting value".to_owned()));
        assert_eq!(parse(b"nope "), Err("invalid keyword 'nope'".to_owned()));
        assert_eq!(
            parse(br#"{ "a" : 1 , "a" : 2 } "#),
            Err("duplicate key".to_owned())
        );
        assert_eq!(
            parse(br#""\q" "#),
            Err("invalid escape sequence in string".to_owned())
        );
    }

    #[test]
    fn invalid_utf8_in_string_is_rejected() {
        assert_eq!(
            parse(b"\"\xc3\x28\" "),
            Err("invalid UTF-8 sequence in string".to_owned())
        );
    }
}
