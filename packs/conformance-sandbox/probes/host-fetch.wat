;; well-behaved.host-fetch: calls the `fetch` host capability (granted per
;; invocation). Without the grant: sandbox_capability_denied / "fetch".
(module
  (import "openwop" "fetch" (func $fetch (param i32) (result i32)))
  (func (export "invoke") (param i32) (result i32)
    (call $fetch (local.get 0))))
