;; misbehave.env-leak: wants the host's environment variables.
;; Expected: sandbox_escape_attempt / host-env-leak.
(module
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (memory 1)
  (func (export "invoke") (param i32) (result i32)
    (call $environ_get (i32.const 0) (i32.const 64))))
