//! A VAST Database simulator for tests and local runs: the ingest subset of the tabular API
//! (shared/vast-tabular-api.md) and reading rows back with `$row_id` and updating them by it
//! (shared/vast-query-update-api.md), over plain HTTP/1.1 on loopback, checking what the real
//! server checks: SigV4 signatures (and the payload hash), the `Server` version header,
//! transactions with isolation (uncommitted changes are invisible except to their own
//! transaction, rollback discards them, conflicting DDL is 409), column types and
//! nullability on insert and update, the 5 MiB request limit, zero-column inserts (501),
//! `Content-Length` on begin and commit, query pages and cursors. What VAST does when two
//! open transactions update one row is unknown: [`RowConflicts`] picks last writer wins or a
//! 409 on the second commit. Faults can be injected: error statuses, latency, and
//! connections dropped before or after a request is applied.

use arrow_array::{Array, ArrayRef, RecordBatch, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use vast_processor::sink::vast::query;
use vast_processor::sink::vast::sigv4::{Credentials, parse_amz_date, sha256_hex, sign_request};
use vast_processor::sink::vast::wire::{self, ObjectDetails};

/// The request size limit (§9.1).
pub const MAX_REQUEST: usize = 5 * 1024 * 1024;

/// What a fault does to a matching request.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// Answer with this status and error code, without applying the request.
    Status(u16, String),
    /// Close the connection without applying the request or answering.
    DropBeforeApply,
    /// Apply the request, then close the connection without answering.
    DropAfterApply,
    /// Wait this long before handling the request.
    Latency(Duration),
}

/// A fault rule: requests matching `method` / `command` (None = any) get `kind`, for the
/// next `count` matches (None = unlimited) and until `until` (None = forever).
#[derive(Debug, Clone)]
pub struct Fault {
    pub method: Option<String>,
    pub command: Option<String>,
    pub kind: FaultKind,
    pub count: Option<usize>,
    pub until: Option<Instant>,
}

#[derive(Debug, Clone, Default)]
struct TableState {
    schema: Vec<Field>,
    sorted: Vec<usize>,
    batches: Vec<RecordBatch>,
    /// The `$row_id` of each batch's first row (ids are contiguous within a batch).
    first_ids: Vec<u64>,
    next_row_id: u64,
    /// In a transaction's view: how many batches were committed when it began.
    base: usize,
    /// In a transaction's view: its row updates, in order (`$row_id`, column, 1-value array).
    updates: Vec<(u64, String, ArrayRef)>,
    /// Committed: the commit (sequence number) that last updated each row.
    updated_by: HashMap<u64, u64>,
}

impl TableState {
    /// Batch index and row of `$row_id`.
    fn locate(&self, id: u64) -> Option<(usize, usize)> {
        self.first_ids
            .iter()
            .zip(&self.batches)
            .enumerate()
            .find(|(_, (first, b))| id >= **first && id < **first + b.num_rows() as u64)
            .map(|(i, (first, _))| (i, (id - first) as usize))
    }

    /// Set column `col` of row `id` to `value` (a 1-value array of the column's type).
    fn set(&mut self, id: u64, col: &str, value: &ArrayRef) -> Result<(), String> {
        let (i, r) = self.locate(id).ok_or_else(|| format!("no row {id}"))?;
        let b = &self.batches[i];
        let c = b
            .schema()
            .index_of(col)
            .map_err(|_| format!("no column {col}"))?;
        let old = b.column(c);
        let (head, tail) = (old.slice(0, r), old.slice(r + 1, b.num_rows() - r - 1));
        let new = arrow_select::concat::concat(&[head.as_ref(), value.as_ref(), tail.as_ref()])
            .map_err(|e| e.to_string())?;
        let mut cols = b.columns().to_vec();
        cols[c] = new;
        self.batches[i] = RecordBatch::try_new(b.schema(), cols).map_err(|e| e.to_string())?;
        Ok(())
    }
}

