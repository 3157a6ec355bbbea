;; vendor.openwop.rust-hello, re-created in WAT (our own source, not the
;; openwop-examples Rust crate): an RFC 0008 ABI v1 pack with one node,
;; vendor.openwop.rust-hello.greet: {"name": "Ada"} -> {"greeting": "Hello, Ada!"},
;; default "world", one openwop_log line at level 2 (info).
;; Like the Rust original, every (ptr, len) export uses the PACKED i64 encoding
;; ((len << 32) | ptr) and the only import is openwop.openwop_log.
;; Built by ../build.sh.
(module
  (import "openwop" "openwop_log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 4096))

  (data (i32.const 1024) "vendor.openwop.rust-hello")           ;; 25
  (data (i32.const 1056) "vendor.openwop.rust-hello.greet")     ;; 31
  (data (i32.const 1088) "\"inputs\":")                         ;; 9
  (data (i32.const 1104) "\"name\":\"")                         ;; 8
  (data (i32.const 1120) "world")                               ;; 5
  (data (i32.const 1136) "{\"outcome\":\"completed\",\"output\":{\"greeting\":\"Hello, ") ;; 52
  (data (i32.const 1200) "!\"}}")                               ;; 4
  (data (i32.const 1216) "{\"outcome\":\"failed\",\"error\":{\"code\":\"wasm_pack_unknown_node_index\",\"message\":\"unknown node index\"}}") ;; 99
  (data (i32.const 1328) "greet: composing a greeting")        ;; 27

  ;; (ptr, len) -> (len << 32) | ptr
  (func $pack (param $p i32) (param $l i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $l)) (i64.const 32)) (i64.extend_i32_u (local.get $p))))

  (func (export "openwop_abi_version") (result i32) (i32.const 1))
  (func (export "openwop_pack_name") (result i64) (call $pack (i32.const 1024) (i32.const 25)))
  (func (export "openwop_node_count") (result i32) (i32.const 1))
  (func (export "openwop_node_id_at") (param $i i32) (result i64)
    (call $pack (call $node_id_at (local.get $i))))
  (func $node_id_at (param $i i32) (result i32 i32)
    (if (result i32 i32) (i32.eqz (local.get $i))
      (then (i32.const 1056) (i32.const 31))
      (else (i32.const 0) (i32.const 0))))

  ;; Bump allocator; grows memory when needed, traps if the host refuses.
  (func $alloc (export "openwop_alloc") (param $size i32) (result i32)
    (local $p i32) (local $end i32) (local $have i32)
    (local.set $p (global.get $heap))
    (local.set $end (i32.add (local.get $p)
      (i32.and (i32.add (local.get $size) (i32.const 15)) (i32.const -16))))
    (local.set $have (i32.shl (memory.size) (i32.const 16)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq (i32.const -1)
              (memory.grow (i32.shr_u
                (i32.add (i32.sub (local.get $end) (local.get $have)) (i32.const 65535))
                (i32.const 16))))
          (then unreachable))))
    (global.set $heap (local.get $end))
    (local.get $p))
  (func (export "openwop_free") (param $ptr i32) (param $size i32))

  ;; Index of needle in haystack, or -1.
  (func $find (param $h i32) (param $hl i32) (param $n i32) (param $nl i32) (result i32)
    (local $i i32) (local $j i32)
    (block $none
      (loop $outer
        (br_if $none (i32.gt_s (i32.add (local.get $i) (local.get $nl)) (local.get $hl)))
        (local.set $j (i32.const 0))
        (block $mismatch
          (loop $inner
            (if (i32.ge_u (local.get $j) (local.get $nl)) (then (return (local.get $i))))
            (br_if $mismatch (i32.ne
              (i32.load8_u (i32.add (local.get $h) (i32.add (local.get $i) (local.get $j))))
              (i32.load8_u (i32.add (local.get $n) (local.get $j)))))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br $inner)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $outer)))
    (i32.const -1))

  (func (export "openwop_node_invoke") (param $node i32) (param $ptr i32) (param $len i32) (result i64)
    (call $pack (call $invoke (local.get $node) (local.get $ptr) (local.get $len))))
  (func $invoke (param $node i32) (param $ptr i32) (param $len i32) (result i32 i32)
    (local $i i32) (local $j i32) (local $s i32) (local $k i32) (local $end i32)
    (local $name i32) (local $nlen i32) (local $out i32) (local $total i32)
    (if (local.get $node) (then (return (i32.const 1216) (i32.const 99))))
    (call $log (i32.const 2) (i32.const 1328) (i32.const 27))
    ;; default name
    (local.set $name (i32.const 1120))
    (local.set $nlen (i32.const 5))
    ;; inputs are serialized last: look for "name":" after "inputs":
    (local.set $i (call $find (local.get $ptr) (local.get $len) (i32.const 1088) (i32.const 9)))
    (if (i32.ge_s (local.get $i) (i32.const 0))
      (then
        (local.set $s (i32.add (local.get $ptr) (local.get $i)))
        (local.set $j (call $find (local.get $s) (i32.sub (local.get $len) (local.get $i)) (i32.const 1104) (i32.const 8)))
        (if (i32.ge_s (local.get $j) (i32.const 0))
          (then
            (local.set $s (i32.add (local.get $s) (i32.add (local.get $j) (i32.const 8))))
            (local.set $end (i32.add (local.get $ptr) (local.get $len)))
            (local.set $k (local.get $s))
            ;; scan to the closing quote, stepping over escapes (kept escaped)
            (block $done
              (loop $scan
                (br_if $done (i32.ge_u (local.get $k) (local.get $end)))
                (br_if $done (i32.eq (i32.load8_u (local.get $k)) (i32.const 34)))
                (if (i32.eq (i32.load8_u (local.get $k)) (i32.const 92))
                  (then (local.set $k (i32.add (local.get $k) (i32.const 1)))))
                (local.set $k (i32.add (local.get $k) (i32.const 1)))
                (br $scan)))
            (if (i32.lt_u (local.get $k) (local.get $end))
              (then
                (local.set $name (local.get $s))
                (local.set $nlen (i32.sub (local.get $k) (local.get $s)))))))))
    (local.set $total (i32.add (i32.const 56) (local.get $nlen)))
    (local.set $out (call $alloc (local.get $total)))
    (memory.copy (local.get $out) (i32.const 1136) (i32.const 52))
    (memory.copy (i32.add (local.get $out) (i32.const 52)) (local.get $name) (local.get $nlen))
    (memory.copy (i32.add (local.get $out) (i32.add (i32.const 52) (local.get $nlen))) (i32.const 1200) (i32.const 4))
    (local.get $out) (local.get $total))
)
