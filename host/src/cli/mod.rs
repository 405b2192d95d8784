//! Command implementations (wiring: errors are `anyhow` here).

pub mod transform_test;
