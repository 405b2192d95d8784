//! `transform status|deploy|rollback|pin|unpin|unban`: a running processor's deployments,
//! through its admin address (`GET /transforms`, `POST /transforms/<pipeline>/<action>`).
//! Exit codes: 0 done (accepted), 1 refused (rejected, rolled back, or the server said no),
//! 2 the processor could not be asked.

use anyhow::{Context, bail};
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Where the running processor is, and how to be let in.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// The processor's admin address (default: `admin.addr` of `--config`, else 127.0.0.1:9464).
    #[arg(long)]
    admin: Option<String>,
    /// The config to read the admin address from.
    #[arg(long, default_value = "pipelines.toml")]
    config: PathBuf,
    /// The admin token, for write commands (`admin.token` of the processor).
    #[arg(long, env = "VAST_PROCESSOR_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// The deployment commands.
#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Each pipeline's running and previous version, the check or probation in progress,
    /// the last decision, refused files and bans.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
        /// Print `/transforms` as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Install FILE where the pipeline reads its transform and report the decision.
    Deploy {
        #[command(flatten)]
        admin: AdminArgs,
        #[arg(long)]
        pipeline: String,
        file: PathBuf,
        /// Also wait for the probation to end: exit 0 when it passes, 1 when rolled back.
        #[arg(long)]
        wait: bool,
        /// How long `--wait` waits for the probation (seconds); exit 2 after it.
        #[arg(long, default_value_t = 600.0)]
        timeout: f64,
    },
    /// Run the previous version again; the current one is banned until `unban`.
    Rollback {
        #[command(flatten)]
        admin: AdminArgs,
        pipeline: String,
    },
    /// Run VERSION (label, name@hash or a hash prefix) and deploy nothing until `unpin`.
    Pin {
        #[command(flatten)]
        admin: AdminArgs,
        pipeline: String,
        version: String,
    },
    /// Lift a pin; the transform file as it is now is judged at once.
    Unpin {
        #[command(flatten)]
        admin: AdminArgs,
        pipeline: String,
    },
    /// Lift the ban of a rejected or rolled-back content (HASH: 6+ characters of it).
    Unban {
        #[command(flatten)]
        admin: AdminArgs,
        pipeline: String,
        hash: String,
    },
}

struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    fn new(a: &AdminArgs) -> Client {
        let addr = a.admin.clone().unwrap_or_else(|| {
            crate::config::Config::load(&a.config)
                .map(|c| c.admin.addr)
                .unwrap_or_else(|_| crate::config::AdminConfig::default().addr)
        });
        let base = if addr.contains("://") {
            addr.trim_end_matches('/').to_string()
        } else {
            format!("http://{addr}")
        };
        let agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(5)))
            // A deploy's shadow check runs within the admin server's 30 s per connection.
            .timeout_global(Some(Duration::from_secs(40)))
            .http_status_as_error(false)
            .build()
            .new_agent();
        Client {
            base,
            token: a.token.clone().filter(|t| !t.is_empty()),
            agent,
        }
    }

    fn transforms(&self) -> anyhow::Result<Vec<Value>> {
        let url = format!("{}/transforms", self.base);
        let mut resp = self
            .agent
            .get(&url)
            .call()
            .with_context(|| format!("cannot reach the processor at {url}"))?;
        let text = resp.body_mut().read_to_string()?;
        if resp.status() != 200 {
            bail!("{url} answered {}: {}", resp.status(), text.trim());
        }
        serde_json::from_str(&text).with_context(|| format!("{url} is not JSON"))
    }

    /// POST an action; the status and the JSON answer.
    fn post(
        &self,
        pipeline: &str,
        action: &str,
        query: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, Value)> {
        let url = format!(
            "{}/transforms/{}/{action}{query}",
            self.base,
            encode(pipeline)
        );
        let mut req = self.agent.post(&url);
        if let Some(t) = &self.token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        if !body.is_empty() {
            // The server refuses a write before reading its body (403 without a token): the
            // body follows its 100 Continue, so a refusal is read, not a broken pipe.
            req = req.header("Expect", "100-continue");
        }
        let mut resp = req
            .send(body)
            .with_context(|| format!("cannot reach the processor at {}", self.base))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string()?;
        let v =
            serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.trim().to_string()));
        Ok((status, v))
    }
}

