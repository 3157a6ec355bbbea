;; misbehave.fs-escape-read: wants to read a host file descriptor through WASI.
;; Expected: refused before instantiation, sandbox_escape_attempt / host-fs-escape.
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (memory 1)
  (func (export "invoke") (param i32) (result i32)
    (call $fd_read (i32.const 3) (i32.const 0) (i32.const 1) (i32.const 16))))
