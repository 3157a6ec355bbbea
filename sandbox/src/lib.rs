//! wopbox-sandbox (filled by the sandbox work).
