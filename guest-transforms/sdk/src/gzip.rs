//! Gzip detection and bounded decompression.
//!
//! The gzip framing (RFC 1952) is read here and the deflate data inflated with `zlib-rs`,
//! straight into the output buffer and with one decompressor state per thread. Building the
//! state per message (what `flate2`'s readers do) cost more than inflating a typical OTLP
//! export. zlib-rs rather than `miniz_oxide`: compiled to wasm it inflates the small
//! dynamic-Huffman members an OTLP exporter sends in ~8% fewer instructions per otel-metrics
//! message (BENCHMARKS.md, seventh round).

use std::borrow::Cow;
use std::cell::RefCell;
use zlib_rs::{Inflate, InflateFlush, Status};

/// Decompressed payloads larger than this are refused, so a gzip bomb cannot exhaust the
/// instance's memory (64 MiB by default; the buffer may grow to twice this while reading).
pub const MAX_DECOMPRESSED: usize = 16 * 1024 * 1024;

/// Deflate's largest window (2^15 bytes): gzip members may refer that far back.
const WINDOW_BITS: u8 = 15;

thread_local! {
    // A guest has one thread, and `reset` restarts the state for every member, so reuse
    // leaks nothing between messages. Made on first use, usually inside a batch: allocated
    // outside the per-batch arena, since it outlives the batch.
    static DECOMPRESSOR: RefCell<Inflate> =
        RefCell::new(crate::arena::outside(|| Inflate::new(false, WINDOW_BITS)));
}

/// True when `bytes` start with the gzip magic number `1f 8b`.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b
}

/// Return `bytes` decompressed when they are gzip (every member of a multi-member file,
/// CRC and size checked), unchanged otherwise.
pub fn maybe_gunzip(bytes: &[u8]) -> Result<Cow<'_, [u8]>, String> {
    if !is_gzip(bytes) {
        return Ok(Cow::Borrowed(bytes));
    }
    let mut out = Vec::new();
    let mut rest = bytes;
    DECOMPRESSOR.with_borrow_mut(|d| {
        while !rest.is_empty() {
            let data = &rest[header_len(rest)?..];
            let start = out.len();
            let used = inflate(d, data, &mut out)?;
            let trailer = data
                .get(used..used + 8)
                .ok_or("invalid gzip data: truncated trailer")?;
            let word = |i: usize| {
                u32::from_le_bytes([trailer[i], trailer[i + 1], trailer[i + 2], trailer[i + 3]])
            };
            if crc32fast::hash(&out[start..]) != word(0) {
                return Err("invalid gzip data: CRC mismatch".to_string());
            }
            if (out.len() - start) as u32 != word(4) {
                return Err("invalid gzip data: size mismatch".to_string());
            }
            rest = &data[used + 8..];
        }
        Ok(())
    })?;
    // Inflating stops one byte past the limit (in total, over all members); a payload that
    // ends exactly there is over the limit too.
    if out.len() > MAX_DECOMPRESSED {
        return Err(refused());
    }
    Ok(Cow::Owned(out))
}

fn refused() -> String {
    format!(
        "gzip payload decompresses to more than {} MiB; refused",
        MAX_DECOMPRESSED / (1024 * 1024)
    )
}

/// Length of the gzip member header at the start of `b` (RFC 1952 section 2.3).
fn header_len(b: &[u8]) -> Result<usize, String> {
    const FHCRC: u8 = 2;
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    let truncated = || "invalid gzip data: truncated header".to_string();
    if !is_gzip(b) {
        return Err("invalid gzip data: trailing bytes after the last member".into());
    }
    let fixed = b.get(..10).ok_or_else(truncated)?;
    if fixed[2] != 8 {
        return Err(format!(
            "invalid gzip data: compression method {} (only deflate is defined)",
            fixed[2]
        ));
    }
    let flags = fixed[3];
    if flags & 0xe0 != 0 {
        return Err("invalid gzip data: reserved header flags set".into());
    }
    let mut pos = 10;
    if flags & FEXTRA != 0 {
        let len = b.get(pos..pos + 2).ok_or_else(truncated)?;
        pos += 2 + usize::from(u16::from_le_bytes([len[0], len[1]]));
    }
    for field in [FNAME, FCOMMENT] {
        if flags & field != 0 {
            let text = b.get(pos..).ok_or_else(truncated)?;
            pos += memchr::memchr(0, text).ok_or_else(truncated)? + 1;
        }
    }
    if flags & FHCRC != 0 {
        pos += 2;
    }
    if pos > b.len() {
        return Err(truncated());
    }
    Ok(pos)
}

