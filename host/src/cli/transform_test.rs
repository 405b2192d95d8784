//! `vast-processor transform test`: run a transform on messages read from files, exactly as
//! the pipeline would, and print (or check against a golden file) what it produces.

use crate::config::{Config, Limits, PipelineConfig};
use crate::model::{self, Message};
use crate::source::file::{Format, read_inputs};
use crate::transform::loader;
use crate::transform::wasm::{MessageResult, TransformEngine, TransformInstance};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Arguments of `transform test`.
#[derive(Debug, Clone, clap::Args)]
pub struct TestArgs {
    /// Topic the messages come from (selects the pipeline in the config).
    #[arg(long)]
    pub topic: String,
    /// Bundled transform name or path to a .wasm component (default: the topic's pipeline).
    #[arg(long)]
    pub transform: Option<String>,
    /// Pipelines config file.
    #[arg(long, default_value = "pipelines.toml")]
    pub config: PathBuf,
    /// How to split inputs into messages.
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    pub format: Format,
    /// Set a transform config key (repeatable); overrides the pipeline's config.
    #[arg(long = "config-set", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub config_set: Vec<(String, String)>,
    /// Input files (or directories, with --format raw).
    #[arg(long, num_args = 1.., required = true)]
    pub input: Vec<PathBuf>,
    /// Golden file to compare with (ignoring `id` and `created_at`); exit 1 on mismatch.
    #[arg(long)]
    pub expect: Option<PathBuf>,
    /// With --expect: write the actual output to the golden file instead of comparing.
    #[arg(long, requires = "expect")]
    pub bless: bool,
    /// Processing time in microseconds since the epoch (default: now), for reproducible output.
    #[arg(long, value_name = "MICROS")]
    pub now: Option<i64>,
    /// Messages per `process` call.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))
}

/// The pipeline to emulate: the topic's entry in the config (if any), with --transform and
/// --config-set applied.
fn pipeline(args: &TestArgs) -> anyhow::Result<(PipelineConfig, PathBuf)> {
    let config = if args.config.exists() {
        Some(Config::load(&args.config)?)
    } else if args.transform.is_none() {
        bail!(
            "config file {} not found and no --transform given: pass --transform NAME|PATH or --config FILE",
            args.config.display()
        );
    } else {
        None
    };
    let base = config
        .as_ref()
        .map(|c| c.base_dir.clone())
        .unwrap_or_default();
    let mut p = match config
        .as_ref()
        .and_then(|c| c.pipeline_for_topic(&args.topic))
    {
        Some(p) => p.clone(),
        None => match &args.transform {
            Some(t) => PipelineConfig {
                name: None,
                topic: args.topic.clone(),
                transform: t.clone(),
                config: Default::default(),
                enrichment: Default::default(),
                limits: Limits::default(),
                dead_letter_topic: None,
                batch: Default::default(),
            },
            None => {
                let known: Vec<_> = config
                    .iter()
                    .flat_map(|c| &c.pipelines)
                    .map(|p| p.topic.as_str())
                    .collect();
                bail!(
                    "no pipeline for topic `{}` in {} (configured topics: {}); pass --transform NAME|PATH",
                    args.topic,
                    args.config.display(),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                );
            }
        },
    };
    // A --transform given on the command line is relative to the working directory.
    let transform_base = if let Some(t) = &args.transform {
        p.transform = t.clone();
        PathBuf::new()
    } else {
        base.clone()
    };
    for (k, v) in &args.config_set {
        p.config.insert(k.clone(), v.clone());
    }
    p.transform = match crate::config::resolve_transform(&p.transform, &transform_base)? {
        crate::config::TransformSource::File(f) => f.display().to_string(),
        crate::config::TransformSource::Bundled(b) => b.to_string(),
    };
    Ok((p, base))
}

/// Output lines for one message's result.
pub fn result_lines(input: usize, result: &MessageResult) -> Vec<Value> {
    match result {
        MessageResult::Rows(rows) => rows
            .iter()
            .map(|r| json!({"input": input, "table": r.table().name(), "row": model::to_json(r)}))
            .collect(),
        MessageResult::Skip(why) => vec![json!({"input": input, "skipped": why})],
        MessageResult::Fail(why) => vec![json!({"input": input, "error": why})],
        MessageResult::Error(e) => vec![json!({"input": input, "error": e.to_string()})],
    }
}

/// What a run produced.
pub struct Outcome {
    pub lines: Vec<Value>,
    /// With --expect: false when the output differs from the golden file.
    pub matched: bool,
}

