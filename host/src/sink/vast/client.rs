//! A native client for the VAST Database tabular API (the ingest subset of
//! shared/vast-tabular-api.md): version probe, transactions, bucket/schema/table bootstrap,
//! columns, and sliced Arrow inserts. Blocking, one keep-alive agent.

use super::sigv4::{Credentials, host_header, sign_request};
use super::wire;
use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Limits of one request (§9.1): serialized insert body and rows per insert.
pub const MAX_INSERT_BYTES: usize = 4_718_592;
pub const MAX_INSERT_ROWS: usize = 524_288;
/// Lowest server version with sorted tables (§2).
pub const SORTED_TABLES_SINCE: (u32, u32) = (5, 3);

/// How to reach a VAST cluster.
#[derive(Debug, Clone)]
pub struct VastConfig {
    /// `http://host:port` or `https://host[:port]`.
    pub endpoint: String,
    pub credentials: Credentials,
    /// PEM file with the CA that signed the server's certificate (https).
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

/// A failed call. `Display` never includes credentials.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VastError {
    /// The request never reached the server (refused, DNS, connect timeout).
    #[error("cannot reach VAST at {endpoint}: {message}")]
    Unreachable { endpoint: String, message: String },
    /// The connection failed after the request was (maybe) sent: its effect is unknown.
    #[error("{method} {path}: connection lost, outcome unknown: {message}")]
    Transport {
        method: String,
        path: String,
        message: String,
    },
    /// The server answered with a status other than 200.
    #[error("{method} {path}: HTTP {status}{}{}", if code.is_empty() { String::new() } else { format!(" {code}") }, if message.is_empty() { String::new() } else { format!(": {message}") })]
    Http {
        method: String,
        path: String,
        status: u16,
        code: String,
        message: String,
    },
    /// The server is not a VAST cluster (or an unsupported version string).
    #[error("{endpoint} is not a supported VAST server: {reason}")]
    NotVast { endpoint: String, reason: String },
    /// The bucket does not exist (buckets are created by a VAST administrator).
    #[error("bucket `{0}` does not exist; ask a VAST administrator to create it")]
    MissingBucket(String),
    /// An existing table's column has another type than the processor writes.
    #[error(
        "table {table}: column `{column}` is {found} on the server but the processor writes {expected}; fix or rename the table"
    )]
    SchemaMismatch {
        table: String,
        column: String,
        found: String,
        expected: String,
    },
    /// An answer that does not parse, or a bad configuration.
    #[error("{0}")]
    Protocol(String),
}

impl VastError {
    /// Whether redoing the work (a new transaction, after a backoff) can succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            VastError::Unreachable { .. } | VastError::Transport { .. } => true,
            VastError::Http { status, .. } => {
                matches!(status, 408 | 409 | 429 | 500 | 502 | 503 | 504 | 507)
            }
            _ => false,
        }
    }

    /// 403: the credentials are wrong (fatal, with a clear hint).
    pub fn is_auth(&self) -> bool {
        matches!(self, VastError::Http { status: 403, .. })
    }

    /// An error that means the table layout changed or is not what we think (re-bootstrap).
    pub fn is_schema(&self) -> bool {
        matches!(
            self,
            VastError::Http {
                status: 400 | 404,
                ..
            } | VastError::SchemaMismatch { .. }
        )
    }
}

/// `<Error><Code>..</Code><Message>..</Message></Error>` → (code, message); empty when the
/// body is not such XML.
pub fn parse_error_body(body: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(body);
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        text.find(&open)
            .and_then(|s| {
                let rest = &text[s + open.len()..];
                rest.find(&close).map(|e| rest[..e].trim().to_string())
            })
            .unwrap_or_default()
    };
    (tag("Code"), tag("Message"))
}

