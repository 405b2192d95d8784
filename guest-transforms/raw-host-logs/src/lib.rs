//! The bundled `raw-host-logs` transform component: a thin wrapper around
//! [`vast_transform_sdk::transforms::raw_host_logs`], which holds the logic and its tests.

use vast_transform_sdk::{Guest, Message, Outcome, export_transform, transforms};

struct RawHostLogs;

impl Guest for RawHostLogs {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        match config.first() {
            None => Ok(()),
            Some((key, _)) => Err(format!(
                "unknown config key `{key}`: the raw-host-logs transform takes no configuration"
            )),
        }
    }

    fn process(batch: Vec<Message>) -> Vec<Outcome> {
        vast_transform_sdk::process_each_scoped(&batch, transforms::raw_host_logs)
    }
}

export_transform!(RawHostLogs);
