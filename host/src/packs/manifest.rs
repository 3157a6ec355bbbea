//! `pack.json` validation for WebAssembly node packs.
//!
//! Uploaded manifests are untrusted input, so validation walks the raw JSON
//! and reports the first problem with a JSON-pointer path (`details.path`),
//! which is what `400 invalid_manifest` carries per node-packs.md. Only the
//! parts of the manifest the host acts on are typed out in [`PackManifest`].

use serde_json::{Map, Value};

use super::error::PackError;

/// Runtime primitives a pack may declare in `runtime.requires` (RFC 0076,
/// closed vocabulary). Declaring one is a request; the operator's policy
/// decides whether it is granted.
pub const RUNTIME_PRIMITIVES: &[&str] = &[
    "net.dns",
    "net.outbound",
    "crypto",
    "subprocess",
    "fs.read",
    "fs.write",
    "env.read",
    "clock",
];

const NODE_CAPABILITIES: &[&str] = &[
    "streamable",
    "cacheable",
    "side-effectful",
    "mcp-exportable",
];
const MAX_NODES: usize = 256;

/// How the pack's entry artifact is executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PackRuntime {
    /// RFC 0008 core module.
    Wasm,
    /// Component implementing `wit/node-pack.wit`.
    WasmComponent,
}

impl PackRuntime {
    pub fn as_str(self) -> &'static str {
        match self {
            PackRuntime::Wasm => "wasm",
            PackRuntime::WasmComponent => "wasm-component",
        }
    }
}

/// One node type a pack declares.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PackNode {
    #[serde(rename = "typeId")]
    pub type_id: String,
    pub version: String,
}

/// The validated parts of a manifest the host needs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PackManifest {
    pub name: String,
    pub version: String,
    pub runtime: PackRuntime,
    /// Path of the module/component inside the pack (normalised, relative).
    pub entry: String,
    /// `runtime.wasm.abiVersion` when present (cross-checked against the
    /// module's own `openwop_abi_version()` at load).
    pub abi_version: Option<i64>,
    /// `runtime.wasm.memoryPagesMax`: a request, clamped to the host cap.
    pub memory_pages_max: Option<u64>,
    /// `runtime.requires[]`.
    pub requires: Vec<String>,
    pub nodes: Vec<PackNode>,
    /// The manifest exactly as uploaded, for `GET .../{version}.json`.
    #[serde(skip)]
    pub raw: Value,
}

fn invalid(path: &str, message: impl Into<String>) -> PackError {
    PackError::InvalidManifest {
        path: path.to_string(),
        message: message.into(),
    }
}

fn get_str<'a>(obj: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a str, PackError> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(invalid(
            &format!("{path}/{key}"),
            format!("`{key}` must not be empty"),
        )),
        Some(_) => Err(invalid(
            &format!("{path}/{key}"),
            format!("`{key}` must be a string"),
        )),
        None => Err(invalid(path, format!("missing required field `{key}`"))),
    }
}

/// `^(core|vendor|community|private)\.[a-z][a-z0-9_-]*(\.[a-z][a-zA-Z0-9_-]*)+$`
/// from the manifest schema, written out so no regex engine is needed.
pub(crate) fn name_matches_schema(name: &str) -> bool {
    if name.len() > 256 {
        return false;
    }
    let mut parts = name.split('.');
    let Some(scope) = parts.next() else {
        return false;
    };
    if !matches!(scope, "core" | "vendor" | "community" | "private") {
        return false;
    }
    let rest: Vec<&str> = parts.collect();
    if rest.len() < 2 {
        return false;
    }
    rest.iter().enumerate().all(|(i, seg)| {
        let mut chars = seg.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
        first_ok
            && chars.all(|c| {
                (if i == 0 {
                    c.is_ascii_lowercase()
                } else {
                    c.is_ascii_alphabetic()
                }) || c.is_ascii_digit()
                    || c == '_'
                    || c == '-'
            })
    })
}