/// Inflate the raw deflate stream at the start of `input`, appending to `out` (whose total
/// length stays within [`MAX_DECOMPRESSED`]); the number of input bytes it took.
fn inflate(d: &mut Inflate, input: &[u8], out: &mut Vec<u8>) -> Result<usize, String> {
    // One byte past the limit tells a bomb from a payload of exactly it.
    let cap = MAX_DECOMPRESSED + 1;
    let start = out.len();
    d.reset(false);
    out.resize((start + input.len().saturating_mul(4).max(256)).min(cap), 0);
    loop {
        let (taken, pos) = (d.total_in() as usize, start + d.total_out() as usize);
        // `Finish` with room for the whole member inflates in one call and skips copying
        // the output into zlib's window; when the room runs out, the next call continues.
        let status = d.decompress(&input[taken..], &mut out[pos..], InflateFlush::Finish);
        let (taken, pos) = (d.total_in() as usize, start + d.total_out() as usize);
        match status {
            Ok(Status::StreamEnd) => {
                out.truncate(pos);
                return Ok(taken);
            }
            Ok(_) if pos == out.len() && out.len() < cap => {
                let grown = out.len().saturating_mul(2).min(cap);
                out.resize(grown, 0);
            }
            Ok(_) if pos == out.len() => return Err(refused()),
            Ok(_) => return Err("invalid gzip data: truncated deflate stream".into()),
            Err(e) => {
                let why = d.error_message().unwrap_or(e.as_str());
                return Err(format!("invalid gzip data: {why}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn plain_passes_through() {
        assert!(matches!(
            maybe_gunzip(b"abc").unwrap(),
            Cow::Borrowed(b"abc")
        ));
    }

    #[test]
    fn gzip_is_decompressed() {
        assert_eq!(maybe_gunzip(&gz(b"hello")).unwrap().as_ref(), b"hello");
    }

    #[test]
    fn truncated_gzip_is_an_error() {
        let g = gz(b"hello world hello world");
        assert!(maybe_gunzip(&g[..g.len() - 6]).is_err());
    }

    #[test]
    fn exactly_the_limit_is_accepted() {
        let g = gz(&vec![7u8; MAX_DECOMPRESSED]);
        assert_eq!(maybe_gunzip(&g).unwrap().len(), MAX_DECOMPRESSED);
    }

    #[test]
    fn members_over_the_limit_together_are_refused() {
        let mut g = gz(&vec![1u8; MAX_DECOMPRESSED / 2 + 1]);
        g.extend(gz(&vec![2u8; MAX_DECOMPRESSED / 2]));
        let err = maybe_gunzip(&g).unwrap_err();
        assert!(err.contains("refused"), "{err}");
        let mut g = gz(&vec![1u8; MAX_DECOMPRESSED / 2]);
        g.extend(gz(&vec![2u8; MAX_DECOMPRESSED / 2]));
        assert_eq!(maybe_gunzip(&g).unwrap().len(), MAX_DECOMPRESSED);
    }

    #[test]
    fn concatenated_members_are_all_read() {
        let mut g = gz(b"hello ");
        g.extend(gz(b"world"));
        assert_eq!(maybe_gunzip(&g).unwrap().as_ref(), b"hello world");
    }

    #[test]
    fn bomb_is_refused() {
        let g = gz(&vec![0u8; MAX_DECOMPRESSED + 10]);
        let err = maybe_gunzip(&g).unwrap_err();
        assert!(err.contains("refused"), "{err}");
    }

    #[test]
    fn optional_header_fields_are_skipped() {
        let mut e = flate2::GzBuilder::new()
            .filename("export.pb")
            .comment("from the collector")
            .extra(vec![1, 2, 3, 4])
            .write(Vec::new(), flate2::Compression::best());
        e.write_all(b"with every header field").unwrap();
        let mut g = e.finish().unwrap();
        assert_eq!(
            maybe_gunzip(&g).unwrap().as_ref(),
            b"with every header field"
        );
        // FHCRC: the header's own CRC16 (two bytes after the optional fields).
        g[3] |= 2;
        let data_start = 10 + 2 + 4 + b"export.pb\0".len() + b"from the collector\0".len();
        g.splice(data_start..data_start, [0xaa, 0xbb]);
        assert_eq!(
            maybe_gunzip(&g).unwrap().as_ref(),
            b"with every header field"
        );
    }

    #[test]
    fn damaged_members_are_errors_and_the_next_message_still_inflates() {
        let g = gz(b"the quick brown fox jumps over the lazy dog, twice: the quick brown fox");
        let n = g.len();
        let mut bad_crc = g.clone();
        bad_crc[n - 8] ^= 1;
        let mut bad_size = g.clone();
        bad_size[n - 1] ^= 1;
        let mut trailing = g.clone();
        trailing.extend_from_slice(b"xyz");
        let mut method = g.clone();
        method[2] = 7;
        let mut corrupt = g.clone();
        corrupt[10] = 0xff;
        for (bad, want) in [
            (bad_crc, "CRC"),
            (bad_size, "size"),
            (trailing, "trailing"),
            (method, "method"),
            (corrupt, "invalid gzip data"),
            (g[..5].to_vec(), "truncated"),
            (g[..n - 3].to_vec(), "truncated trailer"),
            (g[..n - 12].to_vec(), "truncated deflate stream"),
        ] {
            let err = maybe_gunzip(&bad).unwrap_err();
            assert!(err.contains(want), "{want}: {err}");
            // The per-thread decompressor starts clean after a failure.
            assert_eq!(maybe_gunzip(&gz(b"next")).unwrap().as_ref(), b"next");
        }
    }

    proptest::proptest! {
        /// Any data, split into any number of members at any level, comes back whole.
        #[test]
        fn round_trips_through_members(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20_000),
            cuts in proptest::collection::vec(0usize..20_000, 0..4),
            level in 0u32..10,
            repeat in 1usize..4,
        ) {
            let data: Vec<u8> = data.iter().copied().cycle().take(data.len() * repeat).collect();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.push(0);
            cuts.push(data.len());
            cuts.sort();
            let mut g = Vec::new();
            for w in cuts.windows(2) {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
                e.write_all(&data[w[0]..w[1]]).unwrap();
                g.extend(e.finish().unwrap());
            }
            let back = maybe_gunzip(&g).unwrap();
            proptest::prop_assert_eq!(back.as_ref(), &data[..]);
        }
    }
}
