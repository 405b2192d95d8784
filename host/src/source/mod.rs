//! Sources: Kafka (the consumer group), files (replay/backfill) and dead-letter topics
//! (redrive).

pub mod file;
pub mod kafka;
pub mod redrive;
