//! QueryData (`GET ?data`): the request body (a flatbuffer `Relation` selecting columns with
//! no filter) and the framed answer (per sub-split stream: one Arrow IPC stream per column,
//! with a cursor), as `shared/vast-query-update-api.md` §2 describes them. Used to read the
//! small offsets table back with `$row_id`.

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use flatbuffers::{FlatBufferBuilder, WIPOffset};
use std::collections::HashMap;
use std::sync::Arc;

/// A sub-split that has no more rows (`TABULAR_INVALID_ROW_ID`).
pub const DONE: u64 = (1 << 48) - 1;
/// Sub-splits per request (the SDK's default).
pub const SUBSPLITS: u32 = 4;
const KEEP_ALIVE: u32 = 0xFFFF_FFFF;
const COMPLETED: u32 = 0xFFFF_FFFE;
const FAILED: u32 = 0xFFFF_FFFD;

/// The name of the row id column.
pub const ROW_ID: &str = "$row_id";

/// Why a QueryData request could not be built or its answer read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("column {0} has a type the query does not support: {1}")]
    Type(String, String),
    #[error("query answer truncated: {0}")]
    Truncated(&'static str),
    #[error("query failed on the server (error code {0})")]
    Failed(u64),
    #[error("query answer malformed: {0}")]
    Malformed(String),
}

/// The Arrow `Type` union tag and table of `dt` (`get_field_type`).
fn field_type<'a>(
    b: &mut FlatBufferBuilder<'a>,
    name: &str,
    dt: &DataType,
) -> Result<(u8, WIPOffset<flatbuffers::UnionWIPOffset>), QueryError> {
    let int = |b: &mut FlatBufferBuilder<'a>, bits: i32, signed: bool| {
        let s = b.start_table();
        b.push_slot::<i32>(4, bits, 0);
        b.push_slot::<bool>(6, signed, false);
        (2u8, b.end_table(s).as_union_value())
    };
    Ok(match dt {
        DataType::Int8 => int(b, 8, true),
        DataType::Int16 => int(b, 16, true),
        DataType::Int32 => int(b, 32, true),
        DataType::Int64 => int(b, 64, true),
        DataType::UInt8 => int(b, 8, false),
        DataType::UInt16 => int(b, 16, false),
        DataType::UInt32 => int(b, 32, false),
        DataType::UInt64 => int(b, 64, false),
        DataType::Utf8 => {
            let s = b.start_table();
            (5, b.end_table(s).as_union_value())
        }
        DataType::Timestamp(unit, _) => {
            let unit: i16 = match unit {
                TimeUnit::Second => 0,
                TimeUnit::Millisecond => 1,
                TimeUnit::Microsecond => 2,
                TimeUnit::Nanosecond => 3,
            };
            let s = b.start_table();
            b.push_slot::<i16>(4, unit, 0);
            (10, b.end_table(s).as_union_value())
        }
        DataType::Decimal128(p, s) => {
            let t = b.start_table();
            b.push_slot::<i32>(4, *p as i32, 0);
            b.push_slot::<i32>(6, *s as i32, 0);
            (7, b.end_table(t).as_union_value())
        }
        other => return Err(QueryError::Type(name.to_string(), other.to_string())),
    })
}

/// The body of a QueryData request for `fields` (in result order), no filter (`and` of
/// nothing), built in the SDK's order so the bytes equal its own.
pub fn request(fields: &[Field]) -> Result<Vec<u8>, QueryError> {
    let mut b = FlatBufferBuilder::new();
    let source_name = b.create_string("");
    let mut built = Vec::with_capacity(fields.len());
    for f in fields {
        let name = b.create_string(f.name());
        let (tag, ty) = field_type(&mut b, f.name(), f.data_type())?;
        let s = b.start_table();
        b.push_slot_always(4, name);
        b.push_slot::<bool>(6, f.is_nullable(), false);
        b.push_slot::<u8>(8, tag, 0);
        b.push_slot_always(10, ty);
        built.push(b.end_table(s));
    }
    let fields_vec = b.create_vector(&built);
    let s = b.start_table();
    b.push_slot_always(6, fields_vec);
    let schema = b.end_table(s);
    let and = b.create_string("and");
    let no_args: WIPOffset<flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<()>>> =
        b.create_vector::<WIPOffset<()>>(&[]);
    let s = b.start_table();
    b.push_slot_always(4, and);
    b.push_slot_always(6, no_args);
    let call = b.end_table(s);
    let s = b.start_table();
    b.push_slot::<u8>(4, 3, 0);
    b.push_slot_always(6, call);
    let filter = b.end_table(s);
    let mut indexes = Vec::with_capacity(fields.len());
    for i in 0..fields.len() {
        let s = b.start_table();
        b.push_slot::<u32>(4, i as u32, 0);
        indexes.push(b.end_table(s));
    }
    let projection = b.create_vector(&indexes);
    let s = b.start_table();
    b.push_slot_always(6, source_name);
    b.push_slot_always(10, schema);
    b.push_slot_always(8, filter);
    b.push_slot_always(12, projection);
    let source = b.end_table(s);
    let s = b.start_table();
    b.push_slot::<u8>(4, 9, 0);
    b.push_slot_always(6, source);
    let relation = b.end_table(s);
    b.finish_minimal(relation);
    Ok(b.finished_data().to_vec())
}

