//! AWS SigV4 as the VAST SDK configures it (shared/vast-tabular-api.md §3): region `""`,
//! service `s3`, only `host;x-amz-date` signed, the body's SHA-256 as the payload hash, and
//! `x-amz-content-sha256` sent unsigned. The crypto is the `aws-sigv4` crate's.

use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use sha2::{Digest, Sha256};
use std::fmt;
use std::time::SystemTime;

/// Access key and secret. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key: String,
    secret_key: String,
}

impl Credentials {
    /// Credentials from their parts.
    pub fn new(access_key: impl Into<String>, secret_key: impl Into<String>) -> Self {
        Credentials {
            access_key: access_key.into(),
            secret_key: secret_key.into(),
        }
    }

    /// The secret (for signing only).
    pub fn secret(&self) -> &str {
        &self.secret_key
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    use std::fmt::Write;
    Sha256::digest(data)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The headers a signed request carries: `authorization`, `x-amz-date`, `x-amz-content-sha256`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub authorization: String,
    pub amz_date: String,
    pub content_sha256: String,
    pub signature: String,
}

/// Sign `method path_and_query` for `host` (the `Host` header value) with `body`, at `time`.
pub fn sign_request(
    creds: &Credentials,
    method: &str,
    host: &str,
    path_and_query: &str,
    body: &[u8],
    time: SystemTime,
) -> Result<Signed, String> {
    let identity = aws_credential_types::Credentials::new(
        creds.access_key.clone(),
        creds.secret_key.clone(),
        None,
        None,
        "vast-processor",
    )
    .into();
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    settings.payload_checksum_kind = PayloadChecksumKind::NoHeader;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("")
        .name("s3")
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| format!("signing parameters: {e}"))?
        .into();
    // The URI must be absolute for the signer; only its path and query are used.
    let uri = format!("http://{host}{path_and_query}");
    let request = SignableRequest::new(
        method,
        uri,
        std::iter::once(("host", host)),
        SignableBody::Bytes(body),
    )
    .map_err(|e| format!("request cannot be signed: {e}"))?;
    let (instructions, signature) = sign(request, &params)
        .map_err(|e| format!("signing failed: {e}"))?
        .into_parts();
    let mut authorization = String::new();
    let mut amz_date = String::new();
    for (name, value) in instructions.headers() {
        match name.to_ascii_lowercase().as_str() {
            "authorization" => authorization = value.to_string(),
            "x-amz-date" => amz_date = value.to_string(),
            _ => {}
        }
    }
    Ok(Signed {
        authorization,
        amz_date,
        content_sha256: sha256_hex(body),
        signature,
    })
}

/// The `Host` header value for an endpoint: `host`, or `host:port` unless the port is 80 or
/// 443 (or absent) — as the SDK computes it.
pub fn host_header(host: &str, port: Option<u16>) -> String {
    match port {
        None | Some(80) | Some(443) => host.to_string(),
        Some(p) => format!("{host}:{p}"),
    }
}

/// Parse `x-amz-date` (`YYYYMMDDTHHMMSSZ`) into a time.
pub fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let date = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{se:02}Z");
    let micros = vast_transform_sdk::time::parse_iso8601_micros(&date)?;
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(u64::try_from(micros).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector_creds() -> Credentials {
        Credentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    }

    fn t2024() -> SystemTime {
        parse_amz_date("20240101T000000Z").unwrap()
    }

    #[test]
    fn test_vector_version_probe() {
        let s = sign_request(
            &vector_creds(),
            "GET",
            "127.0.0.1:9090",
            "/?transaction",
            b"",
            t2024(),
        )
        .unwrap();
        assert_eq!(
            s.signature,
            "8738e28cf1c2ab7b8960ebb2b4bb729c61720c94dd8afe5c5d1c625b8f4e0ddd"
        );
        assert_eq!(s.amz_date, "20240101T000000Z");
        assert_eq!(
            s.content_sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            s.authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101//s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=8738e28cf1c2ab7b8960ebb2b4bb729c61720c94dd8afe5c5d1c625b8f4e0ddd"
        );
    }

    #[test]
    fn test_vector_create_schema() {
        let body = hex_bytes("0c000000000006000800040006000000040000000000000000000000");
        let s = sign_request(
            &vector_creds(),
            "POST",
            "127.0.0.1:9090",
            "/vastdb/observability?schema",
            &body,
            t2024(),
        )
        .unwrap();
        assert_eq!(
            s.content_sha256,
            "bb63cc9750c18b9e85b4776fc6804758cec5ea76da51666de007c6c5b51761d6"
        );
        assert_eq!(
            s.signature,
            "c24a201e9051b2ca1f3e44f340835e54ffd592e64520df5485ffdfdd0c2e29c9"
        );
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let d = format!("{:?}", vector_creds());
        assert!(!d.contains("wJalr") && d.contains("AKIDEXAMPLE"), "{d}");
    }

    #[test]
    fn host_header_drops_default_ports() {
        assert_eq!(host_header("vast", Some(80)), "vast");
        assert_eq!(host_header("vast", Some(443)), "vast");
        assert_eq!(host_header("vast", None), "vast");
        assert_eq!(host_header("127.0.0.1", Some(9090)), "127.0.0.1:9090");
    }

    fn hex_bytes(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
