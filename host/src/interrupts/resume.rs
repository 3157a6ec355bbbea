//! Per-kind validation of a resume value and what it becomes: the node's output plus the
//! kind-specific event (`approval.received`, `clarification.resolved`).

use serde_json::{json, Map, Value};

use super::Kind;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResumeError {
    /// 400 `validation_error`: the value does not fit the interrupt.
    #[error("{message}")]
    Invalid { message: String, details: Value },
    /// 422 `correlation_mismatch`: an external event that is not the awaited one.
    #[error("the event does not match the interrupt's correlation ({fields:?})")]
    CorrelationMismatch { fields: Vec<String> },
}

fn invalid(message: impl Into<String>, details: Value) -> ResumeError {
    ResumeError::Invalid {
        message: message.into(),
        details,
    }
}

/// A validated resolution.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    /// What the suspended node outputs (the resume value, normalised).
    pub output: Value,
    /// The normalised resume value recorded on `interrupt.resolved`.
    pub resume_value: Value,
    /// Kind-specific event `(type, payload)` emitted after `interrupt.resolved`.
    pub kind_event: Option<(&'static str, Value)>,
    /// An approval rejection: the node fails with `interrupt_rejected`.
    pub rejected: bool,
}

/// The resume value of a request body: `{"resumeValue": X}` → X; a body without the wrapper is
/// taken as the value itself (older clients post it bare).
pub fn resume_value(body: &Value) -> Value {
    match body.get("resumeValue") {
        Some(v) => v.clone(),
        None => body.clone(),
    }
}

pub fn validate(
    kind: Kind,
    data: &Value,
    resume: &Value,
    node_id: &str,
    interrupt_id: &str,
    resolved_by: &str,
    at: &str,
) -> Result<Resolution, ResumeError> {
    match kind {
        Kind::Approval => approval(data, resume, node_id, interrupt_id, resolved_by, at),
        Kind::Clarification => clarification(data, resume, node_id, interrupt_id, resolved_by),
        Kind::ExternalEvent => external_event(data, resume, at),
    }
}

fn approval(
    data: &Value,
    resume: &Value,
    node_id: &str,
    interrupt_id: &str,
    decided_by: &str,
    at: &str,
) -> Result<Resolution, ResumeError> {
    let obj = resume
        .as_object()
        .ok_or_else(|| invalid("resumeValue must be an object with an `action`", json!({})))?;
    let allowed: Vec<&str> = data
        .get("actions")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_else(|| vec!["accept", "reject"]);
    let feedback = obj.get("feedback").and_then(Value::as_str);
    // Legacy `decision` vocabulary (interrupt.md §"Backward-compat mapping").
    let action = match (
        obj.get("action"),
        obj.get("decision").and_then(Value::as_str),
    ) {
        (Some(Value::String(a)), _) => a.clone(),
        (Some(_), _) => {
            return Err(invalid(
                "action must be a string",
                json!({"path": "/action"}),
            ))
        }
        (None, Some("approved")) => "accept".into(),
        (None, Some("rejected")) if feedback.is_some_and(|f| !f.is_empty()) => "refine".into(),
        (None, Some("rejected")) => "reject".into(),
        (None, _) => {
            return Err(invalid(
                "resumeValue.action is required",
                json!({"path": "/action", "allowed": allowed}),
            ))
        }
    };
    // `edit-accept` is the resume spelling of the `edit` gate action.
    let gate_action = if action == "edit-accept" {
        "edit"
    } else {
        action.as_str()
    };
    if !["accept", "reject", "refine", "edit-accept"].contains(&action.as_str())
        || !allowed.contains(&gate_action)
    {
        let msg = if action == "ask" && allowed.contains(&"ask") {
            "action 'ask' (side-channel questions) is not supported by this host".to_string()
        } else {
            format!(
                "action '{action}' is not allowed here (allowed: {})",
                allowed.join(", ")
            )
        };
        return Err(invalid(msg, json!({"path": "/action", "allowed": allowed})));
    }
    let mut out = Map::new();
    out.insert("action".into(), json!(action));
    if let Some(f) = feedback {
        out.insert("feedback".into(), json!(f));
    }
    match action.as_str() {
        "refine" => {
            let rf = match obj.get("refineFeedback") {
                Some(v @ Value::Object(_)) => v.clone(),
                Some(_) => {
                    return Err(invalid(
                        "refineFeedback must be an object",
                        json!({"path": "/refineFeedback"}),
                    ))
                }
                None => match feedback {
                    Some(text) if !text.is_empty() => json!({"scope": "whole", "text": text}),
                    _ => {
                        return Err(invalid(
                            "action 'refine' needs refineFeedback",
                            json!({"path": "/refineFeedback"}),
                        ))
                    }
                },
            };
            out.insert("refineFeedback".into(), rf);
        }
        "edit-accept" => match obj.get("editedArtifactData") {
            Some(v) => {
                out.insert("editedArtifactData".into(), v.clone());
            }
            None => {
                return Err(invalid(
                    "action 'edit-accept' needs editedArtifactData",
                    json!({"path": "/editedArtifactData"}),
                ))
            }
        },
        _ => {}
    }
    // The host records the authenticated principal; a client-supplied decidedBy is not trusted.
    out.insert("decidedBy".into(), json!(decided_by));
    out.insert("decidedAt".into(), json!(at));
    let output = Value::Object(out);
    let mut event = output.clone();
    event["nodeId"] = json!(node_id);
    event["interruptId"] = json!(interrupt_id);
    Ok(Resolution {
        resume_value: output.clone(),
        rejected: action == "reject",
        output,
        kind_event: Some(("approval.received", event)),
    })
}

