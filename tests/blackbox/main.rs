//! Black-box tests: each test starts the real `wopbox` binary and talks HTTP to it.

mod harness;

mod auth;
mod discovery;
mod durability;
mod engine;
mod errors;
mod events;
mod idempotency;
mod runs;
mod workflows;
