//! The guest transforms compiled to wasm32-wasip2 components during the build.
//!
//! The four bundled transforms are embedded as bytes (so the host binary runs with no other
//! file); the example and test guests are exposed only as paths.

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