/// Percent-encode a path segment or query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn ago(ms: &Value) -> String {
    let now = (crate::model::now_micros() / 1000) as u64;
    ms.as_u64().map_or_else(String::new, |t| {
        format!("{} s ago", now.saturating_sub(t) / 1000)
    })
}

/// `status` as text: a few lines per pipeline.
pub fn render_status(list: &[Value]) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    for t in list {
        let _ = writeln!(
            o,
            "{}: running {} (generation {}){}",
            text(&t["pipeline"]),
            text(&t["running_version"]),
            t["generation"],
            if t["pinned"] == true { ", PINNED" } else { "" }
        );
        if !t["previous_version"].is_null() {
            let _ = writeln!(o, "  previous: {}", text(&t["previous_version"]));
        }
        if !t["file"].is_null() {
            let _ = writeln!(o, "  file: {}", text(&t["file"]));
        }
        let last = &t["last_reload"];
        let _ = writeln!(
            o,
            "  last decision: {} {}{}",
            text(&last["result"]),
            ago(&last["at_unix_ms"]),
            match text(&last["detail"]) {
                d if d.is_empty() => String::new(),
                d => format!(": {d}"),
            }
        );
        if let Some(c) = t["checking"].as_object() {
            let _ = writeln!(
                o,
                "  checking: {} on {} shadow messages, started {}",
                text(&c["candidate"]),
                c["shadow_messages"],
                ago(&c["started_unix_ms"])
            );
        }
        if let Some(p) = t["probation"].as_object() {
            let _ = writeln!(
                o,
                "  probation: {}/{} records, {}/{} batches, {:.0}/{} s; {} new failures, {} of them traps ({} failed in both versions)",
                p["messages"],
                p["needs_messages"],
                p["batches"],
                p["needs_batches"],
                p["seconds"].as_f64().unwrap_or(0.0),
                p["needs_seconds"],
                p["new_failures"],
                p["new_traps"],
                p["both_failed"]
            );
        }
        if let Some(f) = t["refused_file"].as_object() {
            let _ = writeln!(
                o,
                "  refused file: {}: {}",
                text(&f["file"]),
                text(&f["reason"])
            );
        }
        if let Some(r) = t["refused_versions"].as_object() {
            for (hash, why) in r {
                let _ = writeln!(
                    o,
                    "  banned {}: {} {}",
                    &hash[..hash.len().min(12)],
                    text(&why["decision"]),
                    ago(&why["at_unix_ms"])
                );
            }
        }
        let _ = writeln!(
            o,
            "  reloads: {} accepted, {} rejected, {} rolled back",
            t["accepted"], t["rejected"], t["rolled_back"]
        );
    }
    o
}