impl TableState {
    fn new(columns: &Schema, sorted: Vec<usize>) -> TableState {
        TableState {
            schema: columns
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect(),
            sorted,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Db {
    /// bucket → schema → table.
    buckets: BTreeMap<String, BTreeMap<String, BTreeMap<String, TableState>>>,
    /// In a transaction's view: the commits made when it began.
    began_after: u64,
}

/// What the simulator does when two open transactions update the same row (unknown for
/// VAST, notes §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RowConflicts {
    /// Both commit; the later commit's values stay (what the notes' test server did).
    #[default]
    LastWriterWins,
    /// The commit of a transaction that updated a row another transaction updated and
    /// committed after it began is answered 409 (and the transaction is gone).
    ConflictOnCommit,
}

#[derive(Default)]
struct State {
    committed: Db,
    /// Open transactions: their private view of the database.
    txns: HashMap<u64, Db>,
    next_txid: u64,
    faults: Vec<Fault>,
    log: Vec<String>,
    commits: u64,
    /// Next `$row_id` per table (`bucket/schema/table`): ids stay unique across transactions.
    row_ids: HashMap<String, u64>,
}

/// Simulator settings.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub credentials: Credentials,
    pub buckets: Vec<String>,
    /// The `Server` header, e.g. `vast 5.3.0.1`.
    pub server: String,
    /// Serve https with this configuration (see [`tls_config`]) instead of plain http.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Two transactions updating one row.
    pub row_conflicts: RowConflicts,
}

impl SimOptions {
    /// Plain http, a VAST 5.3 `Server` header, the given credentials and buckets.
    pub fn new(credentials: Credentials, buckets: Vec<String>) -> SimOptions {
        SimOptions {
            credentials,
            buckets,
            server: "vast 5.3.0.1".into(),
            tls: None,
            row_conflicts: RowConflicts::default(),
        }
    }
}

/// A TLS server configuration from PEM files: the certificate chain and its private key.
pub fn tls_config(cert_pem: &Path, key_pem: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert_pem)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", cert_pem.display()))?;
    let key = PrivateKeyDer::from_pem_file(key_pem).map_err(|e| {
        format!(
            "cannot read the private key from {}: {e}",
            key_pem.display()
        )
    })?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map(Arc::new)
        .map_err(|e| format!("invalid TLS certificate or key: {e}"))
}

/// A running simulator; stops when dropped.
pub struct Simulator {
    addr: SocketAddr,
    tls: bool,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

fn lock(s: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl Simulator {
    /// Listen on `listen` (e.g. `127.0.0.1:0`) and serve in background threads.
    pub fn start(listen: &str, options: SimOptions) -> std::io::Result<Simulator> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let mut st = State {
            next_txid: 0x1000,
            ..Default::default()
        };
        for b in &options.buckets {
            st.committed.buckets.insert(b.clone(), BTreeMap::new());
        }
        let state = Arc::new(Mutex::new(st));
        let stop = Arc::new(AtomicBool::new(false));
        let tls = options.tls.is_some();
        let (s2, stop2, opts) = (state.clone(), stop.clone(), Arc::new(options));
        std::thread::Builder::new()
            .name("vast-sim".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let _ = conn.set_nodelay(true);
                    let (s3, o3) = (s2.clone(), opts.clone());
                    let _ = std::thread::Builder::new()
                        .name("vast-sim-conn".into())
                        .spawn(move || match &o3.tls {
                            Some(cfg) => {
                                // A failed handshake shows up as a read error: the
                                // connection just ends, as a real server's would.
                                if let Ok(tls) = rustls::ServerConnection::new(cfg.clone()) {
                                    serve(rustls::StreamOwned::new(tls, conn), &s3, &o3);
                                }
                            }
                            None => serve(conn, &s3, &o3),
                        });
                }
            })?;
        Ok(Simulator {
            addr,
            tls,
            state,
            stop,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Add a fault rule.
    pub fn add_fault(&self, f: Fault) {
        lock(&self.state).faults.push(f);
    }

    /// Remove every fault rule.
    pub fn clear_faults(&self) {
        lock(&self.state).faults.clear();
    }

    /// Committed rows of a table.
    pub fn rows(&self, bucket: &str, schema: &str, table: &str) -> Vec<RecordBatch> {
        let st = lock(&self.state);
        st.committed
            .buckets
            .get(bucket)
            .and_then(|b| b.get(schema))
            .and_then(|s| s.get(table))
            .map(|t| t.batches.clone())
            .unwrap_or_default()
    }

    /// A committed table's columns and sorting key.
    pub fn table(&self, bucket: &str, schema: &str, table: &str) -> Option<(Schema, Vec<usize>)> {
        let st = lock(&self.state);
        let t = st.committed.buckets.get(bucket)?.get(schema)?.get(table)?;
        Some((Schema::new(t.schema.clone()), t.sorted.clone()))
    }

    /// Create a committed table directly (e.g. an older table that lacks columns).
    pub fn create_table(&self, bucket: &str, schema: &str, table: &str, columns: Schema) {
        let mut st = lock(&self.state);
        st.committed
            .buckets
            .entry(bucket.into())
            .or_default()
            .entry(schema.into())
            .or_default()
            .insert(table.into(), TableState::new(&columns, Vec::new()));
    }

    /// Requests seen so far (`METHOD path?query -> status`).
    pub fn log(&self) -> Vec<String> {
        lock(&self.state).log.clone()
    }

    /// Transactions begun and not yet committed or rolled back.
    pub fn open_transactions(&self) -> usize {
        lock(&self.state).txns.len()
    }

    /// Transactions committed so far.
    pub fn commits(&self) -> u64 {
        lock(&self.state).commits
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
    }
}

struct Request {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn command(&self) -> &str {
        self.query.split('&').next().unwrap_or("")
    }
}

fn read_request<S: Read>(r: &mut BufReader<S>) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    // Read at most a little past the limit; larger bodies are refused after reading.
    let mut body = vec![0; len.min(MAX_REQUEST + 1024)];
    r.read_exact(&mut body).ok()?;
    if len > body.len() {
        std::io::copy(
            &mut r.by_ref().take((len - body.len()) as u64),
            &mut std::io::sink(),
        )
        .ok()?;
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target, String::new()),
    };
    Some(Request {
        method,
        path,
        query,
        headers,
        body,
    })
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn reply(status: u16) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: Vec::new(),
    }
}

