//! wopbox host library (filled by the core-host work).
