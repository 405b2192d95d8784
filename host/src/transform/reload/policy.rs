//! The decisions of a reload: the shadow check a candidate must pass before it runs, and
//! when a new version is rolled back during its probation.

use super::Version;
use crate::model::Message;
use crate::transform::wasm::{
    ErrorKind, InstanceSettings, MessageResult, TransformInstance, TransformModule,
};
use std::sync::Arc;

/// The rollback decision: enough evidence (at least 20 records, or the probation over) and
/// a rate of new failures (records the previous version handled) above `threshold`.
pub fn should_roll_back(messages: u64, new_failures: u64, over: bool, threshold: f64) -> bool {
    if messages == 0 {
        return false;
    }
    let rate = new_failures as f64 / messages as f64;
    (messages >= 20 || over) && rate > threshold
}

/// Instantiate the candidate (`init` with its config) and replay `sample` through it and the
/// running version; refuse it when it traps or fails messages the running version accepted
/// (more than `max_new` of the sample), naming the first differences.
pub fn shadow_check(
    running: &Version,
    module: &Arc<TransformModule>,
    settings: &InstanceSettings,
    sample: &[Message],
    max_new: f64,
) -> Result<(), String> {
    let mut cand = TransformInstance::new(module.clone(), settings.clone())
        .map_err(|e| e.to_string())?
        .quiet_traps();
    if sample.is_empty() {
        return Ok(());
    }
    let mut base = TransformInstance::new(running.module.clone(), running.settings.clone())
        .map_err(|e| format!("running version: {e}"))?
        .quiet_traps();
    let t = std::time::Instant::now();
    let before = base.process(sample, 0);
    let running_took = t.elapsed();
    // The whole sample in one call first: a looping candidate costs one deadline, not one
    // per record (170 records at 2 s each blocked every reload for six minutes).
    let after = match cand.process_once(sample, 0) {
        Ok(after) => after,
        Err(e) if matches!(e.kind, ErrorKind::Deadline { .. }) => {
            return Err(format!(
                "{} shadow-checked on {} recent messages: {e}, where the running version took {} ms for all of them",
                module.version(),
                sample.len(),
                running_took.as_millis()
            ));
        }
        // Another trap is quick: find the records that cause it one at a time.
        Err(_) => cand.process(sample, 0),
    };
    let mut diffs = Vec::new();
    for ((m, b), a) in sample.iter().zip(&before).zip(&after) {
        let ok_before = matches!(b, MessageResult::Rows(_) | MessageResult::Skip(_));
        let why = match a {
            MessageResult::Error(e) if e.is_trap() => Some(format!("traps: {e}")),
            MessageResult::Fail(e) if ok_before => Some(format!("fails: {e}")),
            MessageResult::Error(e) if ok_before => Some(format!("error: {e}")),
            _ => None,
        };
        if let Some(w) = why {
            diffs.push(format!("{}/{}@{}: {w}", m.topic, m.partition, m.offset));
        }
    }
    let allowed = (max_new * sample.len() as f64).floor() as usize;
    if diffs.len() > allowed {
        return Err(format!(
            "{} shadow-checked on {} recent messages: {} would newly fail (allowed {allowed}); first: {}",
            module.version(),
            sample.len(),
            diffs.len(),
            diffs.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollback_decision() {
        assert!(!should_roll_back(0, 0, false, 0.2));
        assert!(
            !should_roll_back(10, 10, false, 0.2),
            "too little evidence yet"
        );
        assert!(should_roll_back(10, 10, true, 0.2), "probation over");
        assert!(should_roll_back(100, 50, false, 0.2));
        assert!(!should_roll_back(100, 10, false, 0.2));
        assert!(
            !should_roll_back(100, 20, true, 0.2),
            "at the threshold is fine"
        );
    }
}