fn error(status: u16, code: &str, message: &str) -> Reply {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    Reply {
        status,
        headers: Vec::new(),
        body: body.into_bytes(),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn write_reply(w: &mut impl Write, server: &str, r: &Reply) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nServer: {server}\r\nContent-Length: {}\r\n",
        r.status,
        reason(r.status),
        r.body.len()
    );
    for (k, v) in &r.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    // One write: a head and a body in two small segments waited for the client's delayed
    // ACK (Nagle), 40 ms per answer.
    let mut out = head.into_bytes();
    out.extend_from_slice(&r.body);
    w.write_all(&out)?;
    w.flush()
}

fn serve<S: Read + Write>(conn: S, state: &Mutex<State>, opts: &SimOptions) {
    let mut reader = BufReader::new(conn);
    while let Some(req) = read_request(&mut reader) {
        let fault = take_fault(state, &req);
        if let Some(FaultKind::Latency(d)) = &fault {
            std::thread::sleep(*d);
        }
        let answer = match &fault {
            Some(FaultKind::Status(s, code)) => Some(error(*s, code, "injected fault")),
            Some(FaultKind::DropBeforeApply) => None,
            _ => Some(handle(&req, state, opts)),
        };
        let status = answer.as_ref().map_or(0, |a| a.status);
        lock(state).log.push(format!(
            "{} {}?{} -> {}",
            req.method, req.path, req.query, status
        ));
        match (answer, &fault) {
            // Dropping the stream closes the connection without an answer.
            (Some(_), Some(FaultKind::DropAfterApply)) | (None, _) => return,
            (Some(a), _) => {
                if write_reply(reader.get_mut(), &opts.server, &a).is_err() {
                    return;
                }
            }
        }
    }
}

fn take_fault(state: &Mutex<State>, req: &Request) -> Option<FaultKind> {
    let mut st = lock(state);
    let now = Instant::now();
    st.faults
        .retain(|f| f.count != Some(0) && f.until.is_none_or(|u| now < u));
    let f = st.faults.iter_mut().find(|f| {
        f.method.as_deref().is_none_or(|m| m == req.method)
            && f.command.as_deref().is_none_or(|c| c == req.command())
    })?;
    if let Some(c) = &mut f.count {
        *c -= 1;
    }
    Some(f.kind.clone())
}

