//! The typed failure a node reports on purpose (RFC 0008 `outcome: "failed"`,
//! the component world's `node-error`).

use serde_json::Value;

/// A node's failure: a stable machine `code` (e.g. `validation_error`), a
/// message for people, optional JSON `details`. The host puts all three on
/// the run's `node.failed` event.
///
/// Make your own error type convertible (`impl From<MyError> for NodeError`)
/// and return `Result<_, MyError>` from the node: the code then lives next to
/// the variant it describes.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeError {
    pub code: String,
    pub message: String,
    pub details: Option<Value>,
}

impl NodeError {
    /// A failure with `code` and `message`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        NodeError {
            code: code.into(),
            message: message.into(),
            details: None,
        }
    }

    /// `validation_error`: the inputs or the configuration are unusable.
    pub fn validation(message: impl Into<String>) -> Self {
        NodeError::new("validation_error", message)
    }

    /// Attach a JSON `details` object.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// The RFC 0008 response envelope for this failure.
    pub(crate) fn to_envelope(&self) -> Value {
        let mut error = serde_json::json!({"code": self.code, "message": self.message});
        if let Some(d) = &self.details {
            error["details"] = d.clone();
        }
        serde_json::json!({"outcome": "failed", "error": error})
    }
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for NodeError {}
