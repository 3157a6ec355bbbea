;; misbehave.memory-bomb: grows its memory until the host refuses, then keeps
;; writing past the end. Expected: sandbox_memory_exceeded.
(module
  (memory 1)
  (func (export "invoke") (param i32) (result i32)
    (block $denied
      (loop $grow
        (br_if $denied (i32.eq (memory.grow (i32.const 16)) (i32.const -1)))
        (br $grow)))
    ;; the last byte we were refused: out of bounds
    (i32.store (i32.mul (memory.size) (i32.const 65536)) (i32.const 1))
    (i32.const 0)))
