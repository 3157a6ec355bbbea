//! Logging into the run's captured logs (RFC 0008 `openwop_log`, the
//! component world's `host.log`). The host keeps a bounded number of entries
//! per invocation and truncates long messages; `wopbox pack test` prints them.
//! On a non-wasm target (unit tests) lines go to stderr.

/// Log levels, as the host records them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
}

/// Log `message` at `level`.
pub fn log(level: Level, message: &str) {
    imp::log(level, message)
}

pub fn trace(message: &str) {
    log(Level::Trace, message)
}
pub fn debug(message: &str) {
    log(Level::Debug, message)
}
pub fn info(message: &str) {
    log(Level::Info, message)
}
pub fn warn(message: &str) {
    log(Level::Warn, message)
}
pub fn error(message: &str) {
    log(Level::Error, message)
}

#[cfg(all(target_arch = "wasm32", not(target_os = "wasi")))]
mod imp {
    pub fn log(level: super::Level, message: &str) {
        // SAFETY: the host reads `len` bytes at `ptr`, which is `message`.
        unsafe {
            crate::core::abi::openwop_log(
                level as i32,
                message.as_ptr() as i32,
                message.len() as i32,
            )
        }
    }
}

#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
mod imp {
    pub fn log(level: super::Level, message: &str) {
        crate::component::log(level, message)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    pub fn log(level: super::Level, message: &str) {
        eprintln!("[{level:?}] {message}");
    }
}