/// Check the SigV4 signature as the server would: known access key, the SDK's signed headers,
/// the payload hash, the clock, and the signature itself.
fn authenticate(req: &Request, opts: &SimOptions) -> Result<(), Reply> {
    let deny = |code: &str, msg: &str| Err(error(403, code, msg));
    let Some(auth) = req.header("authorization") else {
        return deny("AccessDenied", "missing Authorization");
    };
    let Some(rest) = auth.strip_prefix("AWS4-HMAC-SHA256 Credential=") else {
        return deny("AccessDenied", "unsupported authorization scheme");
    };
    let access = rest.split('/').next().unwrap_or("");
    if access != opts.credentials.access_key {
        return deny("InvalidAccessKeyId", "unknown access key");
    }
    if !auth.contains("SignedHeaders=host;x-amz-date,") {
        return deny("AccessDenied", "unexpected signed headers");
    }
    let Some(date) = req.header("x-amz-date") else {
        return deny("AccessDenied", "missing x-amz-date");
    };
    let Some(time) = parse_amz_date(date) else {
        return deny("AccessDenied", "bad x-amz-date");
    };
    let skew = SystemTime::now()
        .duration_since(time)
        .or_else(|e| Ok::<_, ()>(e.duration()))
        .unwrap_or_default();
    if skew > Duration::from_secs(15 * 60) {
        return deny(
            "RequestTimeTooSkewed",
            "the request time is too far from the server time",
        );
    }
    if let Some(h) = req.header("x-amz-content-sha256")
        && h != sha256_hex(&req.body)
    {
        return Err(error(
            400,
            "XAmzContentSHA256Mismatch",
            "payload hash mismatch",
        ));
    }
    let host = req.header("host").unwrap_or("");
    let pq = if req.query.is_empty() {
        req.path.clone()
    } else {
        format!("{}?{}", req.path, req.query)
    };
    let expected = sign_request(&opts.credentials, &req.method, host, &pq, &req.body, time)
        .map_err(|e| error(400, "AccessDenied", &e))?;
    let given = auth.rsplit("Signature=").next().unwrap_or("");
    if given != expected.signature {
        return deny(
            "SignatureDoesNotMatch",
            "the request signature does not match",
        );
    }
    Ok(())
}

