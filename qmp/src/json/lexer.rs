//! A byte-at-a-time JSON lexer with QEMU's token rules (`qobject/json-lexer.c`).
//!
//! QEMU extensions kept for compatibility: single-quoted strings and `\'` escapes. Keywords are
//! `[a-z]+` (the parser rejects all but `true`, `false` and `null`). After a lexical error the
//! lexer skips input until a structural character, an ASCII control character other than tab,
//! or a 0xFE/0xFF byte, exactly like QEMU's recovery state.

/// What a completed token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
    LCurly,
    RCurly,
    LSquare,
    RSquare,
    Colon,
    Comma,
    String,
    Integer,
    Float,
    Keyword,
    /// Input that cannot start or continue a token; the text is the offending bytes.
    Error,
}

/// One token with its source bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lexeme {
    pub(crate) kind: TokenKind,
    pub(crate) text: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    Recovery,
    DqString,
    DqEscape,
    SqString,
    SqEscape,
    Zero,
    Sign,
    Digits,
    Mantissa,
    MantissaDigits,
    ExpE,
    ExpSign,
    ExpDigits,
    Keyword,
}

/// The lexer's decision for one byte in one state.
enum Step {
    /// Consume the byte into the current token and move to the state.
    Continue(State),
    /// Consume the byte; it completes a token.
    Complete(TokenKind),
    /// The token ended just before this byte; emit it and look at the byte again from `Start`.
    EndBefore(TokenKind),
    /// Consume whitespace outside a token.
    Skip,
    /// Consume the byte and skip it (error recovery).
    Discard,
    /// Leave error recovery and look at the byte again from `Start`.
    Resync,
    /// The byte is a lexical error; it becomes part of the error token.
    Error,
}

/// The lexer state that survives between reads.
#[derive(Debug)]
pub(crate) struct Lexer {
    state: State,
    token: Vec<u8>,
}

impl Lexer {
    /// A lexer at the start of input.
    pub(crate) fn new() -> Lexer {
        Lexer {
            state: State::Start,
            token: Vec::new(),
        }
    }

    /// Bytes of the token being read.
    pub(crate) fn partial_len(&self) -> usize {
        self.token.len()
    }

    /// Drop the partial token and skip input until the next resynchronisation point.
    pub(crate) fn recover(&mut self) {
        self.token.clear();
        self.state = State::Recovery;
    }

    /// Feed one byte; completed tokens (at most two) are appended to `out`.
    pub(crate) fn push(&mut self, byte: u8, out: &mut Vec<Lexeme>) {
        loop {
            match next(self.state, byte) {
                Step::Continue(state) => {
                    self.token.push(byte);
                    self.state = state;
                }
                Step::Complete(kind) => {
                    self.token.push(byte);
                    self.emit(kind, out);
                }
                Step::EndBefore(kind) => {
                    self.emit(kind, out);
                    continue;
                }
                Step::Skip => self.state = State::Start,
                Step::Discard => {}
                Step::Resync => {
                    self.state = State::Start;
                    continue;
                }
                Step::Error => {
                    self.token.push(byte);
                    self.emit(TokenKind::Error, out);
                    self.state = State::Recovery;
                }
            }
            return;
        }
    }

    fn emit(&mut self, kind: TokenKind, out: &mut Vec<Lexeme>) {
        out.push(Lexeme {
            kind,
            text: std::mem::take(&mut self.token),
        });
        self.state = State::Start;
    }
}

/// QEMU's transition table, one state at a time.
fn next(state: State, byte: u8) -> Step {
    match state {
        State::Start => start(byte),
        State::Recovery => recovery(byte),
        State::DqString => string(byte, b'"', State::DqString, State::DqEscape),
        State::SqString => string(byte, b'\'', State::SqString, State::SqEscape),
        State::DqEscape => escape(byte, State::DqString),
        State::SqEscape => escape(byte, State::SqString),
        State::Zero => match byte {
            b'0'..=b'9' => Step::Error,
            b'.' => Step::Continue(State::Mantissa),
            _ => Step::EndBefore(TokenKind::Integer),
        },
        State::Sign => match byte {
            b'0' => Step::Continue(State::Zero),
            b'1'..=b'9' => Step::Continue(State::Digits),
            _ => Step::Error,
        },
        State::Digits => match byte {
            b'0'..=b'9' => Step::Continue(State::Digits),
            b'e' | b'E' => Step::Continue(State::ExpE),
            b'.' => Step::Continue(State::Mantissa),
            _ => Step::EndBefore(TokenKind::Integer),
        },
        State::Mantissa => digit_or_error(byte, State::MantissaDigits),
        State::MantissaDigits => match byte {
            b'0'..=b'9' => Step::Continue(State::MantissaDigits),
            b'e' | b'E' => Step::Continue(State::ExpE),
            _ => Step::EndBefore(TokenKind::Float),
        },
        State::ExpE => match byte {
            b'+' | b'-' => Step::Continue(State::ExpSign),
            _ => digit_or_error(byte, State::ExpDigits),
        },
        State::ExpSign => digit_or_error(byte, State::ExpDigits),
        State::ExpDigits => match byte {
            b'0'..=b'9' => Step::Continue(State::ExpDigits),
            _ => Step::EndBefore(TokenKind::Float),
        },
        State::Keyword => match byte {
            b'a'..=b'z' => Step::Continue(State::Keyword),
            _ => Step::EndBefore(TokenKind::Keyword),
        },
    }
}