/// The column names a QueryData request selects, in result order (the simulator reads
/// requests with this; types come from the table).
pub fn requested_names(body: &[u8]) -> Result<Vec<String>, QueryError> {
    let bad = |e: super::wire::FlatbufferError| QueryError::Malformed(e.to_string());
    let relation = super::wire::Table::root(body).map_err(bad)?;
    if relation.u8(0).map_err(bad)? != 9 {
        return Err(QueryError::Malformed("the relation is not a Source".into()));
    }
    let source = relation
        .table(1)
        .map_err(bad)?
        .ok_or_else(|| QueryError::Malformed("no source".into()))?;
    let filter = source
        .table(2)
        .map_err(bad)?
        .ok_or_else(|| QueryError::Malformed("no filter".into()))?;
    if filter.u8(0).map_err(bad)? != 3 {
        return Err(QueryError::Malformed("the filter is not a call".into()));
    }
    let schema = source
        .table(3)
        .map_err(bad)?
        .ok_or_else(|| QueryError::Malformed("no schema".into()))?;
    let fields = schema.tables(1).map_err(bad)?;
    let projection = source.tables(4).map_err(bad)?;
    if projection.len() != fields.len() {
        return Err(QueryError::Malformed(format!(
            "{} projected of {} fields",
            projection.len(),
            fields.len()
        )));
    }
    fields
        .iter()
        .map(|f| {
            f.string(0)
                .map_err(bad)?
                .ok_or_else(|| QueryError::Malformed("a field without a name".into()))
        })
        .collect()
}

/// The `tabular-start-row-id-{i}` headers of a request with these cursors.
pub fn cursor_headers(cursors: &[u64]) -> Vec<(String, String)> {
    cursors
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("tabular-start-row-id-{i}"), format!("{i},{c}")))
        .collect()
}

/// One answer read: the pages it carried (a batch of the requested fields each) and the
/// new cursor of each sub-split that finished a page.
#[derive(Debug, Default)]
pub struct Answer {
    pub pages: Vec<RecordBatch>,
    pub cursors: HashMap<u32, u64>,
}

/// Per sub-split stream: the columns received for the page in progress, the message bytes
/// of the column in progress.
#[derive(Default)]
struct Stream {
    columns: Vec<ArrayRef>,
    message: Vec<u8>,
}