fn handle(req: &Request, state: &Mutex<State>, opts: &SimOptions) -> Reply {
    if let Err(r) = authenticate(req, opts) {
        return r;
    }
    if req.body.len() > MAX_REQUEST {
        return error(400, "RequestTooLarge", "request body over 5 MiB");
    }
    let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    let mut st = lock(state);
    if req.method == "HEAD" && segs.len() == 1 {
        return reply(if st.committed.buckets.contains_key(segs[0]) {
            200
        } else {
            404
        });
    }
    let cmd = req.command().to_string();
    if cmd == "transaction" && segs.is_empty() {
        return transaction(req, &mut st, opts.row_conflicts);
    }
    let Some(txid) = req
        .header("tabular-txid")
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return error(400, "BadRequest", "missing tabular-txid");
    };
    if req.header("tabular-api-version-id") != Some("1") {
        return error(400, "BadRequest", "missing tabular-api-version-id");
    }
    let st = &mut *st;
    let Some(db) = st.txns.get_mut(&txid) else {
        return error(400, "TabularInvalidTxid", "no such open transaction");
    };
    match (req.method.as_str(), cmd.as_str(), segs.as_slice()) {
        ("GET", "data", [bucket, schema, table]) => {
            let Some(t) = table_mut(db, bucket, schema, table) else {
                return error(404, "NoSuchTable", "no such table");
            };
            select(t, req)
        }
        ("PUT", "rows", [bucket, schema, table]) => {
            let Some(t) = table_mut(db, bucket, schema, table) else {
                return error(404, "NoSuchTable", "no such table");
            };
            update(t, &req.body)
        }
        ("GET", "schema", [bucket]) => {
            let Some(b) = db.buckets.get(*bucket) else {
                return error(404, "NoSuchBucket", "no such bucket");
            };
            let exact = req.header("tabular-name-exact-match");
            let items: Vec<ObjectDetails> = b
                .keys()
                .filter(|n| exact.is_none_or(|e| e == n.as_str()))
                .map(|n| ObjectDetails {
                    name: n.clone(),
                    ..Default::default()
                })
                .collect();
            listed(wire::list_schemas_response(bucket, &items))
        }
        ("POST", "schema", [bucket, schema]) => {
            let Some(b) = db.buckets.get_mut(*bucket) else {
                return error(404, "NoSuchBucket", "no such bucket");
            };
            if b.contains_key(*schema) {
                return error(409, "Conflict", "schema exists");
            }
            if wire::Table::root(&req.body)
                .and_then(|t| t.string(0))
                .is_err()
            {
                return error(400, "BadRequest", "malformed CreateSchemaRequest");
            }
            b.insert(schema.to_string(), BTreeMap::new());
            reply(200)
        }
        ("GET", "table", [bucket, schema]) => {
            let Some(s) = db.buckets.get(*bucket).and_then(|b| b.get(*schema)) else {
                return error(404, "NoSuchSchema", "no such schema");
            };
            let exact = req.header("tabular-name-exact-match");
            let items: Vec<ObjectDetails> = s
                .iter()
                .filter(|(n, _)| exact.is_none_or(|e| e == n.as_str()))
                .map(|(n, t)| ObjectDetails {
                    name: n.clone(),
                    handle: "1".into(),
                    num_rows: t.batches.iter().map(|b| b.num_rows() as u64).sum(),
                    ..Default::default()
                })
                .collect();
            listed(wire::list_tables_response(bucket, schema, &items))
        }
        ("POST", "table", [bucket, schema, table]) => {
            let Some(s) = db.buckets.get_mut(*bucket).and_then(|b| b.get_mut(*schema)) else {
                return error(404, "NoSuchSchema", "no such schema");
            };
            if s.contains_key(*table) {
                return error(409, "Conflict", "table exists");
            }
            let Ok(columns) = wire::read_schema(&req.body) else {
                return error(400, "BadRequest", "malformed schema message");
            };
            let mut sorted = Vec::new();
            for i in 0.. {
                let Some(v) = req.header(&format!("tabular-sorted-column-{i}")) else {
                    break;
                };
                match v.parse::<usize>() {
                    Ok(c) if c < columns.fields().len() => sorted.push(c),
                    _ => return error(500, "InternalError", "We encountered an internal error"),
                }
            }
            s.insert(table.to_string(), TableState::new(&columns, sorted));
            reply(200)
        }
        ("GET", "column", [bucket, schema, table]) => {
            let Some(t) = table_mut(db, bucket, schema, table) else {
                return error(404, "NoSuchTable", "no such table");
            };
            let batch = RecordBatch::new_empty(Arc::new(Schema::new(t.schema.clone())));
            listed(wire::ipc_stream(&batch).unwrap_or_default())
        }
        ("POST", "column", [bucket, schema, table]) => {
            let Some(t) = table_mut(db, bucket, schema, table) else {
                return error(404, "NoSuchTable", "no such table");
            };
            let Ok(columns) = wire::read_schema(&req.body) else {
                return error(400, "BadRequest", "malformed schema message");
            };
            for f in columns.fields() {
                if t.schema.iter().any(|c| c.name() == f.name()) {
                    return error(409, "Conflict", "column exists");
                }
                // Existing rows read the new column as null.
                t.schema.push(f.as_ref().clone().with_nullable(true));
            }
            reply(200)
        }
        ("POST", "rows", [bucket, schema, table]) => {
            let Some(t) = table_mut(db, bucket, schema, table) else {
                return error(404, "NoSuchTable", "no such table");
            };
            let next = st
                .row_ids
                .entry(format!("{bucket}/{schema}/{table}"))
                .or_insert(0);
            insert(t, &req.body, next)
        }
        _ => error(
            400,
            "BadRequest",
            &format!(
                "unsupported request {} {}?{}",
                req.method, req.path, req.query
            ),
        ),
    }
}

fn table_mut<'a>(
    db: &'a mut Db,
    bucket: &str,
    schema: &str,
    table: &str,
) -> Option<&'a mut TableState> {
    db.buckets.get_mut(bucket)?.get_mut(schema)?.get_mut(table)
}