/// A server version `vast A.B.C.D` (§2): exactly four dot-separated integers.
pub fn parse_server_header(value: Option<&str>) -> Result<[u32; 4], String> {
    let v = value.ok_or("the answer has no Server header")?;
    let rest = v
        .strip_prefix("vast ")
        .ok_or_else(|| format!("Server header `{v}` does not name VAST"))?;
    let parts: Vec<&str> = rest.split('.').collect();
    if parts.len() != 4 {
        return Err(format!("Server header `{v}` is not `vast A.B.C.D`"));
    }
    let mut out = [0u32; 4];
    for (o, p) in out.iter_mut().zip(&parts) {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("Server header `{v}` is not `vast A.B.C.D`"));
        }
        *o = p
            .parse()
            .map_err(|_| format!("Server header `{v}`: version part too large"))?;
    }
    Ok(out)
}

/// `{path}?{command}[&k=v...]` with the extra parameters sorted by key (§1).
pub fn path_and_query(path: &str, command: Option<&str>, params: &[(&str, &str)]) -> String {
    let mut s = if path.is_empty() {
        "/".to_string()
    } else {
        path.to_string()
    };
    let mut sep = '?';
    if let Some(c) = command {
        s.push(sep);
        s.push_str(c);
        sep = '&';
    }
    let mut params = params.to_vec();
    params.sort();
    for (k, v) in params {
        s.push(sep);
        s.push_str(k);
        s.push('=');
        s.push_str(&v.replace(' ', "+"));
        sep = '&';
    }
    s
}

/// The object path `/{bucket}/{schema}/{table}` with empty parts skipped.
pub fn object_path(parts: &[&str]) -> String {
    let mut s = String::new();
    for p in parts.iter().filter(|p| !p.is_empty()) {
        s.push('/');
        s.push_str(p);
    }
    if s.is_empty() { "/".into() } else { s }
}

/// Split `batch` into slices that each serialize to at most `max_bytes` and `max_rows` (§9.1).
pub fn slice_for_insert(
    batch: &RecordBatch,
    max_bytes: usize,
    max_rows: usize,
) -> Result<Vec<Vec<u8>>, VastError> {
    let rows = batch.num_rows();
    if rows == 0 {
        return Ok(Vec::new());
    }
    let total = batch.get_array_memory_size().max(1);
    let mut per = ((0.9 * rows as f64 * max_bytes as f64 / total as f64) as usize)
        .clamp(1, max_rows)
        .min(rows);
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < rows {
        let len = per.min(rows - offset);
        let body = wire::ipc_stream(&batch.slice(offset, len))
            .map_err(|e| VastError::Protocol(format!("arrow ipc: {e}")))?;
        if body.len() > max_bytes {
            if len == 1 {
                return Err(VastError::Protocol(format!(
                    "one row serializes to {} bytes, over the {max_bytes}-byte insert limit",
                    body.len()
                )));
            }
            per = (len / 2).max(1);
            continue;
        }
        out.push(body);
        offset += len;
    }
    Ok(out)
}

/// A transaction id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxId(pub u64);

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A connected client.
pub struct VastClient {
    agent: ureq::Agent,
    endpoint: String,
    host: String,
    creds: Credentials,
    version: [u32; 4],
}