/// Run the command, writing the report to `out` and a summary to `err`.
pub fn run(
    args: &TestArgs,
    engine: &TransformEngine,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<Outcome> {
    let (p, base) = pipeline(args)?;
    let module = loader::load_transform(
        engine,
        &p.transform,
        Path::new(""),
        p.limits.max_component_bytes(),
    )?;
    let settings = loader::instance_settings(&p, &base)?;
    let mut instance = TransformInstance::new(module.clone(), settings)?;
    let inputs = read_inputs(&args.input, args.format)?;
    let now = args.now.unwrap_or_else(model::now_micros);

    let mut lines = Vec::new();
    let (mut n_rows, mut n_skip, mut n_err) = (0usize, 0usize, 0usize);
    let mut error_notes = Vec::new();
    let bar = super::commands::progress(inputs.len() as u64, "messages");
    for (chunk_no, chunk) in inputs.chunks(args.batch_size as usize).enumerate() {
        bar.inc(chunk.len() as u64);
        let first = chunk_no * args.batch_size as usize;
        let batch: Vec<Message> = chunk
            .iter()
            .enumerate()
            .map(|(i, inp)| Message {
                topic: args.topic.clone(),
                partition: 0,
                offset: (first + i) as i64,
                timestamp_ms: None,
                key: None,
                headers: Vec::new(),
                payload: inp.payload.clone(),
            })
            .collect();
        for (i, result) in instance.process(&batch, now).iter().enumerate() {
            let idx = first + i;
            match result {
                MessageResult::Rows(r) => n_rows += r.len(),
                MessageResult::Skip(_) => n_skip += 1,
                MessageResult::Fail(e) => {
                    n_err += 1;
                    error_notes.push(format!("  input {idx} ({}): {e}", inputs[idx].origin));
                }
                MessageResult::Error(e) => {
                    n_err += 1;
                    error_notes.push(format!("  input {idx} ({}): {e}", inputs[idx].origin));
                }
            }
            lines.extend(result_lines(idx, result));
        }
    }
    bar.finish_and_clear();
    writeln!(
        err,
        "{}: {} message(s) -> {n_rows} row(s), {n_skip} skipped, {n_err} error(s)",
        module.version(),
        inputs.len()
    )?;
    for note in error_notes.iter().take(20) {
        writeln!(err, "{note}")?;
    }
    if error_notes.len() > 20 {
        writeln!(err, "  ... and {} more", error_notes.len() - 20)?;
    }

    let Some(expect) = &args.expect else {
        for l in &lines {
            writeln!(out, "{l}")?;
        }
        return Ok(Outcome {
            lines,
            matched: true,
        });
    };
    if args.bless {
        let mut text = String::new();
        for l in &lines {
            text.push_str(&strip_volatile(l).to_string());
            text.push('\n');
        }
        std::fs::write(expect, text)
            .with_context(|| format!("cannot write {}", expect.display()))?;
        writeln!(out, "wrote {} line(s) to {}", lines.len(), expect.display())?;
        return Ok(Outcome {
            lines,
            matched: true,
        });
    }
    let golden = read_golden(expect)?;
    let matched = compare(&golden, &lines, expect, out)?;
    Ok(Outcome { lines, matched })
}

fn read_golden(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read golden file {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not a JSON line", path.display(), i + 1))
        })
        .collect()
}

/// A line without the columns that differ between runs (`id`, `created_at`).
pub fn strip_volatile(line: &Value) -> Value {
    let mut l = line.clone();
    if let Some(row) = l.get_mut("row").and_then(Value::as_object_mut) {
        row.shift_remove("id");
        row.shift_remove("created_at");
    }
    l
}

/// Paths at which two JSON values differ (at most `max`).
fn differences(path: &str, a: &Value, b: &Value, out: &mut Vec<String>, max: usize) {
    if out.len() >= max || a == b {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                match y.get(k) {
                    Some(vb) => differences(&format!("{path}.{k}"), va, vb, out, max),
                    None => out.push(format!("{path}.{k}: expected {va}, missing in actual")),
                }
            }
            for (k, vb) in y {
                if !x.contains_key(k) && out.len() < max {
                    out.push(format!("{path}.{k}: not expected, actual has {vb}"));
                }
            }
        }
        _ => out.push(format!("{path}: expected {a}, got {b}")),
    }
}

fn compare(
    golden: &[Value],
    actual: &[Value],
    expect: &Path,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let mut mismatches = 0;
    let n = golden.len().max(actual.len());
    for i in 0..n {
        let g = golden.get(i).map(strip_volatile);
        let a = actual.get(i).map(strip_volatile);
        if g == a {
            continue;
        }
        mismatches += 1;
        if mismatches > 10 {
            continue;
        }
        writeln!(out, "line {}:", i + 1)?;
        match (&g, &a) {
            (Some(g), Some(a)) => {
                writeln!(out, "  - expected: {g}")?;
                writeln!(out, "  + actual:   {a}")?;
                let mut diffs = Vec::new();
                differences("", g, a, &mut diffs, 8);
                for d in diffs {
                    writeln!(out, "    {}", d.trim_start_matches('.'))?;
                }
            }
            (Some(g), None) => writeln!(
                out,
                "  - expected: {g}\n  + actual:   (no line: output ended)"
            )?,
            (None, Some(a)) => writeln!(
                out,
                "  - expected: (no line: golden file ended)\n  + actual:   {a}"
            )?,
            (None, None) => {}
        }
    }
    if mismatches == 0 {
        writeln!(
            out,
            "ok: {} line(s) match {}",
            actual.len(),
            expect.display()
        )?;
        Ok(true)
    } else {
        writeln!(
            out,
            "MISMATCH: {mismatches} of {n} line(s) differ from {} (id and created_at ignored); rerun with --bless to accept the new output",
            expect.display()
        )?;
        Ok(false)
    }
}