/// A listing answer: one page, not truncated.
fn listed(body: Vec<u8>) -> Reply {
    let mut r = reply(200);
    r.body = body;
    r.headers
        .push(("tabular-is-truncated".into(), "false".into()));
    r.headers.push(("tabular-next-key".into(), "0".into()));
    r
}

/// The table's rows as of this view: the requested columns, `$row_id` among them.
fn projected(t: &TableState, names: &[String]) -> Result<RecordBatch, Reply> {
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for name in names {
        let parts: Vec<ArrayRef> = if name == query::ROW_ID {
            fields.push(Field::new(query::ROW_ID, DataType::UInt64, true));
            t.first_ids
                .iter()
                .zip(&t.batches)
                .map(|(first, b)| {
                    Arc::new(UInt64Array::from_iter_values(
                        *first..*first + b.num_rows() as u64,
                    )) as ArrayRef
                })
                .collect()
        } else {
            let Some(f) = t.schema.iter().find(|f| f.name() == name) else {
                return Err(error(
                    404,
                    "TabularColumnNotFound",
                    &format!("no column {name}"),
                ));
            };
            fields.push(f.clone());
            // Rows inserted before the column was added read it as null.
            t.batches
                .iter()
                .map(|b| {
                    b.column_by_name(name)
                        .cloned()
                        .unwrap_or_else(|| arrow_array::new_null_array(f.data_type(), b.num_rows()))
                })
                .collect()
        };
        let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
        let col = if refs.is_empty() {
            arrow_array::new_empty_array(fields.last().expect("pushed").data_type())
        } else {
            arrow_select::concat::concat(&refs)
                .map_err(|e| error(500, "InternalError", &e.to_string()))?
        };
        columns.push(col);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| error(500, "InternalError", &e.to_string()))
}

/// QueryData: pages of at most `tabular-limit-rows` rows on sub-split 0 (its cursor is the
/// next row's position), the other sub-splits finish with an empty page at once.
fn select(t: &TableState, req: &Request) -> Reply {
    let Ok(names) = query::requested_names(&req.body) else {
        return error(400, "BadRequest", "malformed query request");
    };
    let subsplits: u32 = match req
        .header("tabular-num-of-subsplits")
        .and_then(|v| v.parse().ok())
    {
        Some(n) if (1..=64).contains(&n) => n,
        _ => return error(400, "BadRequest", "missing tabular-num-of-subsplits"),
    };
    if req.header("tabular-split") != Some("0,1,8") {
        return error(400, "BadRequest", "unsupported tabular-split");
    }
    let limit: usize = req
        .header("tabular-limit-rows")
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(usize::MAX);
    let mut cursors = Vec::new();
    for i in 0..subsplits {
        let c = req
            .header(&format!("tabular-start-row-id-{i}"))
            .and_then(|v| v.split_once(','))
            .filter(|(id, _)| id.parse() == Ok(i))
            .and_then(|(_, c)| c.parse::<u64>().ok());
        let Some(c) = c else {
            return error(400, "BadRequest", "missing tabular-start-row-id");
        };
        cursors.push(c);
    }
    let all = match projected(t, &names) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut body = Vec::new();
    for (i, &c) in cursors.iter().enumerate() {
        if c == query::DONE {
            continue;
        }
        let page = if i == 0 {
            let from = (c as usize).min(all.num_rows());
            let n = limit.min(all.num_rows() - from);
            let next = if from + n < all.num_rows() {
                (from + n) as u64
            } else {
                query::DONE
            };
            (all.slice(from, n), next)
        } else {
            (all.slice(0, 0), query::DONE)
        };
        match query::encode_page(&page.0, i as u32, page.1) {
            Ok(b) => body.extend(b),
            Err(e) => return error(500, "InternalError", &e.to_string()),
        }
    }
    body.extend_from_slice(&query::completed());
    let mut r = reply(200);
    r.body = body;
    r
}