/// Print a write's answer; its exit code.
fn report(status: u16, v: &Value) -> ExitCode {
    if status != 200 {
        let why = v.get("error").map_or_else(|| text(v), text);
        eprintln!("refused ({status}): {why}");
        return ExitCode::from(1);
    }
    let result = text(&v["result"]);
    println!(
        "{}: {result}{}",
        text(&v["pipeline"]),
        match text(&v["detail"]) {
            d if d.is_empty() => String::new(),
            d => format!(": {d}"),
        }
    );
    if let Some(then) = v.get("then") {
        println!(
            "then the transform file: {} {}",
            text(&then["result"]),
            text(&then["detail"])
        );
    }
    println!("running: {}", text(&v["running_version"]));
    // A rollback by hand answers `rolled_back`: that is what was asked.
    if matches!(result.as_str(), "rejected" | "not_ready") {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Wait until `pipeline`'s probation of the version with `hash` is over: passed (0) or
/// rolled back (1); 2 after `timeout`.
fn wait_probation(
    c: &Client,
    pipeline: &str,
    hash: &str,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let until = Instant::now() + timeout;
    let short = &hash[..hash.len().min(12)];
    let mut said = Instant::now() - Duration::from_secs(60);
    loop {
        let list = c.transforms()?;
        let Some(t) = list.iter().find(|t| t["pipeline"] == pipeline) else {
            bail!("the processor has no pipeline `{pipeline}` any more");
        };
        let last = &t["last_reload"];
        if last["result"] == "rolled_back"
            && text(&t["previous_version"]).contains(&format!("@{short}."))
        {
            println!("{pipeline}: rolled back: {}", text(&last["detail"]));
            return Ok(ExitCode::from(1));
        }
        if !text(&t["running_version"]).contains(&format!("@{short}.")) {
            println!(
                "{pipeline}: no longer running {short}: {} {}",
                text(&last["result"]),
                text(&last["detail"])
            );
            return Ok(ExitCode::from(1));
        }
        match t["probation"].as_object() {
            None => {
                println!(
                    "{pipeline}: passed its probation; {} runs",
                    text(&t["running_version"])
                );
                return Ok(ExitCode::SUCCESS);
            }
            Some(p) if said.elapsed() >= Duration::from_secs(5) => {
                eprintln!(
                    "on probation: {}/{} records, {:.0}/{} s, {} new failures",
                    p["messages"],
                    p["needs_messages"],
                    p["seconds"].as_f64().unwrap_or(0.0),
                    p["needs_seconds"],
                    p["new_failures"]
                );
                said = Instant::now();
            }
            Some(_) => {}
        }
        if Instant::now() >= until {
            eprintln!("still on probation after {:.0} s", timeout.as_secs_f64());
            return Ok(ExitCode::from(2));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Run a deployment command.
pub fn run(cmd: &AdminCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AdminCommand::Status { admin, json } => {
            let list = Client::new(admin).transforms()?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", render_status(&list));
            }
            Ok(ExitCode::SUCCESS)
        }
        AdminCommand::Deploy {
            admin,
            pipeline,
            file,
            wait,
            timeout,
        } => {
            let bytes =
                std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            let c = Client::new(admin);
            let (status, v) = c.post(pipeline, "deploy", "", &bytes)?;
            let code = report(status, &v);
            if status != 200 || v["result"] != "accepted" || !*wait {
                return Ok(code);
            }
            if let Some(d) = v["output_diff"].as_object() {
                println!(
                    "output: {} of {} shadow records changed",
                    d["changed"], d["compared"]
                );
            }
            let hash = text(&v["content_hash"]);
            wait_probation(
                &c,
                pipeline,
                &hash,
                Duration::from_secs_f64(timeout.max(0.0)),
            )
        }
        AdminCommand::Rollback { admin, pipeline } => {
            let (s, v) = Client::new(admin).post(pipeline, "rollback", "", &[])?;
            Ok(report(s, &v))
        }
        AdminCommand::Pin {
            admin,
            pipeline,
            version,
        } => {
            let q = format!("?version={}", encode(version));
            let (s, v) = Client::new(admin).post(pipeline, "pin", &q, &[])?;
            Ok(report(s, &v))
        }
        AdminCommand::Unpin { admin, pipeline } => {
            let (s, v) = Client::new(admin).post(pipeline, "unpin", "", &[])?;
            Ok(report(s, &v))
        }
        AdminCommand::Unban {
            admin,
            pipeline,
            hash,
        } => {
            let q = format!("?hash={}", encode(hash));
            let (s, v) = Client::new(admin).post(pipeline, "unban", &q, &[])?;
            Ok(report(s, &v))
        }
    }
}
