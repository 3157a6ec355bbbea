//! Black-box tests: each test starts the real `wopbox` binary and talks HTTP to it.

mod harness;

mod audit;
mod auth;
mod authoring;
mod cli_run;
mod discovery;
mod durability;
mod engine;
mod errors;
mod events;
mod examples;
mod idempotency;
mod interop;
mod interrupt_auth;
mod interrupt_cascade;
mod interrupt_external;
mod interrupt_quorum;
mod interrupts;
mod metrics;
mod observability;
mod ops;
mod packs;
mod postgres;
mod production;
mod remote;
mod retention;
mod runs;
mod sandbox_seam;
mod scopes;
mod subworkflows;
mod templates;
mod tenancy;
mod webhooks;
mod workflows;
