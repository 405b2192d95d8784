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
    let mut out = Vec::with_capacity(bytes.len() * 4);
    let mut reader = flate2::read::MultiGzDecoder::new(bytes);
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let n = reader
            .read(&mut chunk)
            .map_err(|e| format!("invalid gzip data: {e}"))?;
        if n == 0 {
            return Ok(Cow::Owned(out));
        }
        if out.len() + n > MAX_DECOMPRESSED {
            return Err(format!(
                "gzip payload decompresses to more than {} MiB; refused",
                MAX_DECOMPRESSED / (1024 * 1024)
            ));
        }
        out.extend_from_slice(&chunk[..n]);
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
    fn bomb_is_refused() {
        let g = gz(&vec![0u8; MAX_DECOMPRESSED + 10]);
        let err = maybe_gunzip(&g).unwrap_err();
        assert!(err.contains("refused"), "{err}");
    }
}
