//! The file source: replay or backfill a topic from files through the same runtime,
//! transform, batch and sink path as Kafka, without a broker (nothing to commit). Also how
//! files are split into messages, for replay and `transform test`.

use crate::metrics::Metrics;
use crate::model::Message;
use crate::pipeline::{NoCommit, PipelineSpec, RunStats, Runtime, RuntimeError, RuntimeOptions};
use crate::sink::Sink;
use crate::sink::deadletter::DeadLetterWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How input files are split into messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Every line of every file is one message.
    Jsonl,
    /// Every file is one message; a directory means its files in name order.
    Raw,
}

/// Why input files could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read input {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("input {} is a directory; use --format raw for one message per file", .0.display())]
    Directory(PathBuf),
}

impl InputError {
    fn read(path: &Path) -> impl FnOnce(std::io::Error) -> InputError + '_ {
        move |source| InputError::Read {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// One input message and where it came from (for error reports).
pub struct Input {
    pub payload: Vec<u8>,
    pub origin: String,
}

/// Split input files into messages.
pub fn read_inputs(paths: &[PathBuf], format: Format) -> Result<Vec<Input>, InputError> {
    let mut out = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(InputError::read(path))?;
        match format {
            Format::Jsonl => {
                if meta.is_dir() {
                    return Err(InputError::Directory(path.clone()));
                }
                let bytes = std::fs::read(path).map_err(InputError::read(path))?;
                let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
                if lines.last().is_some_and(|l| l.is_empty()) {
                    lines.pop();
                }
                for (i, line) in lines.into_iter().enumerate() {
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    out.push(Input {
                        payload: line.to_vec(),
                        origin: format!("{}:{}", path.display(), i + 1),
                    });
                }
            }
            Format::Raw => {
                let files = if meta.is_dir() {
                    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                        .map_err(InputError::read(path))?
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.is_file())
                        .collect();
                    files.sort();
                    files
                } else {
                    vec![path.clone()]
                };
                for f in files {
                    let payload = std::fs::read(&f).map_err(InputError::read(&f))?;
                    out.push(Input {
                        payload,
                        origin: f.display().to_string(),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Replay `inputs` as records of `spec.topic` (partition 0, offsets counting from 0) on one
/// worker. Dead letters go to files under `data_dir/dead_letter/`. `progress` is told, as
/// records are queued, how many are and how many there are in all.
#[allow(clippy::too_many_arguments)] // each is a different piece of the wiring
pub fn replay(
    spec: PipelineSpec,
    inputs: &[PathBuf],
    format: Format,
    sink: Arc<dyn Sink>,
    data_dir: &Path,
    options: RuntimeOptions,
    stats: Arc<RunStats>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(), ReplayError> {
    let topic = spec.topic.clone();
    let msgs: Vec<Message> = read_inputs(inputs, format)?
        .into_iter()
        .enumerate()
        .map(|(offset, input)| Message {
            topic: topic.clone(),
            partition: 0,
            offset: offset as i64,
            timestamp_ms: None,
            key: None,
            headers: Vec::new(),
            payload: input.payload,
        })
        .collect();
    replay_messages(spec, msgs, sink, data_dir, options, stats, progress)
}

/// Run `msgs` (with their own topic, partition and offset, so their rows get the ids those
/// give) through `spec`'s pipeline into `sink`; dead letters go to files under `data_dir`.
pub fn replay_messages(
    mut spec: PipelineSpec,
    msgs: Vec<Message>,
    sink: Arc<dyn Sink>,
    data_dir: &Path,
    options: RuntimeOptions,
    stats: Arc<RunStats>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(), ReplayError> {
    // No broker: dead letters always go to files.
    spec.dead_letter_topic = None;
    let metrics = Arc::new(Metrics::new([(spec.name.as_str(), spec.topic.as_str())]));
    let (runtime, threads) = Runtime::start(
        Arc::new(vec![spec]),
        &RuntimeOptions {
            workers: 1,
            ..options
        },
        sink,
        stats,
        metrics,
        || DeadLetterWriter::new(None, data_dir.to_path_buf()),
    )?;
    let total = msgs.len();
    let mut result = Ok(());
    'records: for (i, m) in msgs.into_iter().enumerate() {
        while !runtime.has_room(0) {
            if let Some(e) = runtime.failure() {
                result = Err(e);
                break 'records;
            }
            // The worker makes room only from records it was sent.
            if let Err(e) = runtime.send_chunks() {
                result = Err(e);
                break 'records;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Err(e) = runtime.queue(0, 0, m) {
            result = Err(e);
            break;
        }
        progress(i + 1, total);
    }
    let stopped = runtime.stop(&mut NoCommit, result.is_ok());
    drop(runtime);
    let joined = threads.join();
    Ok(result.and(stopped).and(joined)?)
}
