//! The bundled `raw-logs` transform component: a thin wrapper around
//! [`vast_transform_sdk::transforms::raw_logs`], which holds the logic and its tests.

use vast_transform_sdk::{Guest, Message, Outcome, export_transform, transforms};

struct RawLogs;

impl Guest for RawLogs {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        match config.first() {
            None => Ok(()),
            Some((key, _)) => Err(format!(
                "unknown config key `{key}`: the raw-logs transform takes no configuration"
            )),
        }
    }

    fn process(batch: Vec<Message>) -> Vec<Outcome> {
        vast_transform_sdk::process_each_scoped(&batch, transforms::raw_logs)
    }
}

export_transform!(RawLogs);
