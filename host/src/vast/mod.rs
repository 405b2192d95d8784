//! VAST Database: the tabular-API client, its SigV4 signing and wire formats, and the simulator.

pub mod client;
pub mod sigv4;
pub mod sim;
pub mod wire;
