//! Test guest for hot reload: initialises fine, then traps on every message.

use vast_transform_sdk::{Guest, Message, Outcome, export_transform};

struct TrapsAlways;

impl Guest for TrapsAlways {
    fn init(_config: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }
    fn process(_batch: Vec<Message>) -> Vec<Outcome> {
        panic!("traps-always traps on every message")
    }
}

export_transform!(TrapsAlways);
