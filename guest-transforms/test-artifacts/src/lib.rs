//! The example and test guests (`hostile`, `traps-always`, ...), compiled to wasm32-wasip2
//! components for the tests, exposed as paths. The product never depends on this crate.

include!(concat!(env!("OUT_DIR"), "/guests.rs"));
