//! The expression language used by `{"type":"expression"}` input ports and edge conditions
//! of type `expression` (documented in docs/expressions.md).
//!
//! A small, side-effect-free, JavaScript-flavoured subset evaluated over JSON:
//! paths (`variables.x`, `nodes.a.output[0]`, `$.variables['k']`), literals, `! - + * / %`,
//! comparisons (`== != === !== < <= > >=`), `&& || ??`, `a ? b : c`, and a few functions
//! (`len`, `contains`, `lower`, `upper`, `string`, `number`, `exists`). A string containing
//! `{{ ... }}` is a template: a lone `{{ e }}` yields `e`'s JSON value, otherwise each
//! placeholder is interpolated as text.

use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Str(String),
    Ident(String),
    Op(&'static str),
}

const OPS: [&str; 26] = [
    "===", "!==", "==", "!=", "<=", ">=", "&&", "||", "??", "<", ">", "+", "-", "*", "/", "%", "!",
    "(", ")", "[", "]", ".", ",", "?", ":", "$",
];

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    'outer: while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            let s: String = chars[start..i].iter().collect();
            out.push(Tok::Num(
                s.parse().map_err(|_| format!("bad number '{s}'"))?,
            ));
            continue;
        }
        if c == '"' || c == '\'' {
            let q = c;
            i += 1;
            let mut s = String::new();
            while i < chars.len() && chars[i] != q {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                    s.push(match chars[i] {
                        'n' => '\n',
                        't' => '\t',
                        o => o,
                    });
                } else {
                    s.push(chars[i]);
                }
                i += 1;
            }
            if i >= chars.len() {
                return Err("unterminated string literal".into());
            }
            i += 1;
            out.push(Tok::Str(s));
            continue;
        }
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
            continue;
        }
        for op in OPS {
            let n = op.chars().count();
            if i + n <= chars.len() && chars[i..i + n].iter().copied().eq(op.chars()) {
                out.push(Tok::Op(op));
                i += n;
                continue 'outer;
            }
        }
        return Err(format!("unexpected character '{c}'"));
    }
    Ok(out)
}

