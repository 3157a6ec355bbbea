;; misbehave.capability-gate-violation: imports a host capability nobody granted.
;; Expected: sandbox_capability_denied / requestedCapability "notInAllowedList".
(module
  (import "openwop" "notInAllowedList" (func $cap (param i32) (result i32)))
  (func (export "invoke") (param i32) (result i32)
    (call $cap (local.get 0))))
