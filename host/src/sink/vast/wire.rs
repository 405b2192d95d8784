//! Wire formats of the tabular API: the few flatbuffer messages the ingest path uses (built
//! with the `flatbuffers` crate, read with a small bounds-checked reader so a malformed
//! answer is an error, never undefined behaviour), and Arrow IPC schema messages and streams.

use arrow_array::RecordBatch;
use arrow_ipc::writer::{
    DictionaryTracker, IpcDataGenerator, IpcWriteOptions, StreamWriter, write_message,
};
use arrow_schema::Schema;
use flatbuffers::FlatBufferBuilder;

/// One entry of a list response (`ObjectDetails`): the fields the exporter reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectDetails {
    pub name: String,
    pub properties: String,
    pub handle: String,
    pub num_rows: u64,
}

/// A flatbuffer that failed to parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed flatbuffer: {0}")]
pub struct FlatbufferError(pub String);

/// A bounds-checked view of a flatbuffer table.
#[derive(Clone, Copy)]
pub struct Table<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn u16_at(buf: &[u8], pos: usize) -> Result<u16, FlatbufferError> {
    buf.get(pos..pos + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or_else(|| FlatbufferError(format!("u16 at {pos} out of bounds")))
}

fn u32_at(buf: &[u8], pos: usize) -> Result<u32, FlatbufferError> {
    buf.get(pos..pos + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| FlatbufferError(format!("u32 at {pos} out of bounds")))
}

fn u64_at(buf: &[u8], pos: usize) -> Result<u64, FlatbufferError> {
    buf.get(pos..pos + 8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| FlatbufferError(format!("u64 at {pos} out of bounds")))
}

impl<'a> Table<'a> {
    /// The root table of a buffer finished without a file identifier.
    pub fn root(buf: &'a [u8]) -> Result<Self, FlatbufferError> {
        let pos = u32_at(buf, 0)? as usize;
        Table::at(buf, pos)
    }

    fn at(buf: &'a [u8], pos: usize) -> Result<Self, FlatbufferError> {
        let t = Table { buf, pos };
        t.vtable()?;
        Ok(t)
    }

    fn vtable(&self) -> Result<(usize, usize), FlatbufferError> {
        let soffset = u32_at(self.buf, self.pos)? as i32;
        let vt = (self.pos as i64 - soffset as i64) as usize;
        let len = u16_at(self.buf, vt)? as usize;
        Ok((vt, len))
    }

    /// Byte position of field `slot`, or `None` when absent.
    fn field(&self, slot: usize) -> Result<Option<usize>, FlatbufferError> {
        let (vt, len) = self.vtable()?;
        let entry = 4 + 2 * slot;
        if entry + 2 > len {
            return Ok(None);
        }
        let off = u16_at(self.buf, vt + entry)? as usize;
        Ok((off != 0).then_some(self.pos + off))
    }

    fn deref(&self, at: usize) -> Result<usize, FlatbufferError> {
        Ok(at + u32_at(self.buf, at)? as usize)
    }

    /// A string field (`None` when absent).
    pub fn string(&self, slot: usize) -> Result<Option<String>, FlatbufferError> {
        let Some(at) = self.field(slot)? else {
            return Ok(None);
        };
        let s = self.deref(at)?;
        let len = u32_at(self.buf, s)? as usize;
        let bytes = self
            .buf
            .get(s + 4..s + 4 + len)
            .ok_or_else(|| FlatbufferError(format!("string at {s} out of bounds")))?;
        String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|e| FlatbufferError(format!("string at {s}: {e}")))
    }

    /// A u64 field (0 when absent).
    pub fn u64(&self, slot: usize) -> Result<u64, FlatbufferError> {
        match self.field(slot)? {
            Some(at) => u64_at(self.buf, at),
            None => Ok(0),
        }
    }