/// `^[a-z][a-zA-Z0-9._-]*$`, at most 256 bytes.
pub fn type_id_matches_schema(type_id: &str) -> bool {
    let mut chars = type_id.chars();
    type_id.len() <= 256
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Semver 2.0.0 shape: `MAJOR.MINOR.PATCH[-pre][+build]`.
pub fn version_matches_schema(v: &str) -> bool {
    let (core, _build) = match v.split_once('+') {
        Some((c, b)) => {
            if b.is_empty()
                || !b
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            {
                return false;
            }
            (c, Some(b))
        }
        None => (v, None),
    };
    let (nums, pre) = match core.split_once('-') {
        Some((n, p)) => (n, Some(p)),
        None => (core, None),
    };
    if let Some(p) = pre {
        if p.is_empty()
            || !p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        {
            return false;
        }
    }
    let parts: Vec<&str> = nums.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 20 && p.chars().all(|c| c.is_ascii_digit()))
}

/// A path inside the pack: relative, no `..`, no absolute or drive prefix.
pub fn normalise_pack_path(p: &str) -> Option<String> {
    if p.is_empty() || p.starts_with('/') || p.contains('\\') || p.contains('\0') {
        return None;
    }
    let mut out = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => return None,
            s => out.push(s),
        }
    }
    if out.is_empty() {
        None
    } else {
        Some(out.join("/"))
    }
}

