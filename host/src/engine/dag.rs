//! Workflow definitions as graphs: validation (schemas/workflow-definition.schema.json plus the
//! semantic checks — unknown typeId, dangling edge, cycle), trigger rules, edge conditions and
//! input-port resolution.

use std::collections::{HashMap, HashSet};

use regex::Regex;
use serde_json::{json, Map, Value};

use super::expr;
use super::registry::NodeRegistry;

/// One precise validation problem: a JSON-pointer-ish path and a message.
#[derive(Debug, Clone)]
pub struct Problem {
    pub path: String,
    pub code: &'static str,
    pub message: String,
}

impl Problem {
    pub fn to_json(&self) -> Value {
        json!({"path": self.path, "code": self.code, "message": self.message})
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerRule {
    AllSuccess,
    AnySuccess,
    AllComplete,
    NoneFailed,
    AnyFailed,
}

impl TriggerRule {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "all_success" => TriggerRule::AllSuccess,
            "any_success" => TriggerRule::AnySuccess,
            "all_complete" => TriggerRule::AllComplete,
            "none_failed" => TriggerRule::NoneFailed,
            "any_failed" => TriggerRule::AnyFailed,
            _ => return None,
        })
    }
    /// Whether a node with this rule runs on an upstream failure (so that failure is handled).
    pub fn handles_failure(self) -> bool {
        matches!(self, TriggerRule::AllComplete | TriggerRule::AnyFailed)
    }
}

#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    pub type_id: String,
    pub config: Value,
    pub inputs: Map<String, Value>,
    pub settings: Value,
    pub disabled: bool,
}

#[derive(Debug, Clone)]
pub struct Edge {
    pub id: String,
    pub source: usize,
    pub target: usize,
    pub source_output: Option<String>,
    pub target_input: Option<String>,
    pub condition: Option<Value>,
}

#[derive(Debug, Clone)]
pub struct Variable {
    pub name: String,
    pub var_type: String,
    pub required: bool,
    pub default: Option<Value>,
}

/// A validated, indexed workflow.
#[derive(Debug, Clone)]
pub struct Graph {
    pub id: String,
    pub nodes: Vec<Node>,
    pub index: HashMap<String, usize>,
    pub edges: Vec<Edge>,
    pub incoming: Vec<Vec<usize>>,
    pub outgoing: Vec<Vec<usize>>,
    pub rules: Vec<TriggerRule>,
    pub variables: Vec<Variable>,
    pub settings: Value,
}

const TOP_KEYS: &[&str] = &[
    "id",
    "name",
    "description",
    "version",
    "type",
    "isActive",
    "status",
    "tenantId",
    "scopeId",
    "slug",
    "nodes",
    "edges",
    "triggers",
    "variables",
    "groups",
    "channels",
    "configurableSchema",
    "defaults",
    "metadata",
    "settings",
    "acceptsInheritedArtifacts",
    "createdAt",
    "updatedAt",
];
const NODE_KEYS: &[&str] = &[
    "id",
    "typeId",
    "name",
    "position",
    "config",
    "inputs",
    "credentialsRef",
    "settings",
    "outputRole",
    "disabled",
    "notes",
    "groupId",
    "agent",
    "envelopeContract",
    "artifactType",
    "cardType",
    "outputSensitivity",
];
const EDGE_KEYS: &[&str] = &[
    "id",
    "sourceNodeId",
    "sourceOutput",
    "targetNodeId",
    "targetInput",
    "condition",
    "label",
    "triggerRule",
];
const VAR_KEYS: &[&str] = &[
    "name",
    "type",
    "description",
    "required",
    "defaultValue",
    "sensitive",
    "format",
];
const TRIGGER_KEYS: &[&str] = &[
    "id",
    "type",
    "name",
    "description",
    "config",
    "enabled",
    "nodeId",
    "eventType",
];
const TRIGGER_TYPES: &[&str] = &[
    "manual",
    "schedule",
    "webhook",
    "event",
    "artifact",
    "canvas",
    "envelope",
    "command",
    "chat-message",
    "channel-write",
];
const CONDITION_TYPES: &[&str] = &[
    "expression",
    "equals",
    "notEquals",
    "contains",
    "regex",
    "truthy",
    "falsy",
];

