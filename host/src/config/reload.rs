//! `[reload]`: hot reload of transforms, enrichment tables and the config file.

/// Hot-reload settings (`[reload]`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// Watch transform files, enrichment tables and the config file.
    pub enabled: bool,
    /// Poll for changes instead of relying on filesystem events.
    pub poll: bool,
    /// Quiet time after the last change before a file is read.
    pub debounce_ms: u64,
    /// Recent messages kept per pipeline for the shadow check.
    pub shadow_messages: usize,
    /// Largest fraction of shadow messages the candidate may fail that the running version accepted.
    pub shadow_max_new_failures: f64,
    /// Largest fraction of shadow messages whose rows the candidate may change (table, row
    /// count or any field); 1.0 reports the changes and refuses nothing.
    pub shadow_max_changed: f64,
    /// Wall time a candidate's whole shadow check may take (both versions on the sample);
    /// over it the candidate is rejected.
    pub check_budget_ms: u64,
    /// A new version is watched after its swap for at least this many batches, ...
    pub probation_batches: u64,
    /// ... this many records ...
    pub probation_records: u64,
    /// ... and this many seconds (all three minimums must be met).
    pub probation_seconds: u64,
    /// Error-and-trap rate over the probation that triggers a rollback.
    pub rollback_error_rate: f64,
    /// New traps (crashes, deadlines, memory) the probation tolerates on records the replaced
    /// version handled, whatever the rate: a version that crashes where the old one did not is
    /// broken even when it does so rarely.
    pub rollback_max_new_traps: u64,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            enabled: true,
            poll: false,
            debounce_ms: 300,
            shadow_messages: 200,
            shadow_max_new_failures: 0.0,
            shadow_max_changed: 1.0,
            check_budget_ms: 5000,
            probation_batches: 10,
            probation_records: 1000,
            probation_seconds: 60,
            rollback_error_rate: 0.2,
            rollback_max_new_traps: 0,
        }
    }
}
