//! The decisions of a reload: the shadow check a candidate must pass before it runs, and
//! when a new version is rolled back during its probation.

use super::Version;
use crate::model::{Message, Row, to_json};
use crate::transform::wasm::{
    ErrorKind, InstanceSettings, MessageResult, TransformInstance, TransformModule,
};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The rollback decision: enough evidence (at least 20 records, or the probation over) and
/// a rate of new failures (records the previous version handled) above `threshold`.
pub fn should_roll_back(messages: u64, new_failures: u64, over: bool, threshold: f64) -> bool {
    if messages == 0 {
        return false;
    }
    let rate = new_failures as f64 / messages as f64;
    (messages >= 20 || over) && rate > threshold
}

/// How a candidate's rows differ from the running version's on the shadow sample.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct OutputDiff {
    /// Sample records both versions handled (rows or skip).
    pub compared: u64,
    /// Of those, records whose outcome changed: another table, row count or field value, or
    /// rows where there was a skip (or the reverse).
    pub changed: u64,
    /// Changed records by field (`tags.team` for one tag), in name order.
    pub fields: std::collections::BTreeMap<String, u64>,
    /// The first few changes, with the record's topic/partition@offset.
    pub examples: Vec<String>,
}

/// Changes listed in [`OutputDiff::examples`].
const EXAMPLES: usize = 3;

impl OutputDiff {
    /// The fraction of compared records that changed.
    pub fn rate(&self) -> f64 {
        self.changed as f64 / self.compared.max(1) as f64
    }

    /// One line for the log and the decision: "3 of 200 records changed (tags.team 3); first: …".
    pub fn summary(&self) -> String {
        if self.changed == 0 {
            return format!("outputs unchanged on {} records", self.compared);
        }
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|(f, n)| format!("{f} {n}"))
            .collect();
        format!(
            "{} of {} records changed output ({}); first: {}",
            self.changed,
            self.compared,
            fields.join(", "),
            self.examples.join("; ")
        )
    }

    fn add(&mut self, m: &Message, before: &MessageResult, after: &MessageResult) {
        let changes = match (before, after) {
            (MessageResult::Rows(b), MessageResult::Rows(a)) => row_changes(b, a),
            (MessageResult::Skip(_), MessageResult::Skip(_)) => Vec::new(),
            (MessageResult::Rows(_), MessageResult::Skip(_)) => {
                vec![("(skipped)".to_string(), "rows -> skip".to_string())]
            }
            (MessageResult::Skip(_), MessageResult::Rows(_)) => {
                vec![("(skipped)".to_string(), "skip -> rows".to_string())]
            }
            _ => return,
        };
        self.compared += 1;
        if changes.is_empty() {
            return;
        }
        self.changed += 1;
        let names: std::collections::BTreeSet<&String> = changes.iter().map(|(f, _)| f).collect();
        for f in names {
            *self.fields.entry(f.clone()).or_default() += 1;
        }
        if self.examples.len() < EXAMPLES {
            let (f, what) = &changes[0];
            self.examples.push(format!(
                "{}/{}@{}: {f} {what}",
                m.topic, m.partition, m.offset
            ));
        }
    }
}

/// The differences between two records' rows: (field, what changed), in field order.
fn row_changes(before: &[Row], after: &[Row]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if before.len() != after.len() {
        out.push((
            "(rows)".to_string(),
            format!("{} -> {}", before.len(), after.len()),
        ));
    }
    for (b, a) in before.iter().zip(after) {
        if b.table() != a.table() {
            out.push((
                "(table)".to_string(),
                format!("{} -> {}", b.table().name(), a.table().name()),
            ));
            continue;
        }
        let (Value::Object(b), Value::Object(a)) = (to_json(b), to_json(a)) else {
            continue;
        };
        diff_objects("", &b, &a, &mut out);
    }
    out
}

/// Fields of two JSON objects that differ; `tags` is compared tag by tag.
fn diff_objects(
    prefix: &str,
    b: &Map<String, Value>,
    a: &Map<String, Value>,
    out: &mut Vec<(String, String)>,
) {
    let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
    keys.sort();
    keys.dedup();
    let null = Value::Null;
    for k in keys {
        let (vb, va) = (b.get(k).unwrap_or(&null), a.get(k).unwrap_or(&null));
        if vb == va {
            continue;
        }
        if let (true, Value::Object(ob), Value::Object(oa)) =
            (prefix.is_empty() && k == "tags", vb, va)
        {
            diff_objects("tags.", ob, oa, out);
            continue;
        }
        let show = |v: &Value| {
            let t = v.to_string();
            if t.len() > 40 {
                format!("{}…", &t[..t.floor_char_boundary(40)])
            } else {
                t
            }
        };
        out.push((
            format!("{prefix}{k}"),
            format!("{} -> {}", show(vb), show(va)),
        ));
    }
}

/// Why a shadow check did not pass.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckError {
    /// The candidate is refused, with why.
    Refused(String),
    /// The check was stopped (a newer file, a shutdown): nothing was decided.
    Cancelled,
}

/// The limits a candidate's shadow check holds it to.
#[derive(Debug, Clone, Copy)]
pub struct ShadowLimits {
    /// Largest fraction of the sample it may newly fail.
    pub max_new_failures: f64,
    /// Largest fraction of the sample whose rows it may change.
    pub max_changed: f64,
    /// Wall time the whole check may take (both versions on the sample; one thread, so it
    /// bounds the CPU it uses too).
    pub budget: std::time::Duration,
}

