;; misbehave.process-escape: wants to signal/exit the host process.
;; Expected: sandbox_escape_attempt / host-process-escape.
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (func (export "invoke") (param i32) (result i32)
    (call $proc_exit (i32.const 1))
    (i32.const 0)))
