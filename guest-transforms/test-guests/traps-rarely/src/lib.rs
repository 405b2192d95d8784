//! Test guest for hot reload: the raw-logs logic, but it traps on one record in a hundred
//! (offsets ending in 07 modulo 100): a version that looks fine on a small sample.

use vast_transform_sdk::{Guest, Message, Outcome, export_transform, transforms};

struct TrapsRarely;

impl Guest for TrapsRarely {
    fn init(_config: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }
    fn process(batch: Vec<Message>) -> Vec<Outcome> {
        vast_transform_sdk::process_each(&batch, |m, stats| {
            if m.offset % 100 == 7 {
                panic!("traps-rarely traps on offset {}", m.offset)
            }
            transforms::raw_logs(m, stats)
        })
    }
}

export_transform!(TrapsRarely);
