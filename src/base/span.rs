//! Durations as operators write them on the command line: `30d`, `12h`, `90m`, `45s`.

use std::time::Duration;

/// A whole number followed by `d`, `h` or `m` (and `s` when `seconds`); zero and overflow are
/// refused. None when it is not one: each caller words its own error.
pub fn parse_span(s: &str, seconds: bool) -> Option<Duration> {
    let (digits, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = digits.parse().ok()?;
    let secs = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" if seconds => 1,
        _ => return None,
    };
    n.checked_mul(secs).map(Duration::from_secs).filter(|d| !d.is_zero())
}
