//! Tag lists: ordered string key/values where setting a key replaces its earlier value.

use crate::json::{self, Kind, Members};

/// Ordered tags; the host stores them as one JSON object with string values.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tags(pub Vec<(String, String)>);

impl Tags {
    /// Set `key` to `value`, replacing an existing value in place.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.0.push((key.to_string(), value)),
        }
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Tags from a JSON object: values become text (numbers in their decimal spelling),
    /// null values are dropped.
    pub fn from_members(members: &Members<'_>) -> Tags {
        let mut tags = Tags(Vec::with_capacity(members.0.len() + 4));
        for (k, v) in &members.0 {
            if json::kind(*v) == Kind::Null {
                continue;
            }
            tags.set(k, json::text(*v).into_owned());
        }
        tags
    }

    /// Apply the shared log enrichment rules of the telemetry contract:
    /// an alerting `log_level` adds `requires_alert = "true"`; an event type mentioning
    /// deadlocks adds `category = "database_concurrency"`.
    pub fn enrich_log(&mut self, event_type: Option<&str>) {
        let alert = self.get("log_level").is_some_and(|l| {
            ["error", "critical", "alert", "emergency"]
                .iter()
                .any(|a| l.eq_ignore_ascii_case(a))
        });
        if alert {
            self.set("requires_alert", "true");
        }
        if event_type.is_some_and(|t| json::contains(t, "deadlock")) {
            self.set("category", "database_concurrency");
        }
    }
}

impl From<Tags> for Vec<(String, String)> {
    fn from(t: Tags) -> Self {
        t.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_replaces_in_place() {
        let mut t = Tags::default();
        t.set("a", "1");
        t.set("b", "2");
        t.set("a", "3");
        assert_eq!(
            t.0,
            vec![("a".into(), "3".into()), ("b".into(), "2".into())]
        );
    }

    #[test]
    fn enrichment_rules() {
        let mut t = Tags::default();
        t.set("log_level", "CRITICAL");
        t.enrich_log(Some("deadlocks"));
        assert_eq!(t.get("requires_alert"), Some("true"));
        assert_eq!(t.get("category"), Some("database_concurrency"));
        let mut t = Tags::default();
        t.set("log_level", "warning");
        t.enrich_log(Some("vacuum"));
        assert_eq!(t.get("requires_alert"), None);
        assert_eq!(t.get("category"), None);
    }
}