    /// A table field (a union's value too), `None` when absent.
    pub fn table(&self, slot: usize) -> Result<Option<Table<'a>>, FlatbufferError> {
        match self.field(slot)? {
            Some(at) => Table::at(self.buf, self.deref(at)?).map(Some),
            None => Ok(None),
        }
    }

    /// A u8 field (0 when absent).
    pub fn u8(&self, slot: usize) -> Result<u8, FlatbufferError> {
        match self.field(slot)? {
            Some(at) => self
                .buf
                .get(at)
                .copied()
                .ok_or_else(|| FlatbufferError(format!("u8 at {at} out of bounds"))),
            None => Ok(0),
        }
    }

    /// A vector-of-tables field (empty when absent).
    pub fn tables(&self, slot: usize) -> Result<Vec<Table<'a>>, FlatbufferError> {
        let Some(at) = self.field(slot)? else {
            return Ok(Vec::new());
        };
        let v = self.deref(at)?;
        let n = u32_at(self.buf, v)? as usize;
        if n > self.buf.len() / 4 {
            return Err(FlatbufferError(format!("vector of {n} entries cannot fit")));
        }
        (0..n)
            .map(|i| {
                let elem = v + 4 + 4 * i;
                Table::at(self.buf, self.deref(elem)?)
            })
            .collect()
    }
}

fn object_details(t: &Table<'_>) -> Result<ObjectDetails, FlatbufferError> {
    Ok(ObjectDetails {
        name: t.string(0)?.unwrap_or_default(),
        properties: t.string(1)?.unwrap_or_default(),
        handle: t.string(2)?.unwrap_or_default(),
        num_rows: t.u64(3)?,
    })
}

/// `ListSchemasResponse` (slot 0 bucket_name, 1 schemas) → (bucket name, schemas).
pub fn parse_list_schemas(buf: &[u8]) -> Result<(String, Vec<ObjectDetails>), FlatbufferError> {
    let root = Table::root(buf)?;
    let bucket = root.string(0)?.unwrap_or_default();
    let items = root
        .tables(1)?
        .iter()
        .map(object_details)
        .collect::<Result<_, _>>()?;
    Ok((bucket, items))
}

/// `ListTablesResponse` (0 bucket_name, 1 schema_name, 2 tables) → tables.
pub fn parse_list_tables(buf: &[u8]) -> Result<Vec<ObjectDetails>, FlatbufferError> {
    let root = Table::root(buf)?;
    root.tables(2)?.iter().map(object_details).collect()
}

/// `CreateSchemaRequest { properties: "" }`.
pub fn create_schema_request() -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let props = b.create_string("");
    let start = b.start_table();
    b.push_slot_always(4, props);
    let t = b.end_table(start);
    b.finish_minimal(t);
    b.finished_data().to_vec()
}

fn build_list(bucket: &str, schema: Option<&str>, items: &[ObjectDetails]) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let mut offsets = Vec::with_capacity(items.len());
    for it in items {
        let name = b.create_string(&it.name);
        let props = b.create_string(&it.properties);
        let handle = b.create_string(&it.handle);
        let start = b.start_table();
        b.push_slot_always(4, name);
        b.push_slot_always(6, props);
        b.push_slot_always(8, handle);
        b.push_slot(10, it.num_rows, 0);
        offsets.push(b.end_table(start));
    }
    let vec = b.create_vector(&offsets);
    let bucket = b.create_string(bucket);
    let schema = schema.map(|s| b.create_string(s));
    let start = b.start_table();
    b.push_slot_always(4, bucket);
    match schema {
        Some(s) => {
            b.push_slot_always(6, s);
            b.push_slot_always(8, vec);
        }
        None => b.push_slot_always(6, vec),
    }
    let t = b.end_table(start);
    b.finish_minimal(t);
    b.finished_data().to_vec()
}

/// `ListSchemasResponse` (for the simulator).
pub fn list_schemas_response(bucket: &str, items: &[ObjectDetails]) -> Vec<u8> {
    build_list(bucket, None, items)
}

/// `ListTablesResponse` (for the simulator).
pub fn list_tables_response(bucket: &str, schema: &str, items: &[ObjectDetails]) -> Vec<u8> {
    build_list(bucket, Some(schema), items)
}

