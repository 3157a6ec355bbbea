//! Validation, declared-size bounds and import gating, before anything runs.