struct V {
    problems: Vec<Problem>,
}

impl V {
    fn err(&mut self, path: impl Into<String>, code: &'static str, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            code,
            message: message.into(),
        });
    }
    fn keys(&mut self, obj: &Map<String, Value>, allowed: &[&str], path: &str) {
        for k in obj.keys() {
            if !allowed.contains(&k.as_str()) {
                self.err(
                    format!("{path}/{k}"),
                    "unknown_property",
                    format!("unknown property '{k}'"),
                );
            }
        }
    }
    fn string<'a>(
        &mut self,
        obj: &'a Map<String, Value>,
        key: &str,
        path: &str,
        required: bool,
    ) -> Option<&'a str> {
        match obj.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Some(s),
            Some(Value::String(_)) => {
                self.err(
                    format!("{path}/{key}"),
                    "invalid_value",
                    format!("'{key}' must not be empty"),
                );
                None
            }
            Some(_) => {
                self.err(
                    format!("{path}/{key}"),
                    "invalid_type",
                    format!("'{key}' must be a string"),
                );
                None
            }
            None => {
                if required {
                    self.err(
                        format!("{path}/{key}"),
                        "required",
                        format!("'{key}' is required"),
                    );
                }
                None
            }
        }
    }
    fn object<'a>(
        &mut self,
        obj: &'a Map<String, Value>,
        key: &str,
        path: &str,
        required: bool,
    ) -> Option<&'a Map<String, Value>> {
        match obj.get(key) {
            Some(Value::Object(m)) => Some(m),
            Some(_) => {
                self.err(
                    format!("{path}/{key}"),
                    "invalid_type",
                    format!("'{key}' must be an object"),
                );
                None
            }
            None => {
                if required {
                    self.err(
                        format!("{path}/{key}"),
                        "required",
                        format!("'{key}' is required"),
                    );
                }
                None
            }
        }
    }
    fn array<'a>(
        &mut self,
        obj: &'a Map<String, Value>,
        key: &str,
        path: &str,
    ) -> Option<&'a Vec<Value>> {
        match obj.get(key) {
            Some(Value::Array(a)) => Some(a),
            Some(_) => {
                self.err(
                    format!("{path}/{key}"),
                    "invalid_type",
                    format!("'{key}' must be an array"),
                );
                None
            }
            None => {
                self.err(
                    format!("{path}/{key}"),
                    "required",
                    format!("'{key}' is required"),
                );
                None
            }
        }
    }
}

pub fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Does `v` match a workflow variable type?
pub fn matches_var_type(var_type: &str, v: &Value) -> bool {
    json_type_name(v) == var_type
}

fn check_port(v: &mut V, port: &Value, path: &str, node_ids: &HashSet<&str>) {
    let Some(obj) = port.as_object() else {
        v.err(path, "invalid_type", "input port value must be an object");
        return;
    };
    let ty = obj.get("type").and_then(Value::as_str).unwrap_or("");
    let (allowed, required): (&[&str], &[&str]) = match ty {
        "static" => (&["type", "value"], &["value"]),
        "expression" => (&["type", "expression"], &["expression"]),
        "connection" => (
            &["type", "nodeId", "outputKey", "optional"],
            &["nodeId", "outputKey"],
        ),
        "variable" => (&["type", "variableName", "optional"], &["variableName"]),
        _ => {
            v.err(
                format!("{path}/type"),
                "invalid_value",
                "port type must be one of static, expression, connection, variable",
            );
            return;
        }
    };
    v.keys(obj, allowed, path);
    for r in required {
        if !obj.contains_key(*r) {
            v.err(
                format!("{path}/{r}"),
                "required",
                format!("'{r}' is required for a {ty} port"),
            );
        }
    }
    match ty {
        "expression" => {
            if let Some(s) = v.string(obj, "expression", path, false) {
                if let Err(e) = expr::check(s) {
                    v.err(
                        format!("{path}/expression"),
                        "invalid_expression",
                        format!("invalid expression: {e}"),
                    );
                }
            }
        }
        "connection" => {
            if let Some(n) = v.string(obj, "nodeId", path, false) {
                if !node_ids.contains(n) {
                    v.err(
                        format!("{path}/nodeId"),
                        "unknown_node",
                        format!("connection refers to unknown node '{n}'"),
                    );
                }
            }
            v.string(obj, "outputKey", path, false);
        }
        "variable" => {
            v.string(obj, "variableName", path, false);
        }
        _ => {}
    }
}

