//! A transform that misbehaves on request, for the host's sandbox tests. The payload names
//! the misbehaviour; any other payload is echoed back as one event.

use vast_transform_sdk::{Event, Guest, Level, Message, Outcome, Row, export_transform, host};

struct Hostile;

fn echo(message: String) -> Outcome {
    Outcome::Rows(vec![Row::Event(Event {
        timestamp: Some(0),
        entity_id: "hostile".into(),
        event_type: "test".into(),
        source: "hostile".into(),
        environment: "test".into(),
        message,
        tags: vec![],
        attributes: "{}".into(),
        trace_id: None,
        id: None,
        created_at: None,
    })])
}

/// Recursion on the wasm stack itself (no address-taken locals), so it ends in the host's
/// stack-overflow trap rather than in the guest's own shadow stack.
fn recurse(depth: u64) -> u64 {
    if std::hint::black_box(depth) == u64::MAX {
        return 0;
    }
    recurse(depth + 1).wrapping_add(std::hint::black_box(depth))
}

fn handle(msg: &Message) -> Outcome {
    let cmd = String::from_utf8_lossy(&msg.payload).trim().to_string();
    match cmd.as_str() {
        "loop" => {
            let mut x = 0u64;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "alloc" => {
            let v = vec![1u8; 1 << 30];
            echo(format!("allocated {}", std::hint::black_box(v).len()))
        }
        "recurse" => echo(format!("{}", recurse(0))),
        "panic" => panic!("hostile guest panics on purpose"),
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_secs(5));
            echo("slept".into())
        }
        "file" => match std::fs::read("/etc/passwd") {
            Ok(b) => echo(format!("file read: {} bytes", b.len())),
            Err(e) => Outcome::Fail(format!("file denied: {e}")),
        },
        "env" => {
            let n = std::env::vars().count();
            if n == 0 {
                Outcome::Fail("env denied: no variables visible".into())
            } else {
                echo(format!("env visible: {n} variables"))
            }
        }
        "socket" => match std::net::TcpStream::connect("127.0.0.1:1") {
            Ok(_) => echo("socket connected".into()),
            Err(e) => Outcome::Fail(format!("socket denied: {e}")),
        },
        "stdout" => {
            println!("hello from guest stdout");
            eprintln!("hello from guest stderr");
            echo("printed".into())
        }
        "log" => {
            for i in 0..1000 {
                host::log(Level::Info, &format!("guest log line {i}"));
            }
            echo("logged".into())
        }
        "biglog" => {
            // 20 lines of 1 MiB: the host cuts each line and keeps to a byte budget.
            let line = "L".repeat(1 << 20);
            for _ in 0..20 {
                host::log(Level::Warn, &line);
            }
            echo("logged big".into())
        }
        "bignames" => {
            // 40 counter names of 1 MiB each: the host cuts them to a short label.
            for i in 0..40 {
                host::counter(&format!("{i}{}", "N".repeat(1 << 20)), 1);
            }
            echo("named big".into())
        }
        "counter" => {
            host::counter("hostile_things", 3);
            echo("counted".into())
        }
        "lookup" => echo(format!("{:?}", host::lookup("teams", "pg-1"))),
        "fail" => Outcome::Fail("failing on purpose".into()),
        "skip" => Outcome::Skip("skipping on purpose".into()),
        "short" => Outcome::Rows(vec![]),
        s if s.starts_with("rows:") => {
            let n: usize = s[5..].parse().unwrap_or(0);
            Outcome::Rows(
                (0..n)
                    .map(|i| match echo(i.to_string()) {
                        Outcome::Rows(mut r) => r.remove(0),
                        _ => unreachable!("echo always returns rows"),
                    })
                    .collect(),
            )
        }
        other => echo(other.to_string()),
    }
}

impl Guest for Hostile {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        if config.iter().any(|(k, v)| k == "fail_init" && v == "true") {
            return Err("init refused because fail_init=true".into());
        }
        Ok(())
    }

    fn process(batch: Vec<Message>) -> Vec<Outcome> {
        // "drop-one" breaks the contract by returning one outcome too few.
        let mut out: Vec<Outcome> = batch.iter().map(handle).collect();
        if batch.iter().any(|m| m.payload == b"drop-one") {
            out.pop();
        }
        out
    }
}

export_transform!(Hostile);
