//! The bundled `otel-metrics` transform component: a thin wrapper around
//! [`vast_transform_sdk::transforms::otel_metrics`], which holds the logic and its tests.

use vast_transform_sdk::{Guest, Message, Outcome, export_transform, transforms};

struct OtelMetrics;

impl Guest for OtelMetrics {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        match config.first() {
            None => Ok(()),
            Some((key, _)) => Err(format!(
                "unknown config key `{key}`: the otel-metrics transform takes no configuration"
            )),
        }
    }

    fn process(batch: Vec<Message>) -> Vec<Outcome> {
        // In the per-batch arena; each message's gunzipped payload and decoded request go to
        // scratch memory inside the transform, so they do not pile up there (BENCHMARKS.md,
        // eighth round).
        vast_transform_sdk::process_each_scoped(&batch, transforms::otel_metrics)
    }
}

export_transform!(OtelMetrics);