fn check_condition(v: &mut V, cond: &Value, path: &str) {
    let Some(obj) = cond.as_object() else {
        v.err(path, "invalid_type", "condition must be an object");
        return;
    };
    v.keys(obj, &["type", "left", "right", "expression"], path);
    let ty = obj
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("expression");
    if !CONDITION_TYPES.contains(&ty) {
        v.err(
            format!("{path}/type"),
            "invalid_value",
            format!("unknown condition type '{ty}'"),
        );
        return;
    }
    if ty == "expression" {
        if let Some(s) = v.string(obj, "expression", path, true) {
            if let Err(e) = expr::check(s) {
                v.err(
                    format!("{path}/expression"),
                    "invalid_expression",
                    format!("invalid expression: {e}"),
                );
            }
        }
    } else {
        v.string(obj, "left", path, true);
        if ty == "regex" {
            match obj.get("right").and_then(Value::as_str) {
                Some(r) => {
                    if let Err(e) = Regex::new(r) {
                        v.err(
                            format!("{path}/right"),
                            "invalid_regex",
                            format!("invalid regex: {e}"),
                        );
                    }
                }
                None => v.err(
                    format!("{path}/right"),
                    "required",
                    "regex condition needs a string 'right'",
                ),
            }
        }
    }
}

/// Validate a definition and build its graph. `registry` decides which typeIds exist.
pub fn build(def: &Value, registry: &NodeRegistry) -> Result<Graph, Vec<Problem>> {
    let mut v = V {
        problems: Vec::new(),
    };
    let Some(top) = def.as_object() else {
        return Err(vec![Problem {
            path: "".into(),
            code: "invalid_type",
            message: "workflow definition must be a JSON object".into(),
        }]);
    };
    v.keys(top, TOP_KEYS, "");
    let id = v.string(top, "id", "", true).unwrap_or("").to_string();
    if !id.is_empty() {
        let ok = id.len() <= 128
            && id.starts_with(|c: char| c.is_ascii_lowercase())
            && id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !ok {
            v.err(
                "/id",
                "invalid_value",
                "id must match ^[a-z][a-z0-9_-]*$ (max 128 chars)",
            );
        }
    }
    v.string(top, "name", "", true);
    v.string(top, "version", "", true);
    v.object(top, "metadata", "", true);
    let settings = v
        .object(top, "settings", "", true)
        .cloned()
        .unwrap_or_default();
    for key in ["timeout", "maxRetries"] {
        if let Some(x) = settings.get(key) {
            if x.as_u64().is_none() {
                v.err(
                    format!("/settings/{key}"),
                    "invalid_type",
                    format!("settings.{key} must be a non-negative integer"),
                );
            }
        }
    }

    // Triggers.
    if let Some(triggers) = v.array(top, "triggers", "") {
        for (i, t) in triggers.iter().enumerate() {
            let p = format!("/triggers/{i}");
            match t.as_object() {
                Some(o) => {
                    v.keys(o, TRIGGER_KEYS, &p);
                    v.string(o, "id", &p, true);
                    if let Some(ty) = v.string(o, "type", &p, true) {
                        if !TRIGGER_TYPES.contains(&ty) {
                            v.err(
                                format!("{p}/type"),
                                "invalid_value",
                                format!("unknown trigger type '{ty}'"),
                            );
                        }
                    }
                }
                None => v.err(p, "invalid_type", "trigger must be an object"),
            }
        }
    }

    // Variables.
    let mut variables = Vec::new();
    let mut var_names = HashSet::new();
    if let Some(vars) = v.array(top, "variables", "") {
        for (i, var) in vars.iter().enumerate() {
            let p = format!("/variables/{i}");
            let Some(o) = var.as_object() else {
                v.err(p, "invalid_type", "variable must be an object");
                continue;
            };
            v.keys(o, VAR_KEYS, &p);
            let name = v.string(o, "name", &p, true);
            let ty = v.string(o, "type", &p, true);
            if let Some(ty) = ty {
                if !["string", "number", "boolean", "object", "array"].contains(&ty) {
                    v.err(
                        format!("{p}/type"),
                        "invalid_value",
                        format!("unknown variable type '{ty}'"),
                    );
                }
            }
            let default = o.get("defaultValue").cloned();
            if let (Some(ty), Some(d)) = (ty, &default) {
                if !d.is_null() && !matches_var_type(ty, d) {
                    v.err(
                        format!("{p}/defaultValue"),
                        "invalid_type",
                        format!("defaultValue must be a {ty}"),
                    );
                }
            }
            if let Some(name) = name {
                if !var_names.insert(name.to_string()) {
                    v.err(
                        format!("{p}/name"),
                        "duplicate",
                        format!("duplicate variable '{name}'"),
                    );
                }
                variables.push(Variable {
                    name: name.to_string(),
                    var_type: ty.unwrap_or("object").to_string(),
                    required: o.get("required").and_then(Value::as_bool).unwrap_or(false),
                    default: default.filter(|d| !d.is_null()),
                });
            }
        }
    }

    // Nodes.
    let mut nodes = Vec::new();
    let mut index = HashMap::new();
    let raw_nodes = v.array(top, "nodes", "").cloned().unwrap_or_default();
    if top
        .get("nodes")
        .map(|n| n.as_array().map(Vec::is_empty).unwrap_or(false))
        .unwrap_or(false)
    {
        v.err(
            "/nodes",
            "invalid_value",
            "a workflow needs at least one node",
        );
    }
    let node_ids: HashSet<&str> = raw_nodes
        .iter()
        .filter_map(|n| n.get("id").and_then(Value::as_str))
        .collect();
    for (i, n) in raw_nodes.iter().enumerate() {
        let p = format!("/nodes/{i}");
        let Some(o) = n.as_object() else {
            v.err(p, "invalid_type", "node must be an object");
            continue;
        };
        v.keys(o, NODE_KEYS, &p);
        let nid = v.string(o, "id", &p, true);
        let type_id = v.string(o, "typeId", &p, true);
        v.string(o, "name", &p, true);
        if let Some(pos) = v.object(o, "position", &p, true) {
            for k in ["x", "y"] {
                if !pos.get(k).map(Value::is_number).unwrap_or(false) {
                    v.err(
                        format!("{p}/position/{k}"),
                        "invalid_type",
                        format!("position.{k} must be a number"),
                    );
                }
            }
        }
        let config = v.object(o, "config", &p, true).cloned().unwrap_or_default();
        let inputs = v.object(o, "inputs", &p, true).cloned().unwrap_or_default();
        let node_settings = match o.get("settings") {
            None => json!({}),
            Some(Value::Object(s)) => Value::Object(s.clone()),
            Some(_) => {
                v.err(
                    format!("{p}/settings"),
                    "invalid_type",
                    "settings must be an object",
                );
                json!({})
            }
        };
        for key in [
            "timeout",
            "timeoutMs",
            "maxRetries",
            "retries",
            "retryDelayMs",
            "backoffMs",
            "maxBackoffMs",
        ] {
            if let Some(x) = node_settings.get(key) {
                if x.as_u64().is_none() {
                    v.err(
                        format!("{p}/settings/{key}"),
                        "invalid_type",
                        format!("settings.{key} must be a non-negative integer"),
                    );
                }
            }
        }
        for (port, pv) in &inputs {
            check_port(&mut v, pv, &format!("{p}/inputs/{port}"), &node_ids);
        }
        if let Some(t) = type_id {
            let pattern_ok = t.starts_with(|c: char| c.is_ascii_lowercase())
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !pattern_ok {
                v.err(
                    format!("{p}/typeId"),
                    "invalid_value",
                    format!("typeId '{t}' must match ^[a-z][a-zA-Z0-9._-]*$"),
                );
            } else {
                match registry.get(t) {
                    None => v.err(
                        format!("{p}/typeId"),
                        "unknown_type_id",
                        format!("unknown node typeId '{t}' (node '{}')", nid.unwrap_or("?")),
                    ),
                    Some(exec) => {
                        if let Err(e) = exec.validate_config(t, &Value::Object(config.clone())) {
                            v.err(format!("{p}/config"), "invalid_config", e);
                        }
                    }
                }
            }
        }
        if let Some(nid) = nid {
            if index.insert(nid.to_string(), nodes.len()).is_some() {
                v.err(
                    format!("{p}/id"),
                    "duplicate",
                    format!("duplicate node id '{nid}'"),
                );
                continue;
            }
            nodes.push(Node {
                id: nid.to_string(),
                type_id: type_id.unwrap_or("").to_string(),
                config: Value::Object(config),
                inputs,
                settings: node_settings,
                disabled: o.get("disabled").and_then(Value::as_bool).unwrap_or(false),
            });
        }
    }

    // Edges.
    let mut edges = Vec::new();
    let mut incoming = vec![Vec::new(); nodes.len()];
    let mut outgoing = vec![Vec::new(); nodes.len()];
    let mut rules: Vec<Option<(TriggerRule, String)>> = vec![None; nodes.len()];
    let mut edge_ids = HashSet::new();
    if let Some(raw_edges) = v.array(top, "edges", "") {
        for (i, e) in raw_edges.iter().enumerate() {
            let p = format!("/edges/{i}");
            let Some(o) = e.as_object() else {
                v.err(p, "invalid_type", "edge must be an object");
                continue;
            };
            v.keys(o, EDGE_KEYS, &p);
            let eid = v.string(o, "id", &p, true).unwrap_or("?").to_string();
            if eid != "?" && !edge_ids.insert(eid.clone()) {
                v.err(
                    format!("{p}/id"),
                    "duplicate",
                    format!("duplicate edge id '{eid}'"),
                );
            }
            let src = v.string(o, "sourceNodeId", &p, true);
            let dst = v.string(o, "targetNodeId", &p, true);
            let s = src.and_then(|s| index.get(s).copied());
            let t = dst.and_then(|t| index.get(t).copied());
            if let (Some(src), None) = (src, s) {
                v.err(
                    format!("{p}/sourceNodeId"),
                    "dangling_edge",
                    format!("edge '{eid}' starts at unknown node '{src}'"),
                );
            }
            if let (Some(dst), None) = (dst, t) {
                v.err(
                    format!("{p}/targetNodeId"),
                    "dangling_edge",
                    format!("edge '{eid}' ends at unknown node '{dst}'"),
                );
            }
            if let Some(c) = o.get("condition") {
                check_condition(&mut v, c, &format!("{p}/condition"));
            }
            let rule = match o.get("triggerRule") {
                None => None,
                Some(r) => match r.as_str().and_then(TriggerRule::parse) {
                    Some(rule) => Some(rule),
                    None => {
                        v.err(format!("{p}/triggerRule"), "invalid_value",
                            "triggerRule must be one of all_success, any_success, all_complete, none_failed, any_failed");
                        None
                    }
                },
            };
            for key in ["sourceOutput", "targetInput"] {
                if o.get(key).map(|x| !x.is_string()).unwrap_or(false) {
                    v.err(
                        format!("{p}/{key}"),
                        "invalid_type",
                        format!("{key} must be a string"),
                    );
                }
            }
            if let (Some(s), Some(t)) = (s, t) {
                if s == t {
                    v.err(
                        p.clone(),
                        "cycle",
                        format!("edge '{eid}' connects node '{}' to itself", nodes[s].id),
                    );
                    continue;
                }
                if let Some(rule) = rule {
                    match &rules[t] {
                        Some((prev, prev_edge)) if *prev != rule => v.err(
                            format!("{p}/triggerRule"),
                            "conflicting_trigger_rule",
                            format!("edges '{prev_edge}' and '{eid}' into node '{}' declare different trigger rules", nodes[t].id),
                        ),
                        _ => rules[t] = Some((rule, eid.clone())),
                    }
                }
                incoming[t].push(edges.len());
                outgoing[s].push(edges.len());
                edges.push(Edge {
                    id: eid,
                    source: s,
                    target: t,
                    source_output: o
                        .get("sourceOutput")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    target_input: o
                        .get("targetInput")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    condition: o.get("condition").cloned(),
                });
            }
        }
    }

    // Cycle detection (Kahn); report one concrete cycle path.
    if v.problems.is_empty() {
        let mut indeg: Vec<usize> = incoming.iter().map(Vec::len).collect();
        let mut queue: Vec<usize> = (0..nodes.len()).filter(|&i| indeg[i] == 0).collect();
        let mut seen = 0;
        while let Some(n) = queue.pop() {
            seen += 1;
            for &e in &outgoing[n] {
                let t = edges[e].target;
                indeg[t] -= 1;
                if indeg[t] == 0 {
                    queue.push(t);
                }
            }
        }
        if seen < nodes.len() {
            let cycle = find_cycle(&nodes, &edges, &outgoing, &indeg);
            v.err(
                "/edges",
                "cycle",
                format!("workflow graph has a cycle: {cycle}"),
            );
        }
    }

    if !v.problems.is_empty() {
        return Err(v.problems);
    }
    Ok(Graph {
        id,
        rules: rules
            .into_iter()
            .map(|r| r.map(|(r, _)| r).unwrap_or(TriggerRule::AllSuccess))
            .collect(),
        nodes,
        index,
        edges,
        incoming,
        outgoing,
        variables,
        settings: Value::Object(settings),
    })
}

