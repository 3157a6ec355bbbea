;; vendor.openwop.misbehaving-abi, re-created in WAT: answers
;; openwop_abi_version() = 999, a version no host lists, so a conforming host
;; refuses the pack at load and leaves it out of loadedPacks. The node
;; vendor.openwop.misbehaving.abi-bomb must never run: invoking it traps.
;; (ptr, len) exports use the multi-value encoding. Built by ../build.sh.
(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 2048))
  (data (i32.const 1024) "vendor.openwop.misbehaving-abi")      ;; 30
  (data (i32.const 1088) "vendor.openwop.misbehaving.abi-bomb") ;; 35

  (func (export "openwop_abi_version") (result i32) (i32.const 999))
  (func (export "openwop_pack_name") (result i32 i32) (i32.const 1024) (i32.const 30))
  (func (export "openwop_node_count") (result i32) (i32.const 1))
  (func (export "openwop_node_id_at") (param $i i32) (result i32 i32)
    (if (result i32 i32) (i32.eqz (local.get $i))
      (then (i32.const 1088) (i32.const 35))
      (else (i32.const 0) (i32.const 0))))
  (func (export "openwop_alloc") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p)
      (i32.and (i32.add (local.get $size) (i32.const 15)) (i32.const -16))))
    (local.get $p))
  (func (export "openwop_free") (param $ptr i32) (param $size i32))
  (func (export "openwop_node_invoke") (param $node i32) (param $ptr i32) (param $len i32) (result i32 i32)
    unreachable)
)
