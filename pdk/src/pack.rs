//! The pack model shared by both targets: a named set of nodes, each a
//! function from a deserialized input to a serializable output. Everything
//! here is target-independent, so it is unit-tested on the host.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::NodeError;

/// Which invocation this is (RFC 0008 `nodeContext`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Context {
    pub run_id: String,
    pub node_id: String,
    pub tenant_id: String,
    /// 0 on the first attempt.
    pub attempt: u32,
    /// The node's configuration in the workflow (`configurable`), a JSON object.
    pub configurable: Value,
}

impl Context {
    /// The configuration as `T`; a mismatch is a `validation_error`.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T, NodeError> {
        let v = if self.configurable.is_null() {
            Value::Object(Default::default())
        } else {
            self.configurable.clone()
        };
        serde_json::from_value(v)
            .map_err(|e| NodeError::validation(format!("node configuration: {e}")))
    }
}

/// A node type, when a plain function is not enough (state built once per
/// instance, several related nodes sharing code…).
pub trait Node: Send + Sync {
    /// The node's typeId, e.g. `vendor.example.text.upper`.
    const TYPE_ID: &'static str;
    type Input: DeserializeOwned;
    type Output: Serialize;
    type Error: Into<NodeError>;
    fn run(&self, ctx: &Context, input: Self::Input) -> Result<Self::Output, Self::Error>;
}

/// One node, with its input and output types erased to JSON text.
trait ErasedNode: Send + Sync {
    fn call(&self, ctx: &Context, input: Value) -> Result<Value, NodeError>;
}

fn decode<I: DeserializeOwned>(input: Value) -> Result<I, NodeError> {
    serde_json::from_value(input).map_err(|e| NodeError::validation(format!("inputs: {e}")))
}

fn encode<O: Serialize>(output: O) -> Result<Value, NodeError> {
    serde_json::to_value(output).map_err(|e| {
        NodeError::new(
            "internal_error",
            format!("the node's output cannot be serialized: {e}"),
        )
    })
}

struct FnNode<F, I, O, E> {
    f: F,
    _types: std::marker::PhantomData<fn(I) -> (O, E)>,
}

impl<F, I, O, E> ErasedNode for FnNode<F, I, O, E>
where
    F: Fn(&Context, I) -> Result<O, E> + Send + Sync,
    I: DeserializeOwned,
    O: Serialize,
    E: Into<NodeError>,
{
    fn call(&self, ctx: &Context, input: Value) -> Result<Value, NodeError> {
        encode((self.f)(ctx, decode(input)?).map_err(Into::into)?)
    }
}

struct TraitNode<N>(N);

impl<N: Node> ErasedNode for TraitNode<N> {
    fn call(&self, ctx: &Context, input: Value) -> Result<Value, NodeError> {
        encode(self.0.run(ctx, decode(input)?).map_err(Into::into)?)
    }
}

struct Entry {
    type_id: String,
    node: Box<dyn ErasedNode>,
}

/// A pack: its name, version and nodes. Build one in a `fn() -> Pack` and
/// hand that function to [`crate::export_pack!`].
pub struct Pack {
    name: &'static str,
    version: &'static str,
    nodes: Vec<Entry>,
}

impl Pack {
    /// A pack named `name` (the manifest's `name`, e.g.
    /// `vendor.example.text`); `version` is reported for every node
    /// (usually `env!("CARGO_PKG_VERSION")`).
    pub fn new(name: &'static str, version: &'static str) -> Pack {
        Pack {
            name,
            version,
            nodes: Vec::new(),
        }
    }

    /// Add a node implemented by a function `fn(&Context, Input) -> Result<Output, E>`.
    ///
    /// # Panics
    /// If `type_id` is already in the pack (a programming error, caught the
    /// first time the pack is built, i.e. by the host at load).
    pub fn func<F, I, O, E>(self, type_id: impl Into<String>, f: F) -> Pack
    where
        F: Fn(&Context, I) -> Result<O, E> + Send + Sync + 'static,
        I: DeserializeOwned + 'static,
        O: Serialize + 'static,
        E: Into<NodeError> + 'static,
    {
        self.add(
            type_id.into(),
            Box::new(FnNode {
                f,
                _types: std::marker::PhantomData,
            }),
        )
    }

