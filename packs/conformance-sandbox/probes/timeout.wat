;; misbehave.timeout: never returns. Expected: sandbox_timeout at the wall-clock cap.
(module
  (func (export "invoke") (param i32) (result i32)
    (loop $spin (br $spin))
    (i32.const 0)))