impl VastClient {
    /// Connect: build the HTTP agent and probe the server version (`GET /?transaction`).
    /// A non-VAST server, wrong credentials (403) or no answer are errors here, at startup.
    pub fn connect(config: &VastConfig) -> Result<VastClient, VastError> {
        let endpoint = config.endpoint.trim_end_matches('/').to_string();
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e| VastError::Protocol(format!("invalid VAST endpoint `{endpoint}`: {e}")))?;
        let scheme = uri.scheme_str().unwrap_or("");
        if scheme != "http" && scheme != "https" {
            return Err(VastError::Protocol(format!(
                "VAST endpoint `{endpoint}` must start with http:// or https://"
            )));
        }
        let host = host_header(uri.host().unwrap_or(""), uri.port_u16());
        let mut builder = ureq::Agent::config_builder()
            .timeout_connect(Some(config.connect_timeout))
            .timeout_global(Some(config.request_timeout))
            .http_status_as_error(false)
            .user_agent(format!("vast-processor/{}", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                VastError::Protocol(format!("cannot read CA file {}: {e}", ca.display()))
            })?;
            let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(VastError::Protocol(format!(
                    "CA file {} holds no certificate",
                    ca.display()
                )));
            }
            let tls = ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                .build();
            builder = builder.tls_config(tls);
        }
        let mut client = VastClient {
            agent: builder.build().into(),
            endpoint: endpoint.clone(),
            host,
            creds: config.credentials.clone(),
            version: [0; 4],
        };
        let a = client.send(
            "GET",
            "/",
            Some("transaction"),
            &[("tabular-get-vast-version", "true".into())],
            &[],
            None,
        )?;
        client.version =
            parse_server_header(a.header("server")).map_err(|reason| VastError::NotVast {
                endpoint: endpoint.clone(),
                reason,
            })?;
        if a.status != 200 {
            return Err(client.http_error("GET", "/?transaction", &a));
        }
        Ok(client)
    }

    /// The server version (major, minor, patch, protocol).
    pub fn version(&self) -> [u32; 4] {
        self.version
    }

    /// Whether the server supports sorted tables.
    pub fn supports_sorting(&self) -> bool {
        (self.version[0], self.version[1]) >= SORTED_TABLES_SINCE
    }

    fn http_error(&self, method: &str, pq: &str, a: &Answer) -> VastError {
        let (code, message) = parse_error_body(&a.body);
        VastError::Http {
            method: method.into(),
            path: pq.into(),
            status: a.status,
            code,
            message,
        }
    }

    /// Send one signed request; `txid` adds the common tabular headers.
    fn send(
        &self,
        method: &str,
        path: &str,
        command: Option<&str>,
        extra: &[(&str, String)],
        body: &[u8],
        txid: Option<TxId>,
    ) -> Result<Answer, VastError> {
        let pq = path_and_query(path, command, &[]);
        let signed = sign_request(
            &self.creds,
            method,
            &self.host,
            &pq,
            body,
            SystemTime::now(),
        )
        .map_err(VastError::Protocol)?;
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{pq}", self.endpoint))
            .header("authorization", &signed.authorization)
            .header("x-amz-date", &signed.amz_date)
            .header("x-amz-content-sha256", &signed.content_sha256);
        if let Some(TxId(id)) = txid {
            req = req
                .header("tabular-txid", id.to_string())
                .header("tabular-api-version-id", "1")
                .header("tabular-client-name", "tabular-api");
        }
        for (k, v) in extra {
            req = req.header(*k, v);
        }
        // As the SDK: an explicit length on every request with a body and on begin/commit
        // (0), and the form content type `requests` puts on Arrow bodies.
        if !body.is_empty() || matches!(method, "POST" | "PUT") {
            req = req.header("content-length", body.len().to_string());
        }
        let arrow_body = command == Some("rows") || (method == "POST" && command == Some("table"));
        if arrow_body && !body.is_empty() {
            req = req.header("content-type", "application/x-www-form-urlencoded");
        }
        let req = req
            .body(body.to_vec())
            .map_err(|e| VastError::Protocol(format!("bad request: {e}")))?;
        // A 503 SlowDown is retried in place (the SDK does this for every method), with
        // exponential backoff and full jitter, 10 tries at most.
        for attempt in 0..10u32 {
            let answer = self.exchange(method, &pq, req.clone())?;
            let slowdown = answer.status == 503 && parse_error_body(&answer.body).0 == "SlowDown";
            if !slowdown || attempt == 9 {
                return Ok(answer);
            }
            let nominal = Duration::from_millis(100u64 << attempt.min(6));
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos() as u64);
            std::thread::sleep(Duration::from_nanos(
                nanos % (nominal.as_nanos() as u64 + 1),
            ));
        }
        unreachable!("the loop returns on its last attempt")
    }

    fn exchange(
        &self,
        method: &str,
        pq: &str,
        req: http::Request<Vec<u8>>,
    ) -> Result<Answer, VastError> {
        match self.agent.run(req) {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let headers = resp
                    .headers()
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_string(),
                            v.to_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect();
                let body = resp
                    .into_body()
                    .with_config()
                    .limit(64 * 1024 * 1024)
                    .read_to_vec()
                    .map_err(|e| VastError::Transport {
                        method: method.into(),
                        path: pq.into(),
                        message: e.to_string(),
                    })?;
                Ok(Answer {
                    status,
                    headers,
                    body,
                })
            }
            Err(e) => {
                let before_send = matches!(
                    e,
                    ureq::Error::ConnectionFailed
                        | ureq::Error::HostNotFound
                        | ureq::Error::Timeout(ureq::Timeout::Connect)
                ) || matches!(&e, ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused);
                if before_send {
                    Err(VastError::Unreachable {
                        endpoint: self.endpoint.clone(),
                        message: e.to_string(),
                    })
                } else {
                    Err(VastError::Transport {
                        method: method.into(),
                        path: pq.into(),
                        message: e.to_string(),
                    })
                }
            }
        }
    }

    fn ok(
        &self,
        method: &str,
        path: &str,
        command: Option<&str>,
        extra: &[(&str, String)],
        body: &[u8],
        tx: Option<TxId>,
    ) -> Result<Answer, VastError> {
        let a = self.send(method, path, command, extra, body, tx)?;
        if a.status != 200 {
            return Err(self.http_error(method, &path_and_query(path, command, &[]), &a));
        }
        Ok(a)
    }

    /// Begin a transaction.
    pub fn begin(&self) -> Result<TxId, VastError> {
        let a = self.ok("POST", "/", Some("transaction"), &[], &[], Some(TxId(0)))?;
        let id = a
            .header("tabular-txid")
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| {
                VastError::Protocol("begin transaction: no tabular-txid in the answer".into())
            })?;
        Ok(TxId(id))
    }

    /// Commit a transaction.
    pub fn commit(&self, tx: TxId) -> Result<(), VastError> {
        self.ok("PUT", "/", Some("transaction"), &[], &[], Some(tx))
            .map(|_| ())
    }

    /// Roll a transaction back.
    pub fn rollback(&self, tx: TxId) -> Result<(), VastError> {
        self.ok("DELETE", "/", Some("transaction"), &[], &[], Some(tx))
            .map(|_| ())
    }

    /// Whether the bucket exists (`HEAD /{bucket}`).
    pub fn bucket_exists(&self, bucket: &str) -> Result<bool, VastError> {
        let path = object_path(&[bucket]);
        let a = self.send("HEAD", &path, None, &[], &[], None)?;
        match a.status {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(self.http_error("HEAD", &path, &a)),
        }
    }

    fn list_headers(exact: &str, max_keys: usize) -> Vec<(&'static str, String)> {
        vec![
            ("tabular-max-keys", max_keys.to_string()),
            ("tabular-next-key", "0".into()),
            ("tabular-name-exact-match", exact.to_string()),
            ("tabular-list-count-only", "False".into()),
        ]
    }

    /// Whether `schema` exists in `bucket`.
    pub fn schema_exists(&self, tx: TxId, bucket: &str, schema: &str) -> Result<bool, VastError> {
        let a = self.ok(
            "GET",
            &object_path(&[bucket]),
            Some("schema"),
            &Self::list_headers(schema, 1),
            &[],
            Some(tx),
        )?;
        let (_, items) = wire::parse_list_schemas(&a.body)
            .map_err(|e| VastError::Protocol(format!("list schemas: {e}")))?;
        Ok(items.iter().any(|i| i.name == schema))
    }

    /// Create `schema` in `bucket`.
    pub fn create_schema(&self, tx: TxId, bucket: &str, schema: &str) -> Result<(), VastError> {
        self.ok(
            "POST",
            &object_path(&[bucket, schema]),
            Some("schema"),
            &[],
            &wire::create_schema_request(),
            Some(tx),
        )
        .map(|_| ())
    }

    /// Whether `table` exists.
    pub fn table_exists(
        &self,
        tx: TxId,
        bucket: &str,
        schema: &str,
        table: &str,
    ) -> Result<bool, VastError> {
        let mut h = Self::list_headers(table, 1000);
        h.push(("tabular-include-list-stats", "True".into()));
        let a = self.ok(
            "GET",
            &object_path(&[bucket, schema]),
            Some("table"),
            &h,
            &[],
            Some(tx),
        )?;
        let items = wire::parse_list_tables(&a.body)
            .map_err(|e| VastError::Protocol(format!("list tables: {e}")))?;
        Ok(items.iter().any(|i| i.name == table))
    }

    /// Create `table` with `columns`; `sorted` are column indices of the sorting key.
    pub fn create_table(
        &self,
        tx: TxId,
        bucket: &str,
        schema: &str,
        table: &str,
        columns: &Schema,
        sorted: &[usize],
    ) -> Result<(), VastError> {
        let names: Vec<String> = (0..sorted.len())
            .map(|i| format!("tabular-sorted-column-{i}"))
            .collect();
        let headers: Vec<(&str, String)> = names
            .iter()
            .zip(sorted)
            .map(|(n, c)| (n.as_str(), c.to_string()))
            .collect();
        self.ok(
            "POST",
            &object_path(&[bucket, schema, table]),
            Some("table"),
            &headers,
            &wire::schema_message(columns),
            Some(tx),
        )
        .map(|_| ())
    }

    /// The table's columns (all pages).
    pub fn list_columns(
        &self,
        tx: TxId,
        bucket: &str,
        schema: &str,
        table: &str,
    ) -> Result<Schema, VastError> {
        let path = object_path(&[bucket, schema, table]);
        let mut fields = Vec::new();
        let mut next = 0u64;
        for _ in 0..10_000 {
            let h = vec![
                ("tabular-max-keys", "10000".to_string()),
                ("tabular-next-key", next.to_string()),
                ("tabular-list-count-only", "False".into()),
                ("tabular-name-prefix", String::new()),
            ];
            let a = self.ok("GET", &path, Some("column"), &h, &[], Some(tx))?;
            let page = wire::read_schema(&a.body)
                .map_err(|e| VastError::Protocol(format!("list columns of {table}: {e}")))?;
            fields.extend(page.fields().iter().map(|f| f.as_ref().clone()));
            if a.header("tabular-is-truncated") != Some("true") {
                return Ok(Schema::new(fields));
            }
            next = a
                .header("tabular-next-key")
                .and_then(|v| v.parse().ok())
                .unwrap_or(next + 1);
        }
        Err(VastError::Protocol(format!(
            "list columns of {table}: the server never ended the listing"
        )))
    }

    /// Add `columns` to the table.
    pub fn add_columns(
        &self,
        tx: TxId,
        bucket: &str,
        schema: &str,
        table: &str,
        columns: &Schema,
    ) -> Result<(), VastError> {
        self.ok(
            "POST",
            &object_path(&[bucket, schema, table]),
            Some("column"),
            &[],
            &wire::schema_message(columns),
            Some(tx),
        )
        .map(|_| ())
    }

    /// Insert `batch`, sliced under the request limits; returns the number of requests.
    pub fn insert(
        &self,
        tx: TxId,
        bucket: &str,
        schema: &str,
        table: &str,
        batch: &RecordBatch,
    ) -> Result<usize, VastError> {
        let path = object_path(&[bucket, schema, table]);
        let bodies = slice_for_insert(batch, MAX_INSERT_BYTES, MAX_INSERT_ROWS)?;
        for body in &bodies {
            self.ok("POST", &path, Some("rows"), &[], body, Some(tx))?;
        }
        Ok(bodies.len())
    }
}

