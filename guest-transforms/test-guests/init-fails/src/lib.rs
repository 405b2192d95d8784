//! Test guest for hot reload: a module whose `init` always refuses.

use vast_transform_sdk::{Guest, Message, Outcome, export_transform};

struct InitFails;

impl Guest for InitFails {
    fn init(_config: Vec<(String, String)>) -> Result<(), String> {
        Err("this module refuses every configuration".into())
    }
    fn process(batch: Vec<Message>) -> Vec<Outcome> {
        batch
            .iter()
            .map(|_| Outcome::Fail("never initialised".into()))
            .collect()
    }
}

export_transform!(InitFails);
