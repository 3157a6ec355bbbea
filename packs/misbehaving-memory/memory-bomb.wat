;; vendor.openwop.misbehaving: memory bomb (RFC 0008 §K), re-created in WAT.
;;
;; Node vendor.openwop.misbehaving.memory-bomb asks for 16 MiB more linear
;; memory at a time, touching one byte of every new chunk, until memory.grow
;; answers -1 (the host's cap), then traps with `unreachable`, just as a Rust
;; allocator aborts. A host enforcing its cap reports cap.breached
;; {kind: "wasm-memory"}; one without a cap would grow to 4 GiB.
;; (ptr, len) exports use the packed i64 encoding. Built by ../build.sh.
(module
  (memory (export "memory") 16)
  (global $heap (mut i32) (i32.const 2048))
  (data (i32.const 1024) "vendor.openwop.misbehaving")             ;; 26
  (data (i32.const 1088) "vendor.openwop.misbehaving.memory-bomb") ;; 38

  (func $pack (param $p i32) (param $l i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $l)) (i64.const 32)) (i64.extend_i32_u (local.get $p))))

  (func (export "openwop_abi_version") (result i32) (i32.const 1))
  (func (export "openwop_pack_name") (result i64) (call $pack (i32.const 1024) (i32.const 26)))
  (func (export "openwop_node_count") (result i32) (i32.const 1))
  (func (export "openwop_node_id_at") (param $i i32) (result i64)
    (if (result i64) (i32.eqz (local.get $i))
      (then (call $pack (i32.const 1088) (i32.const 38)))
      (else (i64.const 0))))
  (func (export "openwop_alloc") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p)
      (i32.and (i32.add (local.get $size) (i32.const 15)) (i32.const -16))))
    (local.get $p))
  (func (export "openwop_free") (param $ptr i32) (param $size i32))

  (func (export "openwop_node_invoke") (param $node i32) (param $ptr i32) (param $len i32) (result i64)
    (local $old i32)
    (loop $more
      (local.set $old (memory.grow (i32.const 256)))
      (if (i32.ne (local.get $old) (i32.const -1))
        (then
          ;; touch the first byte of the new chunk
          (i32.store8 (i32.shl (local.get $old) (i32.const 16)) (i32.const 1))
          (br $more))))
    unreachable)
)