/// One encapsulated Arrow IPC Schema message, no end-of-stream marker (create table, add
/// columns).
pub fn schema_message(schema: &Schema) -> Vec<u8> {
    let options = IpcWriteOptions::default();
    let generator = IpcDataGenerator::default();
    let mut tracker = DictionaryTracker::new(false);
    let encoded = generator.schema_to_bytes_with_dictionary_tracker(schema, &mut tracker, &options);
    let mut out = Vec::new();
    write_message(&mut out, encoded, &options).expect("writing to a Vec cannot fail");
    out
}

/// An Arrow IPC stream: schema, the batch, end-of-stream (insert body; list-columns answer).
pub fn ipc_stream(batch: &RecordBatch) -> Result<Vec<u8>, arrow_schema::ArrowError> {
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, &batch.schema())?;
    if batch.num_columns() > 0 {
        w.write(batch)?;
    }
    w.finish()?;
    drop(w);
    Ok(out)
}

/// The schema at the head of an IPC stream (or of a lone schema message).
pub fn read_schema(bytes: &[u8]) -> Result<Schema, arrow_schema::ArrowError> {
    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    Ok(reader.schema().as_ref().clone())
}

/// Every batch of an IPC stream.
pub fn read_batches(bytes: &[u8]) -> Result<Vec<RecordBatch>, arrow_schema::ArrowError> {
    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    reader.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Table as OutTable;

    #[test]
    fn create_schema_request_has_an_empty_properties_string() {
        let b = create_schema_request();
        assert_eq!(
            Table::root(&b).unwrap().string(0).unwrap().as_deref(),
            Some("")
        );
        // The SDK's own bytes parse the same way.
        let sdk: Vec<u8> = (0..28)
            .map(|i| {
                u8::from_str_radix(
                    &"0c000000000006000800040006000000040000000000000000000000"[2 * i..2 * i + 2],
                    16,
                )
                .unwrap()
            })
            .collect();
        assert_eq!(
            Table::root(&sdk).unwrap().string(0).unwrap().as_deref(),
            Some("")
        );
    }

    #[test]
    fn list_responses_round_trip() {
        let items = vec![
            ObjectDetails {
                name: "events".into(),
                properties: "".into(),
                handle: "7".into(),
                num_rows: 42,
            },
            ObjectDetails {
                name: "metrics".into(),
                ..Default::default()
            },
        ];
        let (bucket, got) = parse_list_schemas(&list_schemas_response("b", &items)).unwrap();
        assert_eq!((bucket.as_str(), got), ("b", items.clone()));
        assert_eq!(
            parse_list_tables(&list_tables_response("b", "s", &items)).unwrap(),
            items
        );
        assert!(
            parse_list_tables(&list_tables_response("b", "s", &[]))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_crash() {
        for bad in [
            &b""[..],
            b"\xff\xff\xff\xff",
            b"\x04\0\0\0\x10\0\0\0",
            &[0u8; 3],
        ] {
            assert!(
                parse_list_schemas(bad).is_err() || parse_list_schemas(bad).unwrap().1.is_empty()
            );
        }
        let mut b = list_tables_response(
            "b",
            "s",
            &[ObjectDetails {
                name: "x".into(),
                ..Default::default()
            }],
        );
        b.truncate(b.len() - 6);
        assert!(parse_list_tables(&b).is_err());
    }

    #[test]
    fn schema_messages_and_streams_round_trip() {
        let schema = crate::batch::schema(OutTable::Events, true);
        let msg = schema_message(&schema);
        assert_eq!(&msg[..4], &[0xff; 4], "continuation marker");
        assert_eq!(read_schema(&msg).unwrap(), *schema);
        let batch = RecordBatch::new_empty(schema.clone());
        let stream = ipc_stream(&batch).unwrap();
        assert!(
            stream.ends_with(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]),
            "end-of-stream marker"
        );
        assert_eq!(read_schema(&stream).unwrap(), *schema);
    }
}