fn find_cycle(nodes: &[Node], edges: &[Edge], outgoing: &[Vec<usize>], indeg: &[usize]) -> String {
    // Walk from any node left with indegree > 0 along edges staying inside the remainder.
    let Some(start) = (0..nodes.len()).find(|&i| indeg[i] > 0) else {
        return String::new();
    };
    let mut path = vec![start];
    let mut pos: HashMap<usize, usize> = HashMap::from([(start, 0)]);
    let mut cur = start;
    loop {
        let next = outgoing[cur]
            .iter()
            .map(|&e| edges[e].target)
            .find(|&t| indeg[t] > 0);
        let Some(next) = next else { break };
        if let Some(&at) = pos.get(&next) {
            let mut ids: Vec<&str> = path[at..].iter().map(|&i| nodes[i].id.as_str()).collect();
            ids.push(&nodes[next].id);
            return ids.join(" → ");
        }
        pos.insert(next, path.len());
        path.push(next);
        cur = next;
    }
    path.iter()
        .map(|&i| nodes[i].id.as_str())
        .collect::<Vec<_>>()
        .join(" → ")
}

/// Run variables: definition defaults overlaid with the request's `inputs`. Errors name every
/// missing required variable and every type mismatch.
pub fn resolve_variables(
    graph: &Graph,
    inputs: &Map<String, Value>,
) -> Result<Value, Vec<Problem>> {
    let mut out = Map::new();
    let mut problems = Vec::new();
    for var in &graph.variables {
        match inputs
            .get(&var.name)
            .filter(|v| !v.is_null())
            .or(var.default.as_ref())
        {
            Some(val) => {
                if !matches_var_type(&var.var_type, val) {
                    problems.push(Problem {
                        path: format!("/inputs/{}", var.name),
                        code: "invalid_type",
                        message: format!(
                            "input '{}' must be a {} (got {})",
                            var.name,
                            var.var_type,
                            json_type_name(val)
                        ),
                    });
                }
                out.insert(var.name.clone(), val.clone());
            }
            None if var.required => problems.push(Problem {
                path: format!("/inputs/{}", var.name),
                code: "required",
                message: format!("required input '{}' is missing", var.name),
            }),
            None => {}
        }
    }
    // Undeclared inputs are kept: they are visible to expressions as run variables.
    for (k, val) in inputs {
        out.entry(k.clone()).or_insert_with(|| val.clone());
    }
    if problems.is_empty() {
        Ok(Value::Object(out))
    } else {
        Err(problems)
    }
}