#[derive(Debug, Clone)]
pub enum Expr {
    Lit(Value),
    /// Root identifier (`$` = the whole context).
    Root(String),
    Member(Box<Expr>, Box<Expr>),
    Unary(&'static str, Box<Expr>),
    Binary(&'static str, Box<Expr>, Box<Expr>),
    Cond(Box<Expr>, Box<Expr>, Box<Expr>),
    Call(String, Vec<Expr>),
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn eat(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Op(o)) if *o == op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, op: &str) -> Result<(), String> {
        if self.eat(op) {
            Ok(())
        } else {
            Err(format!("expected '{op}'"))
        }
    }
    fn expr(&mut self) -> Result<Expr, String> {
        let c = self.binary(0)?;
        if self.eat("?") {
            let a = self.expr()?;
            self.expect(":")?;
            let b = self.expr()?;
            return Ok(Expr::Cond(Box::new(c), Box::new(a), Box::new(b)));
        }
        Ok(c)
    }
    fn prec(op: &str) -> Option<u8> {
        Some(match op {
            "??" => 1,
            "||" => 2,
            "&&" => 3,
            "==" | "!=" | "===" | "!==" => 4,
            "<" | "<=" | ">" | ">=" => 5,
            "+" | "-" => 6,
            "*" | "/" | "%" => 7,
            _ => return None,
        })
    }
    fn binary(&mut self, min: u8) -> Result<Expr, String> {
        let mut lhs = self.unary()?;
        while let Some(Tok::Op(op)) = self.peek() {
            let op = *op;
            let p = match Self::prec(op) {
                Some(p) if p > min => p,
                _ => break,
            };
            self.pos += 1;
            let rhs = self.binary(p)?;
            lhs = Expr::Binary(op, Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }
    fn unary(&mut self) -> Result<Expr, String> {
        if self.eat("!") {
            return Ok(Expr::Unary("!", Box::new(self.unary()?)));
        }
        if self.eat("-") {
            return Ok(Expr::Unary("-", Box::new(self.unary()?)));
        }
        self.postfix()
    }
    fn postfix(&mut self) -> Result<Expr, String> {
        let mut e = self.primary()?;
        loop {
            if self.eat(".") {
                match self.toks.get(self.pos).cloned() {
                    Some(Tok::Ident(name)) => {
                        self.pos += 1;
                        e = Expr::Member(Box::new(e), Box::new(Expr::Lit(json!(name))));
                    }
                    _ => return Err("expected property name after '.'".into()),
                }
            } else if self.eat("[") {
                let idx = self.expr()?;
                self.expect("]")?;
                e = Expr::Member(Box::new(e), Box::new(idx));
            } else {
                break;
            }
        }
        Ok(e)
    }
    fn primary(&mut self) -> Result<Expr, String> {
        let t = self
            .toks
            .get(self.pos)
            .cloned()
            .ok_or("unexpected end of expression")?;
        self.pos += 1;
        Ok(match t {
            Tok::Num(n) => Expr::Lit(num_value(n)),
            Tok::Str(s) => Expr::Lit(json!(s)),
            Tok::Op("$") => Expr::Root("$".into()),
            Tok::Op("(") => {
                let e = self.expr()?;
                self.expect(")")?;
                e
            }
            Tok::Ident(id) => match id.as_str() {
                "true" => Expr::Lit(json!(true)),
                "false" => Expr::Lit(json!(false)),
                "null" | "undefined" => Expr::Lit(Value::Null),
                _ if self.eat("(") => {
                    let mut args = Vec::new();
                    if !self.eat(")") {
                        loop {
                            args.push(self.expr()?);
                            if self.eat(")") {
                                break;
                            }
                            self.expect(",")?;
                        }
                    }
                    if !FUNCTIONS.contains(&id.as_str()) {
                        return Err(format!("unknown function '{id}'"));
                    }
                    Expr::Call(id, args)
                }
                _ => Expr::Root(id),
            },
            Tok::Op(o) => return Err(format!("unexpected '{o}'")),
        })
    }
}

const FUNCTIONS: [&str; 7] = [
    "len", "contains", "lower", "upper", "string", "number", "exists",
];

pub fn parse(src: &str) -> Result<Expr, String> {
    let mut p = Parser {
        toks: lex(src)?,
        pos: 0,
    };
    let e = p.expr()?;
    if p.pos != p.toks.len() {
        return Err(format!("unexpected trailing input in '{src}'"));
    }
    Ok(e)
}

/// Parse-check an expression or template without evaluating it.
pub fn check(src: &str) -> Result<(), String> {
    match template_parts(src)? {
        Some(parts) => {
            for p in parts {
                if let Part::Expr(e) = p {
                    parse(&e)?;
                }
            }
            Ok(())
        }
        None => parse(src).map(|_| ()),
    }
}

enum Part {
    Text(String),
    Expr(String),
}

fn template_parts(src: &str) -> Result<Option<Vec<Part>>, String> {
    if !src.contains("{{") {
        return Ok(None);
    }
    let mut parts = Vec::new();
    let mut rest = src;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            parts.push(Part::Text(rest[..start].to_string()));
        }
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or("unterminated '{{' in template")?;
        parts.push(Part::Expr(after[..end].trim().to_string()));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    Ok(Some(parts))
}

/// Evaluate an expression or template string against `ctx` (a JSON object of roots).
pub fn evaluate(src: &str, ctx: &Value) -> Result<Value, String> {
    match template_parts(src)? {
        None => eval(&parse(src)?, ctx),
        Some(parts) => {
            if let [Part::Expr(e)] = parts.as_slice() {
                return eval(&parse(e)?, ctx);
            }
            let mut s = String::new();
            for p in parts {
                match p {
                    Part::Text(t) => s.push_str(&t),
                    Part::Expr(e) => s.push_str(&to_text(&eval(&parse(&e)?, ctx)?)),
                }
            }
            Ok(Value::String(s))
        }
    }
}

pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().map(|f| f != 0.0 && !f.is_nan()).unwrap_or(false),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

fn to_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Number(n) => num_text(n.as_f64().unwrap_or(0.0)),
        other => other.to_string(),
    }
}

fn num_text(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{}", f as i64)
    } else {
        format!("{f}")
    }
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::Null => Some(0.0),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn num_value(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        json!(f as i64)
    } else {
        json!(f)
    }
}

