//! The sandbox's integration tests: ONE test binary (wasmtime's
//! `tests/all` layout) so it links once.

mod adversarial;
mod cache;
mod component;
mod probes;
mod rfc0008;
mod util;
