;; misbehave.network-escape: wants a raw socket.
;; Expected: sandbox_escape_attempt / network-escape.
(module
  (import "wasi_snapshot_preview1" "sock_connect" (func $sock_connect (param i32 i32) (result i32)))
  (func (export "invoke") (param i32) (result i32)
    (call $sock_connect (i32.const 3) (i32.const 0))))