fn start(byte: u8) -> Step {
    match byte {
        b'"' => Step::Continue(State::DqString),
        b'\'' => Step::Continue(State::SqString),
        b'0' => Step::Continue(State::Zero),
        b'1'..=b'9' => Step::Continue(State::Digits),
        b'-' => Step::Continue(State::Sign),
        b'{' => Step::Complete(TokenKind::LCurly),
        b'}' => Step::Complete(TokenKind::RCurly),
        b'[' => Step::Complete(TokenKind::LSquare),
        b']' => Step::Complete(TokenKind::RSquare),
        b',' => Step::Complete(TokenKind::Comma),
        b':' => Step::Complete(TokenKind::Colon),
        b'a'..=b'z' => Step::Continue(State::Keyword),
        b' ' | b'\t' | b'\r' | b'\n' => Step::Skip,
        _ => Step::Error,
    }
}

fn recovery(byte: u8) -> Step {
    match byte {
        b'\t' => Step::Discard,
        0..=0x1f | 0xfe | 0xff => Step::Resync,
        b'[' | b']' | b'{' | b'}' | b':' | b',' => Step::Resync,
        _ => Step::Discard,
    }
}

fn string(byte: u8, quote: u8, this: State, escape: State) -> Step {
    match byte {
        b'\\' => Step::Continue(escape),
        b if b == quote => Step::Complete(TokenKind::String),
        0x20..=0xfd => Step::Continue(this),
        _ => Step::Error,
    }
}

fn escape(byte: u8, string: State) -> Step {
    match byte {
        0x20..=0xfd => Step::Continue(string),
        _ => Step::Error,
    }
}

fn digit_or_error(byte: u8, then: State) -> Step {
    if byte.is_ascii_digit() {
        Step::Continue(then)
    } else {
        Step::Error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lex(input: &[u8]) -> Vec<(TokenKind, String)> {
        let mut lexer = Lexer::new();
        let mut out = Vec::new();
        for &b in input {
            lexer.push(b, &mut out);
        }
        out.into_iter()
            .map(|l| (l.kind, String::from_utf8_lossy(&l.text).into_owned()))
            .collect()
    }

    #[test]
    fn object_with_every_scalar_splits_into_tokens() {
        let tokens = lex(br#"{"a": -1.5e3, 'b': [0, true]} "#);
        let kinds: Vec<TokenKind> = tokens.iter().map(|t| t.0).collect();
        use TokenKind::*;
        assert_eq!(
            kinds,
            [
                LCurly, String, Colon, Float, Comma, String, Colon, LSquare, Integer, Comma,
                Keyword, RSquare, RCurly
            ]
        );
        assert_eq!(tokens[3].1, "-1.5e3");
        assert_eq!(tokens[5].1, "'b'");
    }

    #[test]
    fn number_waits_for_the_byte_after_it() {
        assert!(lex(b"42").is_empty());
        assert_eq!(lex(b"42\n"), [(TokenKind::Integer, "42".to_owned())]);
    }

    #[test]
    fn stray_byte_is_an_error_and_recovery_skips_to_a_newline() {
        let tokens = lex(b"@abc def\n{");
        assert_eq!(
            tokens,
            [
                (TokenKind::Error, "@".to_owned()),
                (TokenKind::LCurly, "{".to_owned())
            ]
        );
    }

    #[test]
    fn leading_zero_followed_by_digit_is_an_error() {
        assert_eq!(lex(b"01 ")[0], (TokenKind::Error, "01".to_owned()));
    }

    #[test]
    fn control_character_inside_string_is_an_error() {
        assert_eq!(lex(b"\"ab\n")[0], (TokenKind::Error, "\"ab\n".to_owned()));
    }
}
