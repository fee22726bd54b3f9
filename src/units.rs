//! Human-friendly sizes (`100K`, `8M`, `1G`, `1.5GiB`) and durations (`500ms`, `2s`, `1h`, `1h30m`).
//!
//! Sizes are binary (`K` = 1024). A bare number is bytes for sizes and seconds for durations. Errors say what
//! was wrong and show an accepted form, because these strings come from users (flags, config files).

use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {input:?}: {why} (examples: {examples})")]
pub struct ParseUnitError {
    what: &'static str,
    input: String,
    why: &'static str,
    examples: &'static str,
}

const SIZE_EXAMPLES: &str = "4096, 100K, 8M, 1.5G";
const DURATION_EXAMPLES: &str = "500ms, 2s, 10m, 1h30m";

fn size_err(input: &str, why: &'static str) -> ParseUnitError {
    ParseUnitError { what: "size", input: input.to_string(), why, examples: SIZE_EXAMPLES }
}

fn duration_err(input: &str, why: &'static str) -> ParseUnitError {
    ParseUnitError { what: "duration", input: input.to_string(), why, examples: DURATION_EXAMPLES }
}

/// A byte count parsed from a human string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl std::str::FromStr for ByteSize {
    type Err = ParseUnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_size(s).map(ByteSize)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_size(self.0))
    }
}

/// Parse `4096`, `100K`, `100KB`, `100KiB`, `8M`, `1.5G`, `2T` (binary multiples, case-insensitive).
pub fn parse_size(input: &str) -> Result<u64, ParseUnitError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(size_err(input, "empty"));
    }
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(size_err(input, "no number"));
    }
    let unit = unit.trim().to_ascii_lowercase();
    let mult: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(size_err(input, "unknown unit (use B, K, M, G or T)")),
    };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).ok_or_else(|| size_err(input, "too large"));
    }
    let f: f64 = num.parse().map_err(|_| size_err(input, "not a number"))?;
    let v = f * mult as f64;
    if !v.is_finite() || v >= u64::MAX as f64 {
        return Err(size_err(input, "too large"));
    }
    Ok(v.round() as u64)
}

/// Render a byte count compactly (`8M`, `1.5G`, `4097`), exact when it is a whole multiple.
pub fn format_size(n: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(1 << 40, "T"), (1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
    for (mult, suffix) in UNITS {
        if n >= mult {
            if n % mult == 0 {
                return format!("{}{suffix}", n / mult);
            }
            if n >= 10 * mult || (n * 10) % mult == 0 {
                return format!("{:.1}{suffix}", n as f64 / mult as f64);
            }
        }
    }
    n.to_string()
}

/// Parse `500ms`, `2s`, `1.5s`, `10m`, `1h`, `1h30m`, `7d`; a bare number means seconds.
pub fn parse_duration(input: &str) -> Result<Duration, ParseUnitError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(duration_err(input, "empty"));
    }
    if let Ok(secs) = s.parse::<f64>() {
        if !(secs.is_finite() && secs >= 0.0) {
            return Err(duration_err(input, "must be a non-negative number"));
        }
        return Ok(Duration::from_secs_f64(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_end == 0 {
            return Err(duration_err(input, "expected a number before each unit"));
        }
        let value: f64 = rest[..num_end].parse().map_err(|_| duration_err(input, "not a number"))?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        if unit.contains(char::is_whitespace) {
            return Err(duration_err(input, "no space between a number and its unit: write 2s, not 2 s"));
        }
        let secs_per_unit = match unit.to_ascii_lowercase().as_str() {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" | "mins" => 60.0,
            "h" | "hr" | "hrs" => 3600.0,
            "d" | "day" | "days" => 86400.0,
            "" => return Err(duration_err(input, "missing unit after a number")),
            _ => return Err(duration_err(input, "unknown unit (use ms, s, m, h or d)")),
        };
        let part = value * secs_per_unit;
        if !part.is_finite() || part > 1e12 {
            return Err(duration_err(input, "too large"));
        }
        total += Duration::from_secs_f64(part);
    }
    Ok(total)
}

/// Render a duration the way [`parse_duration`] reads it back (`2s`, `500ms`, `1h30m`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms % 1000 != 0 {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, name) in [(86400, "d"), (3600, "h"), (60, "m"), (1, "s")] {
        if secs >= unit {
            out.push_str(&format!("{}{name}", secs / unit));
            secs %= unit;
        }
    }
    out
}

/// A duration parsed from a human string (for clap and config values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl std::str::FromStr for HumanDuration {
    type Err = ParseUnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(HumanDuration)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("100K").unwrap(), 102_400);
        assert_eq!(parse_size("100kb").unwrap(), 102_400);
        assert_eq!(parse_size("8M").unwrap(), 8 << 20);
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size(" 2 T ").unwrap(), 2 << 40);
        for bad in ["", "M", "8X", "1..2M", "-5", "99999999999999999999T"] {
            let err = parse_size(bad).unwrap_err().to_string();
            assert!(err.contains("invalid size"), "{bad}: {err}");
            assert!(err.contains("8M"), "error should show an example: {err}");
        }
    }

    #[test]
    fn size_round_trip() {
        for n in [0, 1, 1023, 1024, 102_400, 8 << 20, 3 << 29, 5 << 30] {
            let s = format_size(n);
            let back = parse_size(&s).unwrap();
            // One decimal place may round; exact multiples must round-trip exactly.
            assert!(back.abs_diff(n) <= n / 20, "{n} -> {s} -> {back}");
        }
        assert_eq!(format_size(8 << 20), "8M");
        assert_eq!(format_size(102_400), "100K");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86400));
        for bad in ["", "s", "5x", "h5", "-1", "1h30", "2 seconds", "2 s", "1h 30m"] {
            let err = parse_duration(bad).unwrap_err().to_string();
            assert!(err.contains("invalid duration"), "{bad}: {err}");
        }
        // `2 seconds` was refused but `2 s` taken: a space is refused the same way, saying so.
        assert!(parse_duration("2 s").unwrap_err().to_string().contains("no space"), "{:?}", parse_duration("2 s"));
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
    }
}