/// Validate an uploaded `pack.json` (already parsed as JSON).
pub fn validate_manifest(raw: &Value) -> Result<PackManifest, PackError> {
    let obj = raw
        .as_object()
        .ok_or_else(|| invalid("", "pack.json must be a JSON object"))?;

    // Exactly one content kind; node packs are the only kind a sandbox host runs.
    let kinds: Vec<&str> = ["nodes", "chains", "prompts", "artifactTypes", "cards"]
        .into_iter()
        .filter(|k| obj.contains_key(*k))
        .collect();
    if kinds.len() > 1 {
        return Err(PackError::KindInvalid(format!(
            "a manifest declares exactly one of nodes[]/chains[]/prompts[]/artifactTypes[]/cards[]; found {}",
            kinds.join(", ")
        )));
    }
    match obj.get("kind") {
        None => {}
        Some(Value::String(k)) if k == "node" => {}
        Some(other) => {
            return Err(PackError::KindInvalid(format!(
                "this host installs node packs only (`kind` is {other})"
            )))
        }
    }

    let name = get_str(obj, "name", "")?;
    if name.starts_with("local.") {
        return Err(PackError::InvalidScope(format!(
            "`local.*` packs are never published: {name}"
        )));
    }
    if !name_matches_schema(name) {
        return Err(PackError::InvalidScope(format!(
            "pack name `{name}` must be reverse-DNS under vendor.*, community.* or private.*"
        )));
    }
    if name.starts_with("core.") {
        return Err(PackError::InvalidScope(format!(
            "`core.*` is reserved for spec-canonical packs: {name}"
        )));
    }
    let version = get_str(obj, "version", "")?;
    if !version_matches_schema(version) {
        return Err(invalid(
            "/version",
            format!("`{version}` is not a semantic version"),
        ));
    }

    let engines = obj
        .get("engines")
        .ok_or_else(|| invalid("", "missing required field `engines`"))?
        .as_object()
        .ok_or_else(|| invalid("/engines", "`engines` must be an object"))?;
    // The range is recorded, not enforced: the conformance memory-bomb pack
    // declares `>=2.0.0 <3.0.0` and must still load on a v1 host.
    get_str(engines, "openwop", "/engines")?;

    let runtime = obj
        .get("runtime")
        .ok_or_else(|| invalid("", "missing required field `runtime`"))?
        .as_object()
        .ok_or_else(|| invalid("/runtime", "`runtime` must be an object"))?;
    for key in runtime.keys() {
        if !matches!(
            key.as_str(),
            "language" | "entry" | "format" | "minRuntimeVersion" | "wasm" | "requires" | "world"
        ) {
            return Err(invalid(
                &format!("/runtime/{key}"),
                format!("unknown runtime field `{key}`"),
            ));
        }
    }
    let language = get_str(runtime, "language", "/runtime")?;
    let kind = match language {
        "wasm" => PackRuntime::Wasm,
        "wasm-component" => PackRuntime::WasmComponent,
        "javascript" | "python" | "go" | "remote" => {
            return Err(PackError::UnsupportedRuntime(language.to_string()))
        }
        other => {
            return Err(invalid(
                "/runtime/language",
                format!("unknown runtime language `{other}`"),
            ))
        }
    };
    if let Some(format) = runtime.get("format") {
        let f = format
            .as_str()
            .ok_or_else(|| invalid("/runtime/format", "`format` must be a string"))?;
        if f != kind.as_str() {
            return Err(invalid(
                "/runtime/format",
                format!(
                    "`format` `{f}` does not match `language` `{}`",
                    kind.as_str()
                ),
            ));
        }
    }
    let entry_raw = get_str(runtime, "entry", "/runtime")?;
    let entry = normalise_pack_path(entry_raw).ok_or_else(|| {
        invalid(
            "/runtime/entry",
            format!("`{entry_raw}` is not a relative path inside the pack"),
        )
    })?;

    let (abi_version, memory_pages_max) = match runtime.get("wasm") {
        None => (None, None),
        Some(Value::Object(w)) => {
            let abi = match w.get("abiVersion") {
                Some(v) => Some(
                    v.as_i64()
                        .ok_or_else(|| invalid("/runtime/wasm/abiVersion", "must be an integer"))?,
                ),
                None => {
                    return Err(invalid(
                        "/runtime/wasm",
                        "`abiVersion` is required when `wasm` is present",
                    ))
                }
            };
            let pages = match w.get("memoryPagesMax") {
                Some(v) => Some(v.as_u64().ok_or_else(|| {
                    invalid(
                        "/runtime/wasm/memoryPagesMax",
                        "must be a non-negative integer",
                    )
                })?),
                None => None,
            };
            if let Some(v) = w.get("memoryPagesInitial") {
                v.as_u64().ok_or_else(|| {
                    invalid(
                        "/runtime/wasm/memoryPagesInitial",
                        "must be a non-negative integer",
                    )
                })?;
            }
            (abi, pages)
        }
        Some(_) => return Err(invalid("/runtime/wasm", "`wasm` must be an object")),
    };

    let mut requires = Vec::new();
    if let Some(r) = runtime.get("requires") {
        let arr = r
            .as_array()
            .ok_or_else(|| invalid("/runtime/requires", "`requires` must be an array"))?;
        for (i, item) in arr.iter().enumerate() {
            let s = item
                .as_str()
                .ok_or_else(|| invalid(&format!("/runtime/requires/{i}"), "must be a string"))?;
            if !RUNTIME_PRIMITIVES.contains(&s) {
                return Err(invalid(
                    &format!("/runtime/requires/{i}"),
                    format!(
                        "unknown runtime primitive `{s}` (known: {})",
                        RUNTIME_PRIMITIVES.join(", ")
                    ),
                ));
            }
            if !requires.iter().any(|x: &String| x == s) {
                requires.push(s.to_string());
            }
        }
    }

    let nodes_raw = obj
        .get("nodes")
        .ok_or_else(|| invalid("", "a node pack must declare `nodes[]`"))?
        .as_array()
        .ok_or_else(|| invalid("/nodes", "`nodes` must be an array"))?;
    if nodes_raw.is_empty() {
        return Err(invalid("/nodes", "`nodes` must contain at least one node"));
    }
    if nodes_raw.len() > MAX_NODES {
        return Err(invalid(
            "/nodes",
            format!("at most {MAX_NODES} nodes per pack"),
        ));
    }
    let mut nodes: Vec<PackNode> = Vec::with_capacity(nodes_raw.len());
    for (i, n) in nodes_raw.iter().enumerate() {
        let path = format!("/nodes/{i}");
        let n = n
            .as_object()
            .ok_or_else(|| invalid(&path, "node must be an object"))?;
        let type_id = get_str(n, "typeId", &path)?;
        if !type_id_matches_schema(type_id) {
            return Err(invalid(
                &format!("{path}/typeId"),
                format!("`{type_id}` is not a valid typeId"),
            ));
        }
        if type_id.starts_with("core.") {
            return Err(invalid(
                &format!("{path}/typeId"),
                "`core.*` typeIds are reserved for the host",
            ));
        }
        if nodes.iter().any(|x| x.type_id == type_id) {
            return Err(invalid(
                &format!("{path}/typeId"),
                format!("duplicate typeId `{type_id}`"),
            ));
        }
        let nversion = get_str(n, "version", &path)?;
        // The schema lists a closed set of categories, but the protocol's own
        // reference pack (rust-hello) ships `examples`; the field only groups
        // nodes in editors, so any non-empty string is accepted.
        get_str(n, "category", &path)?;
        get_str(n, "role", &path)?;
        if let Some(caps) = n.get("capabilities") {
            let caps = caps
                .as_array()
                .ok_or_else(|| invalid(&format!("{path}/capabilities"), "must be an array"))?;
            for (j, c) in caps.iter().enumerate() {
                if !c.as_str().is_some_and(|c| NODE_CAPABILITIES.contains(&c)) {
                    return Err(invalid(
                        &format!("{path}/capabilities/{j}"),
                        "unknown node capability",
                    ));
                }
            }
        }
        nodes.push(PackNode {
            type_id: type_id.to_string(),
            version: nversion.to_string(),
        });
    }

    Ok(PackManifest {
        name: name.to_string(),
        version: version.to_string(),
        runtime: kind,
        entry,
        abi_version,
        memory_pages_max,
        requires,
        nodes,
        raw: raw.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good() -> Value {
        json!({
            "name": "vendor.wopbox.greet",
            "version": "1.0.0",
            "engines": {"openwop": ">=1.0 <2.0.0"},
            "nodes": [{"typeId": "vendor.wopbox.greet.hello", "version": "1.0.0", "category": "data", "role": "pure"}],
            "runtime": {"language": "wasm", "entry": "./greet.wasm", "format": "wasm", "wasm": {"abiVersion": 1}}
        })
    }

    fn path_of(e: PackError) -> String {
        match e {
            PackError::InvalidManifest { path, .. } => path,
            other => panic!("expected invalid_manifest, got {other:?}"),
        }
    }

    #[test]
    fn accepts_a_wasm_pack_and_normalises_entry() {
        let m = validate_manifest(&good()).unwrap();
        assert_eq!(m.entry, "greet.wasm");
        assert_eq!(m.runtime, PackRuntime::Wasm);
        assert_eq!(m.abi_version, Some(1));
        assert_eq!(m.nodes[0].type_id, "vendor.wopbox.greet.hello");
    }

    #[test]
    fn refuses_bad_names_and_scopes() {
        for name in [
            "local.me.pack",
            "core.openwop.x",
            "acme",
            "vendor.Acme.x",
            "vendor.acme",
            "vendor.acme.x y",
        ] {
            let mut m = good();
            m["name"] = json!(name);
            assert!(
                matches!(validate_manifest(&m), Err(PackError::InvalidScope(_))),
                "{name}"
            );
        }
    }

    #[test]
    fn reports_json_pointer_paths() {
        let mut m = good();
        m["nodes"][0]["category"] = json!(7);
        assert_eq!(
            path_of(validate_manifest(&m).unwrap_err()),
            "/nodes/0/category"
        );
        let mut m = good();
        m["runtime"]["entry"] = json!("../../etc/passwd");
        assert_eq!(
            path_of(validate_manifest(&m).unwrap_err()),
            "/runtime/entry"
        );
        let mut m = good();
        m["runtime"]["requires"] = json!(["fs.read", "teleport"]);
        assert_eq!(
            path_of(validate_manifest(&m).unwrap_err()),
            "/runtime/requires/1"
        );
        let mut m = good();
        m["version"] = json!("1.0");
        assert_eq!(path_of(validate_manifest(&m).unwrap_err()), "/version");
        let mut m = good();
        m["nodes"] = json!([m["nodes"][0].clone(), m["nodes"][0].clone()]);
        assert_eq!(
            path_of(validate_manifest(&m).unwrap_err()),
            "/nodes/1/typeId"
        );
    }

    #[test]
    fn refuses_other_runtimes_and_kinds() {
        let mut m = good();
        m["runtime"]["language"] = json!("javascript");
        assert!(matches!(
            validate_manifest(&m),
            Err(PackError::UnsupportedRuntime(_))
        ));
        let mut m = good();
        m["chains"] = json!([]);
        assert!(matches!(
            validate_manifest(&m),
            Err(PackError::KindInvalid(_))
        ));
    }

    #[test]
    fn versions() {
        for v in ["1.0.0", "0.1.2-beta.1", "1.2.3+build.5", "10.20.30-rc.1+x"] {
            assert!(version_matches_schema(v), "{v}");
        }
        for v in ["1.0", "1.0.0-", "a.b.c", "1.0.0+", "1..0"] {
            assert!(!version_matches_schema(v), "{v}");
        }
    }
}
