//! The `wopbox pack new --lang rust` template compiles against this crate and its node
//! behaves, on any machine: CI has no wasm32 target to build a generated project, so without
//! this a PDK change could break every new Rust project unnoticed. The template's
//! placeholders only occur inside string literals and comments, so the raw file is valid Rust
//! (it must keep plain `//` comments: `include!` refuses inner `//!` docs). Its own
//! `#[cfg(test)]` tests run here too.

mod template {
    include!("../../host/templates/rust/lib.rs.tmpl");
}

use serde_json::{json, Value};
use wopbox_pdk::Context;

const NODE: &str = "__NODE_TYPE__";

fn ctx(configurable: Value) -> Context {
    Context {
        configurable,
        ..Context::default()
    }
}

#[test]
fn the_template_pack_names_its_one_node() {
    let p = template::pack();
    assert_eq!(p.name(), "__PACK_NAME__");
    let out = p
        .invoke_json(NODE, &ctx(json!({"greeting": "Hi"})), r#"{"name":" Ada "}"#)
        .unwrap();
    assert_eq!(out, r#"{"message":"Hi, Ada!"}"#);
}

#[test]
fn the_template_node_fails_with_its_own_codes() {
    let p = template::pack();
    let long = json!({ "name": "n".repeat(101) }).to_string();
    let e = p.invoke_json(NODE, &ctx(Value::Null), &long).unwrap_err();
    assert_eq!(e.code, "name_too_long");
    assert_eq!(e.details, Some(json!({"len": 101})));

    // Inputs and configuration of the wrong shape are refused before the node runs.
    let e = p
        .invoke_json(NODE, &ctx(Value::Null), r#"{"name": 7}"#)
        .unwrap_err();
    assert_eq!(e.code, "validation_error");
    let e = p
        .invoke_json(NODE, &ctx(json!({"greeting": 1})), r#"{"name":"Ada"}"#)
        .unwrap_err();
    assert_eq!(e.code, "validation_error");
    assert!(e.message.contains("configuration"), "{}", e.message);
}
