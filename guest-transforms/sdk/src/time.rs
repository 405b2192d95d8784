//! Timestamp parsing: ISO 8601 text and OTLP nanoseconds, to microseconds since the epoch (UTC).

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn digits(&mut self, n: usize) -> Option<u32> {
        let s = self.b.get(self.i..self.i + n)?;
        let mut v = 0u32;
        for &c in s {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + (c - b'0') as u32;
        }
        self.i += n;
        Some(v)
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn done(&self) -> bool {
        self.i == self.b.len()
    }
}

/// Parse an ISO 8601 timestamp into microseconds since the Unix epoch.
///
/// Accepts `YYYY-MM-DD`, optionally followed by `T` (or a space) and `HH:MM[:SS[.fraction]]`,
/// optionally followed by `Z`, `±HH:MM`, `±HHMM` or `±HH`. No offset means UTC. Fractions
/// beyond microseconds are truncated. Returns `None` for anything else.
pub fn parse_iso8601_micros(s: &str) -> Option<i64> {
    let mut c = Cursor {
        b: s.trim().as_bytes(),
        i: 0,
    };
    let year = c.digits(4)? as i64;
    if !c.eat(b'-') {
        return None;
    }
    let month = c.digits(2)?;
    if !c.eat(b'-') {
        return None;
    }
    let day = c.digits(2)?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let mut secs_of_day = 0i64;
    let mut micros = 0i64;
    let mut offset_secs = 0i64;
    if !c.done() {
        if !(c.eat(b'T') || c.eat(b't') || c.eat(b' ')) {
            return None;
        }
        let h = c.digits(2)?;
        if !c.eat(b':') {
            return None;
        }
        let mi = c.digits(2)?;
        let mut sec = 0;
        if c.eat(b':') {
            sec = c.digits(2)?;
            if c.eat(b'.') || c.eat(b',') {
                let mut n = 0;
                while let Some(d) = c.peek().filter(u8::is_ascii_digit) {
                    if n < 6 {
                        micros = micros * 10 + (d - b'0') as i64;
                    }
                    n += 1;
                    c.i += 1;
                }
                if n == 0 {
                    return None;
                }
                for _ in n..6 {
                    micros *= 10;
                }
            }
        }
        if h > 23 || mi > 59 || sec > 59 {
            return None;
        }
        secs_of_day = (h * 3600 + mi * 60 + sec) as i64;
        if c.eat(b'Z') || c.eat(b'z') {
        } else if let Some(sign @ (b'+' | b'-')) = c.peek() {
            c.i += 1;
            let oh = c.digits(2)?;
            let om = if c.eat(b':') {
                c.digits(2)?
            } else {
                c.digits(2).unwrap_or(0)
            };
            if oh > 23 || om > 59 {
                return None;
            }
            let off = (oh * 3600 + om * 60) as i64;
            offset_secs = if sign == b'+' { off } else { -off };
        }
        if !c.done() {
            return None;
        }
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + secs_of_day - offset_secs;
    secs.checked_mul(1_000_000)?.checked_add(micros)
}

/// OTLP nanoseconds to microseconds; 0 means "unset" in OTLP and yields `None`.
pub fn nanos_to_micros(nanos: u64) -> Option<i64> {
    if nanos == 0 {
        None
    } else {
        Some((nanos / 1_000) as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        // 2025-10-14T16:01:47.596379 UTC
        let base = 1_760_457_707_596_379;
        assert_eq!(
            parse_iso8601_micros("2025-10-14T16:01:47.596379"),
            Some(base)
        );
        assert_eq!(
            parse_iso8601_micros("2025-10-14T16:01:47.596379Z"),
            Some(base)
        );
        assert_eq!(
            parse_iso8601_micros("2025-10-14 16:01:47.596379"),
            Some(base)
        );
        assert_eq!(
            parse_iso8601_micros("2025-10-14T18:01:47.596379+02:00"),
            Some(base)
        );
        assert_eq!(
            parse_iso8601_micros("2025-10-14T15:01:47.596379-0100"),
            Some(base)
        );
        assert_eq!(
            parse_iso8601_micros("2025-10-14T16:01:47.596379123Z"),
            Some(base)
        );
        assert_eq!(
            parse_iso8601_micros("2025-10-14T16:01:47.5Z"),
            Some(base - 96_379)
        );
        assert_eq!(
            parse_iso8601_micros("2025-10-14T16:01Z"),
            Some(base - 47_596_379)
        );
        assert_eq!(parse_iso8601_micros("1970-01-01"), Some(0));
        assert_eq!(
            parse_iso8601_micros("1969-12-31T23:59:59Z"),
            Some(-1_000_000)
        );
        assert_eq!(
            parse_iso8601_micros("2024-02-29T00:00:00"),
            Some(1_709_164_800_000_000)
        );
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "yesterday",
            "2025-13-01",
            "2025-02-30",
            "2023-02-29",
            "2025-10-14T25:00:00",
            "2025-10-14T16:01:47.",
            "2025-10-14T16:01:47Zjunk",
            "2025-10-14X16:01",
            "1760457707",
        ] {
            assert_eq!(parse_iso8601_micros(s), None, "{s}");
        }
    }

    #[test]
    fn nanos() {
        assert_eq!(nanos_to_micros(0), None);
        assert_eq!(nanos_to_micros(1_500_999), Some(1_500));
    }
}
