;; misbehave.fs-escape-write: wants to open a host path for writing through WASI.
;; Expected: refused before instantiation, sandbox_escape_attempt / host-fs-escape.
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory 1)
  (data (i32.const 0) "/etc/passwd")
  (func (export "invoke") (param i32) (result i32)
    (call $path_open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 11)
      (i32.const 1) (i64.const 64) (i64.const 64) (i32.const 0) (i32.const 32))))