/// Rows per sub-split per QueryData answer (the SDK's `limit_rows_per_sub_split`).
pub const QUERY_LIMIT_ROWS: u64 = 131_072;

impl VastClient {
    /// Every row of `table`'s `fields` (in that order; `$row_id` may be one of them, as
    /// `uint64`), read in `tx` (its own uncommitted changes included), all pages.
    pub fn query(
        &self,
        tx: TxId,
        bucket: &str,
        schema: &str,
        table: &str,
        fields: &[arrow_schema::Field],
    ) -> Result<Vec<RecordBatch>, VastError> {
        use super::query::{DONE, SUBSPLITS, cursor_headers, parse, request};
        let path = object_path(&[bucket, schema, table]);
        let body = request(fields).map_err(|e| VastError::Protocol(e.to_string()))?;
        let mut cursors = vec![0u64; SUBSPLITS as usize];
        let mut pages = Vec::new();
        // The SDK loops until every cursor is done; a server that advances none is an error.
        for _ in 0..100_000 {
            let mut h: Vec<(&str, String)> = vec![
                ("tabular-split", "0,1,8".into()),
                ("tabular-num-of-subsplits", SUBSPLITS.to_string()),
                ("tabular-request-format", "string".into()),
                ("tabular-response-format", "string".into()),
                ("tabular-enable-sorted-projections", "True".into()),
                ("tabular-limit-rows", QUERY_LIMIT_ROWS.to_string()),
            ];
            let starts = cursor_headers(&cursors);
            h.extend(starts.iter().map(|(k, v)| (k.as_str(), v.clone())));
            let a = self.ok("GET", &path, Some("data"), &h, &body, Some(tx))?;
            let answer = parse(&a.body, fields)
                .map_err(|e| VastError::Protocol(format!("query {table}: {e}")))?;
            pages.extend(answer.pages);
            let before = cursors.clone();
            for (id, next) in answer.cursors {
                if let Some(c) = cursors.get_mut(id as usize) {
                    *c = next;
                }
            }
            if cursors.iter().all(|&c| c == DONE) {
                return Ok(pages);
            }
            if cursors == before {
                return Err(VastError::Protocol(format!(
                    "query {table}: the server answered a page without moving any cursor"
                )));
            }
        }
        Err(VastError::Protocol(format!(
            "query {table}: the server never finished the query"
        )))
    }

