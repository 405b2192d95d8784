//! Sources: Kafka (the consumer group) and files (replay/backfill).

pub mod file;
pub mod kafka;
