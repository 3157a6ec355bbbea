//! RFC 8785 JSON Canonicalization Scheme (JCS): the byte form the audit chain hashes.
//!
//! Object members are sorted by their UTF-16 code units, there is no insignificant whitespace,
//! strings use the minimal JSON escaping of ECMAScript `JSON.stringify`, and numbers use the
//! ECMAScript `Number.prototype.toString` form — so a verifier in any language that implements
//! JCS recomputes the same hashes.

use serde_json::Value;

pub fn canonicalize(v: &Value) -> String {
    let mut out = String::new();
    write(v, &mut out);
    out
}

fn write(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push_str(&i.to_string());
            } else if let Some(u) = n.as_u64() {
                out.push_str(&u.to_string());
            } else {
                out.push_str(&es_number(n.as_f64().unwrap_or(0.0)));
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write(&map[k], out);
            }
            out.push('}');
        }
    }
}

/// `JSON.stringify` string escaping: `"`, `\`, and C0 controls only (short forms where they
/// exist, otherwise `\u00xx` in lowercase hex); everything else is emitted as UTF-8.
fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// ECMAScript Number::toString for a finite double (RFC 8785 §3.2.2.3).
fn es_number(f: f64) -> String {
    if f == 0.0 {
        return "0".into();
    }
    if !f.is_finite() {
        // Not representable in JSON; serde_json never produces it.
        return "null".into();
    }
    let sign = if f < 0.0 { "-" } else { "" };
    // Rust's `{:e}` prints the shortest round-tripping digits: "d.ddde[-]x".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let k = digits.len() as i32;
    let n = exp.parse::<i32>().unwrap_or(0) + 1;
    let body = if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        format!("{}.{}", &digits[..n as usize], &digits[n as usize..])
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let e = n - 1;
        let esign = if e < 0 { "-" } else { "+" };
        if k == 1 {
            format!("{digits}e{esign}{}", e.abs())
        } else {
            format!("{}.{}e{esign}{}", &digits[..1], &digits[1..], e.abs())
        }
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_keys_by_utf16_and_strips_whitespace() {
        let v = json!({"b": 1, "a": [true, null, "x"], "\u{e000}": 1, "\u{1f600}": 2});
        // U+1F600 is a surrogate pair (0xD83D...) and sorts before U+E000 in UTF-16 order,
        // although its UTF-8 bytes sort after.
        assert_eq!(
            canonicalize(&v),
            "{\"a\":[true,null,\"x\"],\"b\":1,\"\u{1f600}\":2,\"\u{e000}\":1}"
        );
    }

    #[test]
    fn escapes_like_json_stringify() {
        let v = json!("q\"b\\n\n\u{1}\u{7f}é/");
        assert_eq!(canonicalize(&v), "\"q\\\"b\\\\n\\n\\u0001\u{7f}é/\"");
    }

    #[test]
    fn numbers_follow_ecmascript() {
        // Vectors from RFC 8785 Appendix B.
        let cases = [
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (1.5e-7, "1.5e-7"),
            (0.000001, "0.000001"),
            (-1.25, "-1.25"),
            (333333333.3333333, "333333333.3333333"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (9007199254740994.0, "9007199254740994"),
        ];
        for (f, want) in cases {
            assert_eq!(es_number(f), want, "{f}");
        }
        assert_eq!(canonicalize(&json!(-0.0)), "0");
        assert_eq!(canonicalize(&json!(42)), "42");
    }
}
