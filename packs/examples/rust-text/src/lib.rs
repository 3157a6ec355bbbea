//! `vendor.wopbox.text`: an example node pack written with `wopbox-pdk`.
//!
//! Two nodes, two styles: `slugify` is a plain function, `stats` a
//! [`Node`] impl that reads its configuration. Neither touches the raw ABI:
//! the PDK generates the RFC 0008 exports (or the component world, built for
//! `wasm32-wasip2`), decodes inputs, encodes outputs and reports the typed
//! errors below as `node.failed` with their own codes.

use serde::{Deserialize, Serialize};
use wopbox_pdk::{log, Context, Node, NodeError, Pack};

/// What can go wrong, each with its own stable code.
#[derive(Debug)]
pub enum TextError {
    Empty,
    TooLong { len: usize, max: usize },
}

impl From<TextError> for NodeError {
    fn from(e: TextError) -> Self {
        match e {
            TextError::Empty => NodeError::validation("text must not be empty"),
            TextError::TooLong { len, max } => NodeError::new(
                "text_too_long",
                format!("text is {len} bytes, the limit is {max}"),
            )
            .with_details(serde_json::json!({ "len": len, "max": max })),
        }
    }
}
use wopbox_pdk::serde_json;

const MAX_TEXT: usize = 64 * 1024;

fn check(text: &str) -> Result<(), TextError> {
    if text.trim().is_empty() {
        return Err(TextError::Empty);
    }
    if text.len() > MAX_TEXT {
        return Err(TextError::TooLong {
            len: text.len(),
            max: MAX_TEXT,
        });
    }
    Ok(())
}

#[derive(Deserialize)]
pub struct SlugIn {
    pub text: String,
}

#[derive(Serialize)]
pub struct SlugOut {
    pub slug: String,
}

/// `vendor.wopbox.text.slugify`: `{text}` → `{slug}` (lowercase ASCII words joined by `-`).
pub fn slugify(_ctx: &Context, input: SlugIn) -> Result<SlugOut, TextError> {
    check(&input.text)?;
    let slug = input
        .text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect::<Vec<_>>()
        .join("-");
    log::info(&format!("slugified {} bytes", input.text.len()));
    Ok(SlugOut { slug })
}

/// `vendor.wopbox.text.stats`: word/line/char counts and the `top` most
/// frequent words (configuration `{"top": N}`, default 3).
pub struct Stats;

#[derive(Deserialize)]
pub struct StatsIn {
    pub text: String,
}

#[derive(Serialize)]
pub struct StatsOut {
    pub words: usize,
    pub lines: usize,
    pub chars: usize,
    pub top: Vec<(String, usize)>,
}

#[derive(Deserialize)]
#[serde(default)]
struct StatsConfig {
    top: usize,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig { top: 3 }
    }
}

impl Node for Stats {
    const TYPE_ID: &'static str = "vendor.wopbox.text.stats";
    type Input = StatsIn;
    type Output = StatsOut;
    type Error = NodeError;

    fn run(&self, ctx: &Context, input: StatsIn) -> Result<StatsOut, NodeError> {
        let cfg: StatsConfig = ctx.config()?;
        check(&input.text)?;
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for w in input.text.split_whitespace() {
            let w = w
                .trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase();
            if !w.is_empty() {
                *counts.entry(w).or_default() += 1;
            }
        }
        let mut top: Vec<(String, usize)> = counts.into_iter().collect();
        // Most frequent first; ties alphabetically, so the answer is stable.
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(cfg.top);
        Ok(StatsOut {
            words: input.text.split_whitespace().count(),
            lines: input.text.lines().count(),
            chars: input.text.chars().count(),
            top,
        })
    }
}

pub fn pack() -> Pack {
    Pack::new("vendor.wopbox.text", env!("CARGO_PKG_VERSION"))
        .func("vendor.wopbox.text.slugify", slugify)
        .node(Stats)
}

wopbox_pdk::export_pack!(pack);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_answer_and_fail_with_their_codes() {
        let p = pack();
        let ctx = Context::default();
        assert_eq!(
            p.invoke_json(
                "vendor.wopbox.text.slugify",
                &ctx,
                r#"{"text":"Hello, Wasm World!"}"#
            )
            .unwrap(),
            r#"{"slug":"hello-wasm-world"}"#
        );
        let e = p
            .invoke_json("vendor.wopbox.text.slugify", &ctx, r#"{"text":"  "}"#)
            .unwrap_err();
        assert_eq!(e.code, "validation_error");
        let ctx = Context {
            configurable: serde_json::json!({"top": 1}),
            ..Context::default()
        };
        let out = p
            .invoke_json("vendor.wopbox.text.stats", &ctx, r#"{"text":"a b a\nc"}"#)
            .unwrap();
        assert_eq!(out, r#"{"chars":7,"lines":2,"top":[["a",2]],"words":4}"#);
    }
}
