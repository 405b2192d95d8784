//! Test guest for hot reload: the raw-logs logic, but every message with an odd offset fails.

use vast_transform_sdk::{Guest, Message, Outcome, export_transform, transforms};

struct FailsHalf;

impl Guest for FailsHalf {
    fn init(_config: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }
    fn process(batch: Vec<Message>) -> Vec<Outcome> {
        vast_transform_sdk::process_each(&batch, |m, stats| {
            if m.offset % 2 == 1 {
                Outcome::Fail("fails-half rejects odd offsets".into())
            } else {
                transforms::raw_logs(m, stats)
            }
        })
    }
}

export_transform!(FailsHalf);