    /// Update rows by `$row_id` (column 0 of `batch`, `uint64`); the other columns, named as
    /// in the table, get the batch's values. Rows are sent sorted by `$row_id`.
    pub fn update(
        &self,
        tx: TxId,
        bucket: &str,
        schema: &str,
        table: &str,
        batch: &RecordBatch,
    ) -> Result<(), VastError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<arrow_array::UInt64Array>()
            .filter(|_| batch.schema().field(0).name() == super::query::ROW_ID)
            .ok_or_else(|| {
                VastError::Protocol("update: column 0 must be $row_id (uint64)".into())
            })?;
        let mut order: Vec<u32> = (0..batch.num_rows() as u32).collect();
        order.sort_by_key(|&i| ids.value(i as usize));
        let order = arrow_array::UInt32Array::from(order);
        let sorted = arrow_select::take::take_record_batch(batch, &order)
            .map_err(|e| VastError::Protocol(format!("update: {e}")))?;
        let path = object_path(&[bucket, schema, table]);
        for body in slice_for_insert(&sorted, MAX_INSERT_BYTES, MAX_INSERT_ROWS)? {
            self.ok("PUT", &path, Some("rows"), &[], &body, Some(tx))?;
        }
        Ok(())
    }
}

/// Re-label `batch` with the table's own field definitions (names, types, nullability as the
/// server lists them), in the batch's column order: VAST wants each field exactly as the table
/// declares it. Columns the table lacks are an error.
pub fn conform(
    batch: &RecordBatch,
    table_schema: &Schema,
    table: &str,
) -> Result<RecordBatch, VastError> {
    let mut fields = Vec::with_capacity(batch.num_columns());
    for f in batch.schema().fields() {
        let t = table_schema
            .field_with_name(f.name())
            .map_err(|_| VastError::SchemaMismatch {
                table: table.into(),
                column: f.name().clone(),
                found: "missing".into(),
                expected: f.data_type().to_string(),
            })?;
        if t.data_type() != f.data_type() {
            return Err(VastError::SchemaMismatch {
                table: table.into(),
                column: f.name().clone(),
                found: t.data_type().to_string(),
                expected: f.data_type().to_string(),
            });
        }
        fields.push(t.clone());
    }
    let schema: SchemaRef = std::sync::Arc::new(Schema::new(fields));
    RecordBatch::try_new(schema, batch.columns().to_vec())
        .map_err(|e| VastError::Protocol(format!("table {table}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{DataType, Field};
    use std::sync::Arc;

    #[test]
    fn urls_follow_the_sdk() {
        assert_eq!(
            path_and_query("/", Some("transaction"), &[]),
            "/?transaction"
        );
        assert_eq!(path_and_query("/b/s/t", Some("rows"), &[]), "/b/s/t?rows");
        assert_eq!(
            path_and_query("/b/s/t", Some("table"), &[("z", "1"), ("a", "x y")]),
            "/b/s/t?table&a=x+y&z=1"
        );
        assert_eq!(object_path(&["b", "", "t"]), "/b/t");
        assert_eq!(object_path(&[]), "/");
    }

    #[test]
    fn server_header_is_strict() {
        assert_eq!(
            parse_server_header(Some("vast 5.2.0.10")).unwrap(),
            [5, 2, 0, 10]
        );
        for bad in [
            "vast",
            "vast 5.2",
            "vast 5.2.0",
            "vast 5.2.0.10 x",
            "vast 5.2.0.10.20",
            "nginx/1.2",
            "vast 5.a.0.1",
        ] {
            assert!(parse_server_header(Some(bad)).is_err(), "{bad}");
        }
        assert!(parse_server_header(None).is_err());
    }

    #[test]
    fn error_bodies_and_classes() {
        let (c, m) = parse_error_body(
            b"<?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>busy</Message></Error>",
        );
        assert_eq!((c.as_str(), m.as_str()), ("SlowDown", "busy"));
        assert_eq!(parse_error_body(b"not xml"), (String::new(), String::new()));
        let http = |status| VastError::Http {
            method: "POST".into(),
            path: "/".into(),
            status,
            code: String::new(),
            message: String::new(),
        };
        for s in [500, 503, 409, 507, 408] {
            assert!(http(s).is_retriable(), "{s}");
        }
        for s in [400, 403, 404, 501] {
            assert!(!http(s).is_retriable(), "{s}");
        }
        assert!(http(403).is_auth());
        assert!(
            VastError::Unreachable {
                endpoint: "x".into(),
                message: "refused".into()
            }
            .is_retriable()
        );
        assert!(!VastError::MissingBucket("b".into()).is_retriable());
    }

    fn batch(rows: usize, width: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, false),
        ]));
        let s: Vec<String> = (0..rows).map(|i| format!("{i:0width$}")).collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..rows as i64)),
                Arc::new(StringArray::from(s)),
            ],
        )
        .unwrap()
    }

    #[test]
    fn inserts_are_sliced_under_both_limits() {
        // Bytes bound: ~1 KiB per row, 64 KiB per request.
        let b = batch(1000, 1000);
        let bodies = slice_for_insert(&b, 64 * 1024, MAX_INSERT_ROWS).unwrap();
        assert!(bodies.len() > 10);
        let mut rows = 0;
        for body in &bodies {
            assert!(body.len() <= 64 * 1024);
            rows += wire::read_batches(body)
                .unwrap()
                .iter()
                .map(|b| b.num_rows())
                .sum::<usize>();
        }
        assert_eq!(rows, 1000);
        // Rows bound.
        let bodies = slice_for_insert(&batch(1000, 1), MAX_INSERT_BYTES, 300).unwrap();
        assert_eq!(bodies.len(), 4);
        // A single row over the limit is an error, not an endless loop.
        assert!(slice_for_insert(&batch(1, 5000), 1024, 10).is_err());
        assert!(slice_for_insert(&batch(0, 1), 1024, 10).unwrap().is_empty());
    }

    #[test]
    fn conform_takes_the_tables_nullability_and_catches_mismatches() {
        let b = batch(2, 1);
        let table = Schema::new(vec![
            Field::new("s", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new("x", DataType::Utf8, true),
        ]);
        let c = conform(&b, &table, "t").unwrap();
        assert!(c.schema().fields().iter().all(|f| f.is_nullable()));
        assert_eq!(c.schema().field(0).name(), "n");
        let wrong = Schema::new(vec![
            Field::new("n", DataType::Utf8, true),
            Field::new("s", DataType::Utf8, true),
        ]);
        assert!(matches!(
            conform(&b, &wrong, "t"),
            Err(VastError::SchemaMismatch { .. })
        ));
    }
}
