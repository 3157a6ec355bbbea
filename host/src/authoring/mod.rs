//! Pack authoring on the developer's machine: `wopbox pack new` (a project
//! from an embedded template) and `wopbox pack test` (one node in the real
//! sandbox, under the server's limits and grants). See docs/packs.md.
pub mod local_test;
pub mod new_pack;