/// Loose equality: numbers compare numerically, everything else structurally.
pub fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Resolve a dotted path (`a.b[0].c`) inside a JSON value. Returns None when absent.
pub fn lookup_path<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = root;
    let normalized = path
        .trim()
        .trim_start_matches("$.")
        .replace('[', ".")
        .replace(']', "");
    for seg in normalized.split('.').filter(|s| !s.is_empty()) {
        let seg = seg.trim_matches(|c| c == '\'' || c == '"');
        cur = match cur {
            Value::Object(m) => m.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn member(base: &Value, key: &Value) -> Value {
    match (base, key) {
        (Value::Object(m), Value::String(k)) => m.get(k).cloned().unwrap_or(Value::Null),
        (Value::Array(a), Value::Number(n)) => n
            .as_u64()
            .and_then(|i| a.get(i as usize))
            .cloned()
            .unwrap_or(Value::Null),
        (Value::Array(a), Value::String(k)) if k == "length" => json!(a.len()),
        (Value::String(s), Value::String(k)) if k == "length" => json!(s.chars().count()),
        _ => Value::Null,
    }
}

fn eval(e: &Expr, ctx: &Value) -> Result<Value, String> {
    Ok(match e {
        Expr::Lit(v) => v.clone(),
        Expr::Root(name) if name == "$" => ctx.clone(),
        Expr::Root(name) => ctx.get(name).cloned().unwrap_or(Value::Null),
        Expr::Member(b, k) => member(&eval(b, ctx)?, &eval(k, ctx)?),
        Expr::Unary(op, x) => {
            let v = eval(x, ctx)?;
            match *op {
                "!" => json!(!truthy(&v)),
                _ => num_value(-num(&v).ok_or("unary '-' needs a number")?),
            }
        }
        Expr::Cond(c, a, b) => {
            if truthy(&eval(c, ctx)?) {
                eval(a, ctx)?
            } else {
                eval(b, ctx)?
            }
        }
        Expr::Binary(op, l, r) => {
            let lv = eval(l, ctx)?;
            match *op {
                "&&" => return if truthy(&lv) { eval(r, ctx) } else { Ok(lv) },
                "||" => return if truthy(&lv) { Ok(lv) } else { eval(r, ctx) },
                "??" => return if lv.is_null() { eval(r, ctx) } else { Ok(lv) },
                _ => {}
            }
            let rv = eval(r, ctx)?;
            match *op {
                "==" | "===" => json!(loose_eq(&lv, &rv)),
                "!=" | "!==" => json!(!loose_eq(&lv, &rv)),
                "<" | "<=" | ">" | ">=" => {
                    let ord = match (&lv, &rv) {
                        (Value::String(a), Value::String(b)) => a.partial_cmp(b),
                        _ => match (num(&lv), num(&rv)) {
                            (Some(a), Some(b)) => a.partial_cmp(&b),
                            _ => None,
                        },
                    };
                    json!(match ord {
                        None => false,
                        Some(o) => match *op {
                            "<" => o.is_lt(),
                            "<=" => o.is_le(),
                            ">" => o.is_gt(),
                            _ => o.is_ge(),
                        },
                    })
                }
                "+" if lv.is_string() || rv.is_string() => {
                    json!(format!("{}{}", to_text(&lv), to_text(&rv)))
                }
                _ => {
                    let (a, b) = match (num(&lv), num(&rv)) {
                        (Some(a), Some(b)) => (a, b),
                        _ => return Err(format!("operator '{op}' needs numbers")),
                    };
                    let f = match *op {
                        "+" => a + b,
                        "-" => a - b,
                        "*" => a * b,
                        "/" => {
                            if b == 0.0 {
                                return Err("division by zero".into());
                            }
                            a / b
                        }
                        _ => {
                            if b == 0.0 {
                                return Err("division by zero".into());
                            }
                            a % b
                        }
                    };
                    num_value(f)
                }
            }
        }
        Expr::Call(f, args) => {
            let vals = args
                .iter()
                .map(|a| eval(a, ctx))
                .collect::<Result<Vec<_>, _>>()?;
            let arg = |i: usize| vals.get(i).cloned().unwrap_or(Value::Null);
            match f.as_str() {
                "len" => json!(match arg(0) {
                    Value::String(s) => s.chars().count(),
                    Value::Array(a) => a.len(),
                    Value::Object(m) => m.len(),
                    _ => 0,
                }),
                "contains" => json!(contains(&arg(0), &arg(1))),
                "lower" => json!(to_text(&arg(0)).to_lowercase()),
                "upper" => json!(to_text(&arg(0)).to_uppercase()),
                "string" => json!(to_text(&arg(0))),
                "number" => num(&arg(0)).map(num_value).unwrap_or(Value::Null),
                _ => json!(!arg(0).is_null()),
            }
        }
    })
}

/// `contains` semantics shared with edge conditions: substring, array membership, object key.
pub fn contains(hay: &Value, needle: &Value) -> bool {
    match hay {
        Value::String(s) => s.contains(&to_text(needle)),
        Value::Array(a) => a.iter().any(|x| loose_eq(x, needle)),
        Value::Object(m) => needle.as_str().map(|k| m.contains_key(k)).unwrap_or(false),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluates() {
        let ctx =
            json!({"variables": {"n": 3, "s": "hi", "list": [1, 2]}, "nodes": {"a": {"x": true}}});
        assert_eq!(evaluate("variables.n * 2 + 1", &ctx).unwrap(), json!(7));
        assert_eq!(evaluate("variables.s + '!'", &ctx).unwrap(), json!("hi!"));
        assert_eq!(
            evaluate("nodes.a.x && variables.n > 2", &ctx).unwrap(),
            json!(true)
        );
        assert_eq!(evaluate("variables.list[1]", &ctx).unwrap(), json!(2));
        assert_eq!(evaluate("$.variables['s']", &ctx).unwrap(), json!("hi"));
        assert_eq!(evaluate("{{ variables.n }}", &ctx).unwrap(), json!(3));
        assert_eq!(evaluate("n={{variables.n}}!", &ctx).unwrap(), json!("n=3!"));
        assert_eq!(
            evaluate("variables.missing ?? 'd'", &ctx).unwrap(),
            json!("d")
        );
        assert_eq!(
            evaluate("len(variables.list) == 2 ? 'y' : 'n'", &ctx).unwrap(),
            json!("y")
        );
        assert!(parse("1 +").is_err());
        assert!(parse("foo(1)").is_err());
    }
}
