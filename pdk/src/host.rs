//! The host calls a pack can make besides logging, as safe functions.
//!
//! RFC 0008 core modules (`wasm32-unknown-unknown`) get the baseline host
//! functions of RFC 0008 §C: the invocation's clock, deterministic random
//! bytes (seeded per run, node and attempt, so a replay sees the same bytes),
//! the run's channels and variables, and interrupts. They are always linked,
//! never capability-gated. Components (`wasm32-wasip2`) reach time and
//! randomness through WASI (`std::time`), and the `node-pack` world has no
//! channel, variable or interrupt interface yet: those calls return
//! [`HostError::Unavailable`] there rather than failing to link.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// Why a host call did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    /// This target's host interface has no such call.
    Unavailable(&'static str),
    /// The host refused the value (RFC 0008 status 10, `validation_error`).
    Invalid,
    /// The per-invocation write budget is spent (status 20, `capability_breach`).
    BudgetExhausted,
    /// A status code this PDK does not know.
    Status(i32),
    /// The value could not be (de)serialized.
    Json(String),
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostError::Unavailable(what) => {
                write!(f, "{what} is not available to this kind of pack")
            }
            HostError::Invalid => f.write_str("the host refused the value"),
            HostError::BudgetExhausted => f.write_str("the invocation's write budget is spent"),
            HostError::Status(s) => write!(f, "host call failed with status {s}"),
            HostError::Json(e) => write!(f, "value is not usable JSON: {e}"),
        }
    }
}

impl std::error::Error for HostError {}

impl From<HostError> for crate::NodeError {
    fn from(e: HostError) -> Self {
        let code = match e {
            HostError::Invalid | HostError::Json(_) => "validation_error",
            HostError::BudgetExhausted => "capability_breach",
            _ => "host_call_failed",
        };
        crate::NodeError::new(code, e.to_string())
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, HostError> {
    serde_json::to_vec(v).map_err(|e| HostError::Json(e.to_string()))
}

fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, HostError> {
    serde_json::from_slice(bytes).map_err(|e| HostError::Json(e.to_string()))
}

/// Milliseconds since the Unix epoch. In a core module this is the host's
/// answer, fixed for the invocation (replay-safe).
pub fn now_ms() -> i64 {
    imp::now_ms()
}

/// Fill `buf` with random bytes: deterministic per (run, node, attempt) in a
/// core module. Not for secrets.
pub fn random(buf: &mut [u8]) -> Result<(), HostError> {
    imp::random(buf)
}

/// Read channel `name`; `None` when the run has no such channel.
pub fn channel_read<T: DeserializeOwned>(name: &str) -> Result<Option<T>, HostError> {
    imp::read(imp::Store::Channel, name)?
        .map(|b| from_json(&b))
        .transpose()
}

/// Write `value` to channel `name`.
pub fn channel_write<T: Serialize>(name: &str, value: &T) -> Result<(), HostError> {
    imp::write(imp::Store::Channel, name, &to_json(value)?)
}

/// Read run variable `key`; `None` when unset.
pub fn variable_get<T: DeserializeOwned>(key: &str) -> Result<Option<T>, HostError> {
    imp::read(imp::Store::Variable, key)?
        .map(|b| from_json(&b))
        .transpose()
}

/// Set run variable `key`.
pub fn variable_set<T: Serialize>(key: &str, value: &T) -> Result<(), HostError> {
    imp::write(imp::Store::Variable, key, &to_json(value)?)
}

/// Ask the host to suspend the run with `payload` (RFC 0008 interrupts).
/// On a resumed invocation this returns the resume value; otherwise the host
/// ends the invocation here (this call does not return).
pub fn interrupt(payload: &Value) -> Result<Value, HostError> {
    let bytes = imp::interrupt(&to_json(payload)?)?;
    from_json(&bytes)
}

#[cfg(all(target_arch = "wasm32", not(target_os = "wasi")))]
mod imp {
    use super::HostError;
    use crate::core::abi;

    pub enum Store {
        Channel,
        Variable,
    }

    pub fn now_ms() -> i64 {
        // SAFETY: no arguments.
        unsafe { abi::openwop_now_ms() }
    }

    pub fn random(buf: &mut [u8]) -> Result<(), HostError> {
        // SAFETY: the host writes exactly `buf.len()` bytes at `buf`.
        unsafe { abi::openwop_random(buf.as_mut_ptr() as i32, buf.len() as i32) };
        Ok(())
    }

    pub fn read(store: Store, name: &str) -> Result<Option<Vec<u8>>, HostError> {
        let (p, l) = (name.as_ptr() as i32, name.len() as i32);
        // SAFETY: the host reads `name`; what it returns was allocated
        // through our `openwop_alloc`, and `take` frees it.
        let packed = unsafe {
            match store {
                Store::Channel => abi::openwop_channel_read(p, l),
                Store::Variable => abi::openwop_variable_get(p, l),
            }
        };
        Ok(unsafe { crate::core::take(packed) })
    }

    pub fn write(store: Store, name: &str, value: &[u8]) -> Result<(), HostError> {
        let (np, nl) = (name.as_ptr() as i32, name.len() as i32);
        let (vp, vl) = (value.as_ptr() as i32, value.len() as i32);
        // SAFETY: the host only reads both ranges.
        let status = unsafe {
            match store {
                Store::Channel => abi::openwop_channel_write(np, nl, vp, vl),
                Store::Variable => abi::openwop_variable_set(np, nl, vp, vl),
            }
        };
        match status {
            0 => Ok(()),
            10 => Err(HostError::Invalid),
            20 => Err(HostError::BudgetExhausted),
            s => Err(HostError::Status(s)),
        }
    }

    pub fn interrupt(payload: &[u8]) -> Result<Vec<u8>, HostError> {
        // SAFETY: as in `read`.
        let packed =
            unsafe { abi::openwop_interrupt(payload.as_ptr() as i32, payload.len() as i32) };
        Ok(unsafe { crate::core::take(packed) }.unwrap_or_else(|| b"null".to_vec()))
    }
}

#[cfg(not(all(target_arch = "wasm32", not(target_os = "wasi"))))]
mod imp {
    use super::HostError;

    pub enum Store {
        Channel,
        Variable,
    }

    pub fn now_ms() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }

    pub fn random(_buf: &mut [u8]) -> Result<(), HostError> {
        Err(HostError::Unavailable("openwop_random"))
    }

    pub fn read(store: Store, _name: &str) -> Result<Option<Vec<u8>>, HostError> {
        Err(HostError::Unavailable(match store {
            Store::Channel => "openwop_channel_read",
            Store::Variable => "openwop_variable_get",
        }))
    }

    pub fn write(store: Store, _name: &str, _value: &[u8]) -> Result<(), HostError> {
        Err(HostError::Unavailable(match store {
            Store::Channel => "openwop_channel_write",
            Store::Variable => "openwop_variable_set",
        }))
    }

    pub fn interrupt(_payload: &[u8]) -> Result<Vec<u8>, HostError> {
        Err(HostError::Unavailable("openwop_interrupt"))
    }
}