fn clarification(
    data: &Value,
    resume: &Value,
    node_id: &str,
    interrupt_id: &str,
    answered_by: &str,
) -> Result<Resolution, ResumeError> {
    let questions: Vec<&str> = data
        .get("questions")
        .and_then(Value::as_array)
        .map(|qs| {
            qs.iter()
                .filter_map(|q| q.get("id").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    // Both shapes: `{q1: "blue"}` (what clients send) and `[{id, answer}]` (the spec type).
    let answers: Map<String, Value> = match resume.get("answers") {
        Some(Value::Object(m)) => m.clone(),
        Some(Value::Array(items)) => {
            let mut m = Map::new();
            for (i, item) in items.iter().enumerate() {
                let id = item.get("id").and_then(Value::as_str).ok_or_else(|| {
                    invalid(
                        "every answer needs a string id",
                        json!({"path": format!("/answers/{i}/id")}),
                    )
                })?;
                let answer = item.get("answer").cloned().unwrap_or(Value::Null);
                m.insert(id.to_string(), answer);
            }
            m
        }
        _ => return Err(invalid(
            "resumeValue.answers is required (an object keyed by question id, or [{id, answer}])",
            json!({"path": "/answers", "questions": questions}),
        )),
    };
    let unknown: Vec<&String> = answers
        .keys()
        .filter(|k| !questions.contains(&k.as_str()))
        .collect();
    if !unknown.is_empty() {
        return Err(invalid(
            format!("answers for unknown questions: {unknown:?}"),
            json!({"path": "/answers", "unknown": unknown, "questions": questions}),
        ));
    }
    let missing: Vec<&str> = questions
        .iter()
        .copied()
        .filter(|q| answers.get(*q).map(Value::is_null).unwrap_or(true))
        .collect();
    if !missing.is_empty() {
        return Err(invalid(
            format!("unanswered questions: {missing:?}"),
            json!({"path": "/answers", "missing": missing}),
        ));
    }
    let output = json!({"answers": answers, "answeredBy": answered_by});
    let event = json!({"nodeId": node_id, "interruptId": interrupt_id, "answers": answers, "answeredBy": answered_by});
    Ok(Resolution {
        resume_value: json!({"answers": answers}),
        output,
        kind_event: Some(("clarification.resolved", event)),
        rejected: false,
    })
}

fn external_event(data: &Value, resume: &Value, at: &str) -> Result<Resolution, ResumeError> {
    // The spec shape is `{eventPayload}`; clients also post the event bare.
    let payload = match resume.get("eventPayload") {
        Some(p) => p.clone(),
        None => resume.clone(),
    };
    let empty = Map::new();
    let correlation = data
        .get("correlation")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    // Subset rule (spec gap I3): every correlation key must deep-equal the event's; the event
    // may carry more keys.
    let fields: Vec<String> = correlation
        .iter()
        .filter(|(k, v)| payload.get(k.as_str()) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    if !fields.is_empty() {
        return Err(ResumeError::CorrelationMismatch { fields });
    }
    // Matched against the event as delivered; recorded only redacted (the profile's "with
    // redaction applied"): the event log, the node output and the interrupt row all get this.
    let (payload, redacted) =
        super::external::redact(&payload, &super::external::redact_names(data));
    let mut resume_value = json!({"eventPayload": payload, "redacted": redacted});
    if let Some(c) = data.get("correlationId") {
        resume_value["correlationId"] = c.clone();
    }
    let mut output = resume_value.clone();
    output["eventType"] = data.get("eventType").cloned().unwrap_or(Value::Null);
    output["receivedAt"] = json!(at);
    Ok(Resolution {
        resume_value,
        output,
        kind_event: None,
        rejected: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(kind: Kind, data: Value, resume: Value) -> Result<Resolution, ResumeError> {
        validate(kind, &data, &resume, "n", "i", "key-1", "t")
    }

    #[test]
    fn approval_actions() {
        let data = json!({"actions": ["accept", "reject"]});
        let r = v(
            Kind::Approval,
            data.clone(),
            json!({"action": "accept", "decidedBy": "mallory"}),
        )
        .unwrap();
        assert_eq!(
            r.output["decidedBy"], "key-1",
            "client decidedBy is not trusted"
        );
        assert!(!r.rejected);
        assert!(
            v(Kind::Approval, data.clone(), json!({"action": "reject"}))
                .unwrap()
                .rejected
        );
        assert!(v(Kind::Approval, data.clone(), json!({"action": "maybe"})).is_err());
        assert!(
            v(Kind::Approval, data.clone(), json!({"action": "refine"})).is_err(),
            "refine not allowed here"
        );
        assert_eq!(
            v(
                Kind::Approval,
                data.clone(),
                json!({"decision": "approved"})
            )
            .unwrap()
            .output["action"],
            "accept"
        );
        assert!(v(Kind::Approval, data, json!("accept")).is_err());
        let all = json!({"actions": ["accept", "refine", "edit"]});
        assert!(
            v(Kind::Approval, all.clone(), json!({"action": "refine"})).is_err(),
            "needs feedback"
        );
        assert_eq!(
            v(
                Kind::Approval,
                all.clone(),
                json!({"action": "refine", "feedback": "shorter"})
            )
            .unwrap()
            .output["refineFeedback"]["text"],
            "shorter"
        );
        assert!(v(
            Kind::Approval,
            all.clone(),
            json!({"action": "edit-accept"})
        )
        .is_err());
        assert!(v(
            Kind::Approval,
            all,
            json!({"action": "edit-accept", "editedArtifactData": 1})
        )
        .is_ok());
    }

    #[test]
    fn clarification_answers() {
        let data = json!({"questions": [{"id": "q1", "question": "?"}]});
        let a = v(
            Kind::Clarification,
            data.clone(),
            json!({"answers": {"q1": "blue"}}),
        )
        .unwrap();
        let b = v(
            Kind::Clarification,
            data.clone(),
            json!({"answers": [{"id": "q1", "answer": "blue"}]}),
        )
        .unwrap();
        assert_eq!(a.output["answers"], b.output["answers"]);
        assert!(v(Kind::Clarification, data.clone(), json!({"answers": {}})).is_err());
        assert!(v(
            Kind::Clarification,
            data.clone(),
            json!({"answers": {"q1": "x", "q9": 1}})
        )
        .is_err());
        assert!(v(Kind::Clarification, data, json!({})).is_err());
    }

    #[test]
    fn correlation_subset_rule() {
        let data =
            json!({"eventType": "e", "correlation": {"orderId": "o1", "status": "completed"}});
        assert!(v(
            Kind::ExternalEvent,
            data.clone(),
            json!({"orderId": "o1", "status": "completed", "extra": 1})
        )
        .is_ok());
        assert!(v(
            Kind::ExternalEvent,
            data.clone(),
            json!({"eventPayload": {"orderId": "o1", "status": "completed"}})
        )
        .is_ok());
        assert_eq!(
            v(
                Kind::ExternalEvent,
                data,
                json!({"orderId": "other", "status": "completed"})
            ),
            Err(ResumeError::CorrelationMismatch {
                fields: vec!["orderId".into()]
            })
        );
    }
}