/// Instantiate the candidate (`init` with its config) and replay `sample` through it and the
/// running version; refuse it when it traps or fails messages the running version accepted
/// (more than `max_new_failures` of the sample), naming the first differences, or when it
/// changes the rows of more than `max_changed` of it. What it changes is returned.
pub fn shadow_check(
    running: &Version,
    module: &Arc<TransformModule>,
    settings: &InstanceSettings,
    sample: &[Message],
    limits: ShadowLimits,
    cancel: &Arc<AtomicBool>,
) -> Result<OutputDiff, CheckError> {
    let label = crate::transform::wasm::lineage(module, settings);
    let until = std::time::Instant::now() + limits.budget;
    let cancelled = || cancel.load(Ordering::Relaxed);
    let spent = || std::time::Instant::now() >= until;
    let over_budget = || {
        CheckError::Refused(format!(
            "{label} shadow-checked on {} recent messages: the check's budget of {} ms (reload.check_budget_ms) ran out",
            sample.len(),
            limits.budget.as_millis()
        ))
    };
    let refused = |why: String| {
        if cancelled() {
            CheckError::Cancelled
        } else if spent() {
            over_budget()
        } else {
            CheckError::Refused(why)
        }
    };
    let mut cand =
        TransformInstance::new_cancellable(module.clone(), settings.clone(), cancel.clone(), until)
            .map_err(|e| refused(e.to_string()))?;
    if sample.is_empty() {
        return Ok(OutputDiff::default());
    }
    let mut base = TransformInstance::new_cancellable(
        running.module.clone(),
        running.settings.clone(),
        cancel.clone(),
        until,
    )
    .map_err(|e| refused(format!("running version: {e}")))?;
    let t = std::time::Instant::now();
    let before = base.process(sample, 0);
    let running_took = t.elapsed();
    // The whole sample in one call first: a looping candidate costs one deadline, not one
    // per record (170 records at 2 s each blocked every reload for six minutes).
    let after = match cand.process_once(sample, 0) {
        Ok(after) => after,
        Err(_) if cancelled() => return Err(CheckError::Cancelled),
        Err(_) if spent() => return Err(over_budget()),
        Err(e) if matches!(e.kind, ErrorKind::Deadline { .. }) => {
            return Err(CheckError::Refused(format!(
                "{label} shadow-checked on {} recent messages: {e}, where the running version took {} ms for all of them",
                sample.len(),
                running_took.as_millis()
            )));
        }
        // Another trap is quick: find the records that cause it one at a time.
        Err(_) => cand.process(sample, 0),
    };
    if cancelled() {
        return Err(CheckError::Cancelled);
    }
    if spent() {
        return Err(over_budget());
    }
    let mut diffs = Vec::new();
    let mut output = OutputDiff::default();
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
        output.add(m, b, a);
    }
    let allowed = (limits.max_new_failures * sample.len() as f64).floor() as usize;
    if diffs.len() > allowed {
        return Err(CheckError::Refused(format!(
            "{label} shadow-checked on {} recent messages: {} would newly fail (allowed {allowed}); first: {}",
            sample.len(),
            diffs.len(),
            diffs.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
        )));
    }
    if output.rate() > limits.max_changed {
        return Err(CheckError::Refused(format!(
            "{label} shadow-checked on {} recent messages: {} (over reload.shadow_max_changed = {})",
            sample.len(),
            output.summary(),
            limits.max_changed
        )));
    }
    Ok(output)
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

    fn event(team: &str, message: &str) -> Row {
        Row::Event(crate::model::Event {
            timestamp: Some(1),
            entity_id: "pg-1".into(),
            event_type: "log".into(),
            source: "s".into(),
            environment: "prod".into(),
            message: message.into(),
            tags: vec![
                ("team".into(), team.into()),
                ("level".into(), "info".into()),
            ],
            attributes: "{}".into(),
            trace_id: None,
            id: None,
            created_at: None,
        })
    }

    fn msg(offset: i64) -> Message {
        Message {
            topic: "raw-logs".into(),
            partition: 0,
            offset,
            timestamp_ms: None,
            key: None,
            headers: vec![],
            payload: vec![],
        }
    }

    #[test]
    fn output_diff_names_records_fields_and_tags() {
        let mut d = OutputDiff::default();
        let rows = |t: &str, m: &str| MessageResult::Rows(vec![event(t, m)]);
        d.add(&msg(1), &rows("a", "x"), &rows("a", "x"));
        d.add(&msg(2), &rows("a", "x"), &rows("b", "x"));
        d.add(&msg(3), &rows("a", "x"), &rows("b", "y"));
        d.add(&msg(4), &rows("a", "x"), &MessageResult::Rows(vec![]));
        d.add(&msg(5), &rows("a", "x"), &MessageResult::Skip("no".into()));
        d.add(&msg(6), &MessageResult::Fail("bad".into()), &rows("a", "x"));
        assert_eq!(
            d.compared, 5,
            "a record the running version failed is not compared"
        );
        assert_eq!(d.changed, 4);
        assert_eq!(d.fields["tags.team"], 2);
        assert_eq!(d.fields["message"], 1);
        assert_eq!(d.fields["(rows)"], 1);
        assert_eq!(d.fields["(skipped)"], 1);
        assert!(!d.fields.contains_key("tags.level"));
        assert_eq!(d.examples.len(), EXAMPLES);
        assert_eq!(d.examples[0], r#"raw-logs/0@2: tags.team "a" -> "b""#);
        assert!((d.rate() - 0.8).abs() < 1e-9);
        assert!(
            d.summary().starts_with("4 of 5 records changed output ("),
            "{}",
            d.summary()
        );
        assert_eq!(
            OutputDiff::default().summary(),
            "outputs unchanged on 0 records"
        );
    }
}
