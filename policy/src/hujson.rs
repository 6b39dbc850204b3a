//! HuJSON ("human JSON": JSON plus `//` and `/* */` comments and trailing
//! commas) reduced to plain JSON, so `serde_json` can read it.
//!
//! No well-kept lean Rust crate reads HuJSON exactly (JSON5 accepts far more,
//! e.g. unquoted keys, which Tailscale refuses), so this is a small linear
//! pass. Comments become spaces (newlines stay), so line numbers in
//! `serde_json`'s errors still point into the original text.

use crate::PolicyError;

/// Strips comments and trailing commas. Strings are copied untouched
/// (escapes included); an unterminated block comment is refused.
pub(crate) fn to_json(text: &str) -> Result<String, PolicyError> {
    let no_comments = strip_comments(text)?;
    Ok(strip_trailing_commas(&no_comments))
}

fn strip_comments(text: &str) -> Result<String, PolicyError> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    let mut in_string = false;
    while let Some((_, c)) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        out.push(escaped);
                    }
                }
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '/' if matches!(chars.peek(), Some((_, '/'))) => {
                out.push_str("  ");
                chars.next();
                // A line comment runs to the end of the line; the newline
                // itself is kept so line numbers stay right.
                while let Some(&(_, next)) = chars.peek() {
                    if next == '\n' {
                        break;
                    }
                    blank(&mut out, next);
                    chars.next();
                }
            }
            '/' if matches!(chars.peek(), Some((_, '*'))) => {
                let (start, _) = chars.next().unwrap_or((0, '*'));
                out.push_str("  ");
                let mut closed = false;
                while let Some((_, next)) = chars.next() {
                    if next == '*' && matches!(chars.peek(), Some((_, '/'))) {
                        chars.next();
                        out.push_str("  ");
                        closed = true;
                        break;
                    }
                    blank(&mut out, next);
                }
                if !closed {
                    let line = text[..start].matches('\n').count() + 1;
                    return Err(PolicyError::Syntax(format!(
                        "unterminated /* comment starting on line {line}"
                    )));
                }
            }
            _ => out.push(c),
        }
    }
    Ok(out)
}

/// A comment's character becomes a space (a newline stays a newline).
fn blank(out: &mut String, c: char) {
    out.push(if c == '\n' { '\n' } else { ' ' });
}

fn strip_trailing_commas(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            out.push(c);
            continue;
        }
        if c == '"' {
            in_string = true;
        }
        if c == ',' {
            // Look past whitespace only: the scan stops at the first other
            // byte, so the whole pass stays linear.
            let next = bytes[i + 1..]
                .iter()
                .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
            if matches!(next, Some(b']') | Some(b'}')) {
                out.push(' ');
                continue;
            }
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod unit {
    use super::to_json;

    #[test]
    fn comments_and_trailing_commas_go() {
        let text =
            "{\n // a comment\n \"a\": [1, 2, /* two */ ],\n \"b\": \"//not a comment,]\",\n}";
        let json = to_json(text).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["a"], serde_json::json!([1, 2]));
        assert_eq!(v["b"], "//not a comment,]");
    }

    #[test]
    fn escaped_quote_does_not_end_string() {
        let json = to_json(r#"{"a": "x\" // y", }"#).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["a"], "x\" // y");
    }

    #[test]
    fn unterminated_block_comment_is_refused() {
        assert!(to_json("{ /* open").is_err());
    }
}