/// UpdateRows: `$row_id` first (uint64, ascending, each once), then the columns to set,
/// typed as the table declares them.
fn update(t: &mut TableState, body: &[u8]) -> Reply {
    let Ok(batches) = wire::read_batches(body) else {
        return error(400, "BadRequest", "malformed Arrow IPC stream");
    };
    let [batch] = batches.as_slice() else {
        return error(400, "BadRequest", "expected exactly one record batch");
    };
    let ids = match batch.schema().fields().first() {
        Some(f) if f.name() == query::ROW_ID && f.data_type() == &DataType::UInt64 => batch
            .column(0)
            .as_any()
            .downcast_ref::<UInt64Array>()
            .expect("uint64")
            .clone(),
        _ => return error(400, "BadRequest", "column 0 must be $row_id (uint64)"),
    };
    if ids.null_count() > 0 || ids.values().windows(2).any(|w| w[0] >= w[1]) {
        return error(
            400,
            "BadRequest",
            "$row_id values must be distinct and ascending",
        );
    }
    for f in batch.schema().fields().iter().skip(1) {
        match t.schema.iter().find(|c| c.name() == f.name()) {
            None => {
                return error(
                    404,
                    "TabularColumnNotFound",
                    &format!("no column {}", f.name()),
                );
            }
            Some(c) if c.data_type() != f.data_type() || c.is_nullable() != f.is_nullable() => {
                return error(
                    400,
                    "TabularMismatchColumnType",
                    &format!("column {} differs", f.name()),
                );
            }
            Some(_) => {}
        }
    }
    if let Some(id) = ids.values().iter().find(|id| t.locate(**id).is_none()) {
        return error(400, "BadRequest", &format!("no row with $row_id {id}"));
    }
    for (r, id) in ids.values().iter().enumerate() {
        for (c, f) in batch.schema().fields().iter().enumerate().skip(1) {
            let value = batch.column(c).slice(r, 1);
            if let Err(e) = t.set(*id, f.name(), &value) {
                return error(500, "InternalError", &e);
            }
            t.updates.push((*id, f.name().clone(), value));
        }
    }
    reply(200)
}

fn insert(t: &mut TableState, body: &[u8], next_row_id: &mut u64) -> Reply {
    let Ok(batches) = wire::read_batches(body) else {
        return error(400, "BadRequest", "malformed Arrow IPC stream");
    };
    if batches.len() != 1 {
        return error(400, "BadRequest", "expected exactly one record batch");
    }
    let batch = &batches[0];
    if batch.num_columns() == 0 {
        return error(501, "NotImplemented", "a batch without columns");
    }
    for f in batch.schema().fields() {
        match t.schema.iter().find(|c| c.name() == f.name()) {
            None => {
                return error(
                    404,
                    "TabularColumnNotFound",
                    &format!("no column {}", f.name()),
                );
            }
            Some(c) if c.data_type() != f.data_type() || c.is_nullable() != f.is_nullable() => {
                return error(
                    400,
                    "TabularMismatchColumnType",
                    &format!("column {} differs", f.name()),
                );
            }
            Some(_) => {}
        }
    }
    // Store rows in the table's full layout (missing columns null).
    let full = Arc::new(Schema::new(t.schema.clone()));
    let cols = full
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) => c.clone(),
            None => arrow_array::new_null_array(f.data_type(), batch.num_rows()),
        })
        .collect();
    let stored = match RecordBatch::try_new(full, cols) {
        Ok(b) => b,
        Err(e) => return error(400, "BadRequest", &e.to_string()),
    };
    let first = *next_row_id;
    *next_row_id += stored.num_rows() as u64;
    t.next_row_id = *next_row_id;
    t.batches.push(stored);
    t.first_ids.push(first);
    let ids = UInt64Array::from_iter_values(first..*next_row_id);
    let schema = Arc::new(Schema::new(vec![Field::new(
        "$row_id",
        DataType::UInt64,
        false,
    )]));
    let mut r = reply(200);
    r.body = RecordBatch::try_new(schema, vec![Arc::new(ids)])
        .ok()
        .and_then(|b| wire::ipc_stream(&b).ok())
        .unwrap_or_default();
    r
}