    /// Add a node implemented by a [`Node`].
    pub fn node<N: Node + 'static>(self, node: N) -> Pack {
        self.add(N::TYPE_ID.to_string(), Box::new(TraitNode(node)))
    }

    fn add(mut self, type_id: String, node: Box<dyn ErasedNode>) -> Pack {
        assert!(
            !self.nodes.iter().any(|e| e.type_id == type_id),
            "node typeId `{type_id}` is added to the pack twice"
        );
        self.nodes.push(Entry { type_id, node });
        self
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn version(&self) -> &'static str {
        self.version
    }

    /// The node typeIds, in the order they were added.
    pub fn type_ids(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(|e| e.type_id.as_str())
    }

    /// Run node `index` on JSON `input`.
    pub(crate) fn call_index(
        &self,
        index: usize,
        ctx: &Context,
        input: Value,
    ) -> Result<Value, NodeError> {
        let entry = self.nodes.get(index).ok_or_else(|| {
            NodeError::new(
                "wasm_pack_unknown_type",
                format!("node index {index} is out of range"),
            )
        })?;
        entry.node.call(ctx, input)
    }

    pub(crate) fn index_of(&self, type_id: &str) -> Option<usize> {
        self.nodes.iter().position(|e| e.type_id == type_id)
    }

    /// Run node `type_id` on the JSON text `input` and return its JSON
    /// output as text: what the host would get, without a sandbox. Meant
    /// for unit tests on your machine.
    pub fn invoke_json(
        &self,
        type_id: &str,
        ctx: &Context,
        input: &str,
    ) -> Result<String, NodeError> {
        let index = self.index_of(type_id).ok_or_else(|| {
            NodeError::new(
                "wasm_pack_unknown_type",
                format!("pack `{}` has no node `{type_id}`", self.name),
            )
        })?;
        let input: Value = serde_json::from_str(input)
            .map_err(|e| NodeError::validation(format!("inputs are not JSON: {e}")))?;
        let out = self.call_index(index, ctx, input)?;
        Ok(out.to_string())
    }

    /// The RFC 0008 exchange: a request envelope
    /// `{abiVersion, nodeContext, inputs}` in, a response envelope out
    /// (`completed` with `output`, or `failed` with `error`).
    #[cfg_attr(
        not(all(target_arch = "wasm32", not(target_os = "wasi"))),
        allow(dead_code)
    )]
    pub(crate) fn handle_envelope(&self, index: usize, request: &[u8]) -> Vec<u8> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Request {
            #[serde(default)]
            node_context: Context,
            #[serde(default)]
            inputs: Value,
        }
        let result = serde_json::from_slice::<Request>(request)
            .map_err(|e| NodeError::validation(format!("request envelope: {e}")))
            .and_then(|r| {
                let inputs = if r.inputs.is_null() {
                    Value::Object(Default::default())
                } else {
                    r.inputs
                };
                self.call_index(index, &r.node_context, inputs)
            });
        let envelope = match result {
            Ok(output) => serde_json::json!({"outcome": "completed", "output": output}),
            Err(e) => e.to_envelope(),
        };
        // A `Value` always serializes.
        serde_json::to_vec(&envelope).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Deserialize)]
    struct In {
        text: String,
    }
    #[derive(Serialize)]
    struct Out {
        upper: String,
    }

    #[derive(Debug)]
    enum TextError {
        Empty,
    }
    impl From<TextError> for NodeError {
        fn from(e: TextError) -> Self {
            match e {
                TextError::Empty => NodeError::new("empty_text", "text is empty")
                    .with_details(json!({"field": "text"})),
            }
        }
    }

    fn upper(_: &Context, i: In) -> Result<Out, TextError> {
        if i.text.is_empty() {
            return Err(TextError::Empty);
        }
        Ok(Out {
            upper: i.text.to_uppercase(),
        })
    }

    struct Suffix(&'static str);
    impl Node for Suffix {
        const TYPE_ID: &'static str = "vendor.t.text.suffix";
        type Input = In;
        type Output = Value;
        type Error = NodeError;
        fn run(&self, ctx: &Context, input: In) -> Result<Value, NodeError> {
            #[derive(Deserialize, Default)]
            #[serde(default)]
            struct Cfg {
                times: usize,
            }
            let cfg: Cfg = ctx.config()?;
            Ok(json!({"text": format!("{}{}", input.text, self.0.repeat(cfg.times.max(1)))}))
        }
    }

    fn pack() -> Pack {
        Pack::new("vendor.t.text", "1.2.3")
            .func("vendor.t.text.upper", upper)
            .node(Suffix("!"))
    }

    fn envelope(p: &Pack, index: usize, req: Value) -> Value {
        serde_json::from_slice(&p.handle_envelope(index, req.to_string().as_bytes())).unwrap()
    }

    #[test]
    fn functions_and_trait_nodes_answer_in_order() {
        let p = pack();
        assert_eq!(
            p.type_ids().collect::<Vec<_>>(),
            ["vendor.t.text.upper", "vendor.t.text.suffix"]
        );
        let out = envelope(
            &p,
            0,
            json!({"abiVersion": 1, "nodeContext": {"runId": "r", "nodeId": "n", "tenantId": "t", "attempt": 0}, "inputs": {"text": "hi"}}),
        );
        assert_eq!(
            out,
            json!({"outcome": "completed", "output": {"upper": "HI"}})
        );
        let out = envelope(
            &p,
            1,
            json!({"nodeContext": {"configurable": {"times": 3}}, "inputs": {"text": "hi"}}),
        );
        assert_eq!(out["output"], json!({"text": "hi!!!"}));
    }

    #[test]
    fn typed_errors_keep_their_code_and_details() {
        let out = envelope(&pack(), 0, json!({"inputs": {"text": ""}}));
        assert_eq!(
            out,
            json!({"outcome": "failed", "error": {"code": "empty_text", "message": "text is empty", "details": {"field": "text"}}})
        );
    }

    #[test]
    fn bad_inputs_config_and_envelopes_are_validation_errors() {
        let p = pack();
        let out = envelope(&p, 0, json!({"inputs": {"text": 5}}));
        assert_eq!(out["error"]["code"], "validation_error");
        assert!(out["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("inputs:"));
        let out = envelope(
            &p,
            1,
            json!({"nodeContext": {"configurable": {"times": "x"}}, "inputs": {"text": "a"}}),
        );
        assert_eq!(out["error"]["code"], "validation_error");
        let raw: Value = serde_json::from_slice(&p.handle_envelope(0, b"not json")).unwrap();
        assert_eq!(raw["error"]["code"], "validation_error");
        let out = envelope(&p, 7, json!({"inputs": {}}));
        assert_eq!(out["error"]["code"], "wasm_pack_unknown_type");
    }

    #[test]
    fn invoke_json_runs_a_node_in_process() {
        let p = pack();
        assert_eq!(
            p.invoke_json(
                "vendor.t.text.upper",
                &Context::default(),
                r#"{"text":"ok"}"#
            )
            .unwrap(),
            r#"{"upper":"OK"}"#
        );
        let e = p
            .invoke_json("vendor.t.text.nope", &Context::default(), "{}")
            .unwrap_err();
        assert_eq!(e.code, "wasm_pack_unknown_type");
    }

    #[test]
    #[should_panic(expected = "added to the pack twice")]
    fn duplicate_type_ids_are_refused() {
        let _ = Pack::new("vendor.t.x", "1")
            .func("vendor.t.x.a", upper)
            .func("vendor.t.x.a", upper);
    }
}
