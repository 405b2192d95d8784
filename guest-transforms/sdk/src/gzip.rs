//! Gzip detection and bounded decompression.

use std::borrow::Cow;
use std::io::Read;

/// Decompressed payloads larger than this are refused, so a gzip bomb cannot exhaust the
/// instance's memory (64 MiB by default; the buffer may grow to twice this while reading).
pub const MAX_DECOMPRESSED: usize = 16 * 1024 * 1024;

/// True when `bytes` start with the gzip magic number `1f 8b`.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b
}

/// Return `bytes` decompressed when they are gzip, unchanged otherwise.
pub fn maybe_gunzip(bytes: &[u8]) -> Result<Cow<'_, [u8]>, String> {
    if !is_gzip(bytes) {
        return Ok(Cow::Borrowed(bytes));
    }
    // Read straight into `out`, and from the slice itself (`bufread`): a zeroed 64 KiB
    // chunk and the `read::` decoder's zeroed 32 KiB buffer per message cost more than
    // inflating a typical OTLP export (BENCHMARKS.md). One byte past the limit tells a bomb
    // from a payload of exactly the limit.
    let mut out = Vec::with_capacity(bytes.len() * 4);
    flate2::bufread::MultiGzDecoder::new(bytes)
        .take(MAX_DECOMPRESSED as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("invalid gzip data: {e}"))?;
    if out.len() > MAX_DECOMPRESSED {
        return Err(format!(
            "gzip payload decompresses to more than {} MiB; refused",
            MAX_DECOMPRESSED / (1024 * 1024)
        ));
    }
    Ok(Cow::Owned(out))
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
}