fn transaction(req: &Request, st: &mut State, conflicts: RowConflicts) -> Reply {
    let txid = req
        .header("tabular-txid")
        .and_then(|v| v.parse::<u64>().ok());
    match req.method.as_str() {
        // The version probe.
        "GET" => reply(200),
        "POST" | "PUT" if req.header("content-length") != Some("0") => error(
            400,
            "BadRequest",
            "begin and commit carry Content-Length: 0",
        ),
        "POST" => {
            st.next_txid += 1;
            let id = st.next_txid;
            let mut view = st.committed.clone();
            for t in view
                .buckets
                .values_mut()
                .flat_map(|b| b.values_mut())
                .flat_map(|s| s.values_mut())
            {
                t.base = t.batches.len();
            }
            view.began_after = st.commits;
            st.txns.insert(id, view);
            let mut r = reply(200);
            r.headers.push(("tabular-txid".into(), id.to_string()));
            r
        }
        "PUT" => match txid.and_then(|id| st.txns.remove(&id).map(|v| (id, v))) {
            Some((_, view)) => {
                // The transaction's own changes (new objects, added columns, appended rows)
                // are applied on top of what other transactions committed meanwhile.
                if let Err(r) = merge(&mut st.committed, view, conflicts, st.commits + 1) {
                    return r;
                }
                st.commits += 1;
                reply(200)
            }
            None => error(400, "TabularInvalidTxid", "no such open transaction"),
        },
        "DELETE" => match txid.and_then(|id| st.txns.remove(&id)) {
            Some(_) => reply(200),
            None => error(400, "TabularInvalidTxid", "no such open transaction"),
        },
        _ => error(405, "MethodNotAllowed", "method not allowed"),
    }
}

/// Apply a committed transaction's view: new schemas/tables/columns, appended rows, row
/// updates (commit number `seq`).
fn merge(committed: &mut Db, view: Db, conflicts: RowConflicts, seq: u64) -> Result<(), Reply> {
    if conflicts == RowConflicts::ConflictOnCommit {
        for (b, schemas) in &view.buckets {
            for (s, tables) in schemas {
                for (name, t) in tables {
                    let Some(c) = committed
                        .buckets
                        .get(b)
                        .and_then(|x| x.get(s))
                        .and_then(|x| x.get(name))
                    else {
                        continue;
                    };
                    let lost = t.updates.iter().any(|(id, _, _)| {
                        c.updated_by
                            .get(id)
                            .is_some_and(|&by| by > view.began_after)
                    });
                    if lost {
                        return Err(error(
                            409,
                            "Conflict",
                            "a row this transaction updated was updated by a transaction that committed first",
                        ));
                    }
                }
            }
        }
    }
    // DDL racing with another committed transaction: creating what now exists is a conflict.
    for (b, schemas) in &view.buckets {
        for (s, tables) in schemas {
            for (name, t) in tables {
                let exists = committed
                    .buckets
                    .get(b)
                    .and_then(|x| x.get(s))
                    .is_some_and(|x| x.contains_key(name));
                if exists
                    && t.base == 0
                    && t.batches.is_empty()
                    && t.next_row_id == 0
                    && !t.schema.is_empty()
                {
                    let c = &committed.buckets[b][s][name];
                    if c.schema != t.schema {
                        return Err(error(
                            409,
                            "Conflict",
                            "table created concurrently with another layout",
                        ));
                    }
                }
            }
        }
    }
    for (b, schemas) in view.buckets {
        let cb = committed.buckets.entry(b).or_default();
        for (s, tables) in schemas {
            let cs = cb.entry(s).or_default();
            for (name, t) in tables {
                match cs.get_mut(&name) {
                    None => {
                        let mut t = t;
                        for (id, _, _) in std::mem::take(&mut t.updates) {
                            t.updated_by.insert(id, seq);
                        }
                        cs.insert(name, t);
                    }
                    Some(c) => {
                        if t.schema.len() > c.schema.len() {
                            c.schema = t.schema;
                        }
                        // Rows appended in the transaction are the ones past its base.
                        c.batches.extend(t.batches.into_iter().skip(t.base));
                        c.first_ids.extend(t.first_ids.into_iter().skip(t.base));
                        c.next_row_id = c.next_row_id.max(t.next_row_id);
                        for (id, col, value) in &t.updates {
                            // Rows appended above carry their updates already.
                            if c.set(*id, col, value).is_ok() {
                                c.updated_by.insert(*id, seq);
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