/// Evaluate an edge condition. `source` is the upstream node's output.
pub fn edge_condition_holds(
    cond: &Value,
    source_output: &Value,
    ctx: &Value,
) -> Result<bool, String> {
    let ty = cond
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("expression");
    if ty == "expression" {
        let src = cond
            .get("expression")
            .and_then(Value::as_str)
            .unwrap_or("true");
        return expr::evaluate(src, ctx).map(|v| expr::truthy(&v));
    }
    // `left` is a path into the edge scope: {status, output, ...output, variables, nodes}.
    let mut scope = match source_output {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    scope.insert("output".into(), source_output.clone());
    scope.insert("status".into(), json!("completed"));
    if let Value::Object(c) = ctx {
        for (k, v) in c {
            scope.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    let scope = Value::Object(scope);
    let left_path = cond.get("left").and_then(Value::as_str).unwrap_or("");
    let left = expr::lookup_path(&scope, left_path)
        .cloned()
        .unwrap_or(Value::Null);
    let right = cond.get("right").cloned().unwrap_or(Value::Null);
    Ok(match ty {
        "equals" => expr::loose_eq(&left, &right),
        "notEquals" => !expr::loose_eq(&left, &right),
        "contains" => expr::contains(&left, &right),
        "regex" => {
            let re = Regex::new(right.as_str().unwrap_or("")).map_err(|e| e.to_string())?;
            match &left {
                Value::String(s) => re.is_match(s),
                Value::Null => false,
                other => re.is_match(&other.to_string()),
            }
        }
        "truthy" => expr::truthy(&left),
        _ => !expr::truthy(&left),
    })
}

/// Resolve a node's input ports. `ctx` holds `variables`, `nodes` (outputs by node id), `run`.
/// `edge_inputs` are values wired by edges with an explicit `targetInput`.
pub fn resolve_inputs(
    node: &Node,
    ctx: &Value,
    edge_inputs: Map<String, Value>,
) -> Result<Value, String> {
    let mut out = edge_inputs;
    for (port, pv) in &node.inputs {
        let optional = pv.get("optional").and_then(Value::as_bool).unwrap_or(false);
        let ty = pv.get("type").and_then(Value::as_str).unwrap_or("");
        let value = match ty {
            "static" => Some(pv.get("value").cloned().unwrap_or(Value::Null)),
            "expression" => {
                let src = pv.get("expression").and_then(Value::as_str).unwrap_or("");
                Some(
                    expr::evaluate(src, ctx)
                        .map_err(|e| format!("input '{port}': expression failed: {e}"))?,
                )
            }
            "variable" => {
                let name = pv.get("variableName").and_then(Value::as_str).unwrap_or("");
                ctx.get("variables")
                    .and_then(|v| expr::lookup_path(v, name))
                    .cloned()
            }
            "connection" => {
                let nid = pv.get("nodeId").and_then(Value::as_str).unwrap_or("");
                let key = pv.get("outputKey").and_then(Value::as_str).unwrap_or("");
                match ctx.get("nodes").and_then(|n| n.get(nid)) {
                    Some(output) => output_port(output, key).cloned(),
                    None => None,
                }
            }
            _ => None,
        };
        match value {
            Some(v) => {
                out.insert(port.clone(), v);
            }
            None if optional => {}
            None => {
                return Err(match ty {
                    "variable" => format!(
                        "input '{port}': run variable '{}' is not set",
                        pv.get("variableName").and_then(Value::as_str).unwrap_or("")
                    ),
                    "connection" => format!(
                        "input '{port}': node '{}' produced no output '{}'",
                        pv.get("nodeId").and_then(Value::as_str).unwrap_or(""),
                        pv.get("outputKey").and_then(Value::as_str).unwrap_or("")
                    ),
                    _ => format!("input '{port}' could not be resolved"),
                })
            }
        }
    }
    Ok(Value::Object(out))
}

/// An output port of a node's output: a top-level key, a dotted path, or `output` = everything.
pub fn output_port<'a>(output: &'a Value, key: &str) -> Option<&'a Value> {
    if let Some(v) = output.get(key) {
        return Some(v);
    }
    if key == "output" || key.is_empty() {
        return Some(output);
    }
    expr::lookup_path(output, key)
}
