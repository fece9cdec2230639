//! Durations as ops people write them: `30s`, `5m`, `1h30m`, `500ms`, or bare seconds.

use std::time::Duration;

/// Parses `30s`, `5m`, `1h30m`, `250ms`, `2d`; a bare number means seconds.
pub fn parse(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let total = match t.parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => with_units(t),
    }
    .ok_or_else(|| {
        format!("invalid duration `{s}`: expected a number with a unit (ms, s, m, h, d), like 30s, 5m or 1h30m")
    })?;
    // Nothing in a change window takes a year; a huge value is a typo and would
    // overflow deadline arithmetic.
    if total > Duration::from_secs(366 * 86400) {
        return Err(format!("invalid duration `{s}`: longer than a year"));
    }
    Ok(total)
}

/// `1h30m`-style: one or more number+unit pairs.
fn with_units(t: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = t;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.chars().take_while(char::is_ascii_alphabetic).count();
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86400)),
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.saturating_add(part);
    }
    Some(total)
}

/// The short human form used in plans and logs: `1h30m`, `45s`, `250ms`.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        if h == 0 && m == 0 && d.subsec_millis() > 0 && secs < 10 {
            out.push_str(&format!("{:.1}s", d.as_secs_f64()));
        } else {
            out.push_str(&format!("{s}s"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("12"), Ok(Duration::from_secs(12)));
        assert!(parse("5 min").is_err());
        assert!(parse("s").is_err());
        assert!(parse("99999999999999999999s").is_err());
        assert!(parse("18446744073709551615s").is_err());
        assert!(parse("18446744073709551615").is_err());
        assert_eq!(parse("365d"), Ok(Duration::from_secs(365 * 86400)));
    }

    #[test]
    fn formats_short() {
        assert_eq!(format(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format(Duration::from_millis(20)), "20ms");
    }
}
