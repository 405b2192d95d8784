//! The bundled transforms, compiled to wasm32-wasip2 components during the build and
//! embedded as bytes (so the host binary runs with no other file). Example and test guests
//! are built by `vast-test-guests`, which the product does not depend on.

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
