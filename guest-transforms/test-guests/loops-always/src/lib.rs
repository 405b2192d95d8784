//! Test guest for hot reload: initialises fine, then spins forever on every message (only
//! the host's deadline ends a call).

use vast_transform_sdk::{Guest, Message, Outcome, export_transform};

struct LoopsAlways;

impl Guest for LoopsAlways {
    fn init(_config: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }
    fn process(_batch: Vec<Message>) -> Vec<Outcome> {
        let mut x = 0u64;
        loop {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }
}

export_transform!(LoopsAlways);