fn take<'a>(buf: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], QueryError> {
    if buf.len() < n {
        return Err(QueryError::Truncated(what));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

fn u32_le(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

/// The encapsulated Arrow IPC message at the head of `buf` (`[FF FF FF FF] len metadata
/// body`) and its metadata length (0: end of stream).
pub fn message(buf: &[u8]) -> Result<(&[u8], usize), QueryError> {
    let mut rest = buf;
    let mut head = take(&mut rest, 4, "message length")?;
    let mut prefix = 4;
    if u32_le(head) == 0xFFFF_FFFF {
        head = take(&mut rest, 4, "message length")?;
        prefix = 8;
    }
    let len = u32_le(head) as usize;
    let mut body_len = 0usize;
    if len > 0 {
        let meta = take(&mut rest, len, "message metadata")?;
        let msg = arrow_ipc::root_as_message(meta)
            .map_err(|e| QueryError::Malformed(format!("IPC message: {e}")))?;
        body_len = usize::try_from(msg.bodyLength())
            .map_err(|_| QueryError::Malformed("negative body length".into()))?;
        take(&mut rest, body_len, "message body")?;
    }
    Ok((&buf[..prefix + len + body_len], len))
}

/// An answer carrying `page` on sub-split `id` with cursor `next` (one IPC stream per
/// column, a frame per message), without the completion marker: what the simulator sends.
pub fn encode_page(page: &RecordBatch, id: u32, next: u64) -> Result<Vec<u8>, QueryError> {
    let mut out = Vec::new();
    for (i, f) in page.schema().fields().iter().enumerate() {
        let one = RecordBatch::try_new(
            Arc::new(Schema::new(vec![f.as_ref().clone()])),
            vec![page.column(i).clone()],
        )
        .map_err(|e| QueryError::Malformed(e.to_string()))?;
        let stream =
            super::wire::ipc_stream(&one).map_err(|e| QueryError::Malformed(e.to_string()))?;
        let mut rest = &stream[..];
        while !rest.is_empty() {
            let (m, _) = message(rest)?;
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&next.to_le_bytes());
            out.extend_from_slice(m);
            rest = &rest[m.len()..];
        }
    }
    Ok(out)
}

/// The end of a completed answer.
pub fn completed() -> [u8; 4] {
    COMPLETED.to_le_bytes()
}

/// Read a whole answer body for a request of `fields` (§2.4, §2.5): columns are taken by
/// position with the requested types.
pub fn parse(body: &[u8], fields: &[Field]) -> Result<Answer, QueryError> {
    let schema = Arc::new(Schema::new(fields.to_vec()));
    let mut streams: HashMap<u32, Stream> = HashMap::new();
    let mut out = Answer::default();
    let mut buf = body;
    loop {
        if buf.is_empty() {
            // EOF between frames: fine when nothing is half received.
            if streams
                .values()
                .any(|s| !s.columns.is_empty() || !s.message.is_empty())
            {
                return Err(QueryError::Truncated("a page was cut off"));
            }
            return Ok(out);
        }
        let id = u32_le(take(&mut buf, 4, "stream id")?);
        match id {
            KEEP_ALIVE => continue,
            COMPLETED => return Ok(out),
            FAILED => {
                let code = u64::from_le_bytes(
                    take(&mut buf, 8, "error code")?
                        .try_into()
                        .expect("8 bytes"),
                );
                return Err(QueryError::Failed(code));
            }
            _ => {}
        }
        if id >= SUBSPLITS {
            return Err(QueryError::Malformed(format!("stream id {id}")));
        }
        let next = u64::from_le_bytes(take(&mut buf, 8, "row id")?.try_into().expect("8 bytes"));
        let (whole, len) = message(buf)?;
        buf = &buf[whole.len()..];
        let s = streams.entry(id).or_default();
        s.message.extend_from_slice(whole);
        if len != 0 {
            continue;
        }
        // End of one column's IPC stream.
        let bytes = std::mem::take(&mut s.message);
        let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(|e| QueryError::Malformed(format!("IPC stream: {e}")))?;
        // Usually one column per stream (§2.5); a stream may carry several.
        let mut cols: Vec<Vec<ArrayRef>> = vec![Vec::new(); reader.schema().fields().len()];
        for batch in reader {
            let batch = batch.map_err(|e| QueryError::Malformed(format!("IPC stream: {e}")))?;
            for (i, c) in batch.columns().iter().enumerate() {
                cols[i].push(c.clone());
            }
        }
        for parts in cols {
            let at = s.columns.len();
            let Some(f) = fields.get(at) else {
                return Err(QueryError::Malformed("more columns than requested".into()));
            };
            let col = if parts.is_empty() {
                arrow_array::new_empty_array(f.data_type())
            } else {
                let refs: Vec<&dyn arrow_array::Array> = parts.iter().map(|a| a.as_ref()).collect();
                arrow_select::concat::concat(&refs)
                    .map_err(|e| QueryError::Malformed(format!("column {}: {e}", f.name())))?
            };
            s.columns.push(retype(col, f)?);
        }
        if s.columns.len() == fields.len() {
            let columns = std::mem::take(&mut s.columns);
            let page = RecordBatch::try_new(schema.clone(), columns)
                .map_err(|e| QueryError::Malformed(format!("page: {e}")))?;
            out.pages.push(page);
            out.cursors.insert(id, next);
        }
    }
}

/// A received column given the requested field's type (same physical layout: a missing
/// time zone, another name).
fn retype(col: ArrayRef, f: &Field) -> Result<ArrayRef, QueryError> {
    if col.data_type() == f.data_type() {
        return Ok(col);
    }
    let data = col
        .to_data()
        .into_builder()
        .data_type(f.data_type().clone());
    data.build()
        .map(arrow_array::make_array)
        .map_err(|e| QueryError::Malformed(format!("column {}: {e}", f.name())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray, UInt64Array};
    use sha2::Digest;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    /// The SDK's bytes (notes §2.3): one nullable `a int64`, no `$row_id`.
    #[test]
    fn the_request_equals_the_sdks_bytes() {
        let sdk = hex(
            "0c00000008000a0009000400080000001400000000090e0014000000100008000c0004000e000000100000002400000054000000980000000100000008000000
             040004000400000008000c000b00040008000000100000000000000308000c00080004000800000008000000080000000000000003000000616e640008000800
             00000400080000000400000001000000100000000c0010000c000b000a0004000c00000014000000000002011800000008000c00080007000800000000000001
             4000000001000000610000000000000000000000",
        );
        assert_eq!(sdk.len(), 212);
        let got = request(&[Field::new("a", DataType::Int64, true)]).unwrap();
        assert_eq!(got, sdk);
        let four = request(&[
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new(ROW_ID, DataType::UInt64, true),
        ])
        .unwrap();
        assert_eq!(four.len(), 388);
        assert_eq!(
            format!("{:x}", sha2::Sha256::digest(&four)),
            "7178c2b7d5edcaf87fe8b2e201c1c7169aa97a0f167a7ca4ffbb8a025921468c"
        );
        assert_eq!(
            requested_names(&four).unwrap(),
            ["id", "name", "ts", ROW_ID]
        );
        assert!(requested_names(&four[..100]).is_err());
        assert!(matches!(
            request(&[Field::new("f", DataType::Float32, true)]),
            Err(QueryError::Type(..))
        ));
    }

    fn fields() -> Vec<Field> {
        vec![
            Field::new("topic", DataType::Utf8, true),
            Field::new("next", DataType::Int64, true),
            Field::new(ROW_ID, DataType::UInt64, true),
        ]
    }

    fn page(topics: &[&str], next: &[i64], ids: &[u64]) -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(fields())),
            vec![
                Arc::new(StringArray::from(topics.to_vec())),
                Arc::new(Int64Array::from(next.to_vec())),
                Arc::new(UInt64Array::from(ids.to_vec())),
            ],
        )
        .unwrap()
    }

    #[test]
    fn pages_interleaved_with_keep_alives_are_reassembled() {
        let a = page(&["t"], &[10], &[0]);
        let b = page(&["u", "v"], &[20, 30], &[1, 2]);
        let mut body = Vec::new();
        body.extend_from_slice(&KEEP_ALIVE.to_le_bytes());
        body.extend(encode_page(&a, 0, DONE).unwrap());
        body.extend_from_slice(&KEEP_ALIVE.to_le_bytes());
        body.extend(encode_page(&b, 2, 77).unwrap());
        body.extend_from_slice(&completed());
        let got = parse(&body, &fields()).unwrap();
        assert_eq!(got.pages, vec![a.clone(), b]);
        assert_eq!(got.cursors, HashMap::from([(0, DONE), (2, 77)]));
        // EOF at a frame boundary ends quietly; inside a page it is an error.
        let quiet = encode_page(&a, 1, DONE).unwrap();
        assert_eq!(parse(&quiet, &fields()).unwrap().pages, vec![a.clone()]);
        for cut in [3, 13, quiet.len() / 2, quiet.len() - 1] {
            assert!(
                parse(&quiet[..cut], &fields()).is_err(),
                "cut at {cut} of {}",
                quiet.len()
            );
        }
    }

    #[test]
    fn a_failure_frame_is_an_error_with_its_code() {
        let mut body = encode_page(&page(&["t"], &[1], &[0]), 0, DONE).unwrap();
        body.extend_from_slice(&FAILED.to_le_bytes());
        body.extend_from_slice(&42u64.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(parse(&body, &fields()).unwrap_err(), QueryError::Failed(42));
        let mut bad = Vec::new();
        bad.extend_from_slice(&9u32.to_le_bytes());
        assert!(parse(&bad, &fields()).is_err());
    }
}
