//! Example custom transform: the bundled `raw-logs` logic, plus `team` and `owner` tags
//! looked up by `entity_id` in an enrichment table the host loads from a CSV file.
//!
//! Config keys: `table` (the enrichment table's name, default `teams`).
//! A host without a matching row gets `team = "unassigned"`, counted as `team_lookup_miss`.

use std::sync::OnceLock;
use vast_transform_sdk::{Guest, Message, Outcome, Row, Stats, export_transform, host, transforms};

static TABLE: OnceLock<String> = OnceLock::new();

struct TeamEnrich;

fn enrich(msg: &Message, stats: &mut Stats) -> Outcome {
    let table = TABLE.get().map_or("teams", String::as_str);
    let mut outcome = transforms::raw_logs(msg, stats);
    if let Outcome::Rows(rows) = &mut outcome {
        for row in rows {
            let Row::Event(ev) = row else { continue };
            let found = host::lookup(table, &ev.entity_id).and_then(|json| {
                serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&json).ok()
            });
            match found {
                Some(cols) => {
                    for key in ["team", "owner"] {
                        if let Some(serde_json::Value::String(v)) = cols.get(key) {
                            ev.tags.push((key.to_string(), v.clone()));
                        }
                    }
                }
                None => {
                    stats.add("team_lookup_miss", 1);
                    ev.tags.push(("team".into(), "unassigned".into()));
                }
            }
        }
    }
    outcome
}

impl Guest for TeamEnrich {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        for (k, v) in config {
            match k.as_str() {
                "table" => {
                    let _ = TABLE.set(v);
                }
                other => return Err(format!("unknown config key `{other}` (known: table)")),
            }
        }
        Ok(())
    }

    fn process(batch: Vec<Message>) -> Vec<Outcome> {
        vast_transform_sdk::process_each(&batch, enrich)
    }
}

export_transform!(TeamEnrich);
