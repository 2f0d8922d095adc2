//! Dates as HAProxy and syslog write them, into milliseconds since the Unix epoch.
//!
//! HAProxy's accept date (`22/Nov/2026:14:05:01.123`) and RFC 3164 syslog stamps carry no zone:
//! they are the logging host's local time, so every conversion takes that host's UTC offset.

use super::{Field, LogError};

const MONTHS: [&str; 12] =
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const DAY_MS: i64 = 86_400_000;

/// HAProxy's accept (tcplog) or request (httplog) date: `DD/Mon/YYYY:HH:MM:SS.mmm`, local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogDate {
    pub year: i32,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    pub millis: u16,
}

impl LogDate {
    pub(super) fn parse(s: &str) -> Option<LogDate> {
        let b = s.as_bytes();
        if b.len() != 24
            || !b.is_ascii()
            || b[2] != b'/'
            || b[6] != b'/'
            || b[11] != b':'
            || b[14] != b':'
            || b[17] != b':'
        {
            return None;
        }
        if b[20] != b'.' {
            return None;
        }
        let d = LogDate {
            day: num(&s[0..2])? as u8,
            month: month(&s[3..6])?,
            year: num(&s[7..11])? as i32,
            hour: num(&s[12..14])? as u8,
            minute: num(&s[15..17])? as u8,
            second: num(&s[18..20])? as u8,
            millis: num(&s[21..24])? as u16,
        };
        valid(d.year, d.month, d.day, d.hour, d.minute, d.second).then_some(d)
    }

    /// Milliseconds since the Unix epoch, reading the date as local time `utc_offset_s` seconds
    /// east of UTC.
    pub fn unix_ms(&self, utc_offset_s: i32) -> i64 {
        civil_ms(self.year, self.month, self.day, self.hour, self.minute, self.second)
            + i64::from(self.millis)
            - i64::from(utc_offset_s) * 1000
    }
}

/// The timestamp of a syslog header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogTime {
    /// RFC 3164 `Nov 22 14:05:01`: local time, no year.
    Rfc3164 { month: u8, day: u8, hour: u8, minute: u8, second: u8 },
    /// RFC 3339 (RFC 5424, rsyslog's high-precision format), with its zone applied.
    Rfc3339 { unix_ms: i64 },
}

impl SyslogTime {
    /// Milliseconds since the Unix epoch. An RFC 3164 stamp has no year: it takes the year of
    /// `now_ms`, or the year before when that would put it more than a day in the future (a
    /// December log read in January).
    pub fn unix_ms(&self, now_ms: i64, utc_offset_s: i32) -> i64 {
        match *self {
            SyslogTime::Rfc3339 { unix_ms } => unix_ms,
            SyslogTime::Rfc3164 { month, day, hour, minute, second } => {
                let year = year_of(now_ms);
                let at =
                    |y: i32| civil_ms(y, month, day, hour, minute, second) - i64::from(utc_offset_s) * 1000;
                let this_year = at(year);
                if this_year > now_ms + DAY_MS { at(year - 1) } else { this_year }
            }
        }
    }

    /// `Mmm dd hh:mm:ss` (the day space-padded), the first 15 bytes of `s`.
    pub(super) fn parse_rfc3164(s: &str) -> Option<SyslogTime> {
        let b = s.as_bytes();
        // Not ASCII: not a timestamp, and slicing it by byte could cut a character in two.
        if b.len() < 15
            || !b[..15].is_ascii()
            || b[3] != b' '
            || b[6] != b' '
            || b[9] != b':'
            || b[12] != b':'
        {
            return None;
        }
        let t = SyslogTime::Rfc3164 {
            month: month(&s[0..3])?,
            day: num(s[4..6].trim_start())? as u8,
            hour: num(&s[7..9])? as u8,
            minute: num(&s[10..12])? as u8,
            second: num(&s[13..15])? as u8,
        };
        let SyslogTime::Rfc3164 { month, day, hour, minute, second } = t else { return None };
        valid(2000, month, day, hour, minute, second).then_some(t)
    }

    /// `2026-11-22T14:05:01.123456+01:00` or `...Z`.
    pub(super) fn parse_rfc3339(s: &str) -> Option<SyslogTime> {
        let b = s.as_bytes();
        if b.len() < 20
            || !b[..19].is_ascii()
            || b[4] != b'-'
            || b[7] != b'-'
            || b[10] != b'T'
            || b[13] != b':'
            || b[16] != b':'
        {
            return None;
        }
        let (year, month, day) = (num(&s[0..4])? as i32, num(&s[5..7])? as u8, num(&s[8..10])? as u8);
        let (hour, minute, second) = (num(&s[11..13])? as u8, num(&s[14..16])? as u8, num(&s[17..19])? as u8);
        if !valid(year, month, day, hour, minute, second) {
            return None;
        }
        let mut rest = &s[19..];
        let mut millis = 0i64;
        if let Some(frac) = rest.strip_prefix('.') {
            let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return None;
            }
            // The first three digits are milliseconds; a shorter fraction is padded (`.5` is 500).
            let kept = &frac[..digits.min(3)];
            millis = i64::from(num(kept)?) * [100, 10, 1][kept.len() - 1];
            rest = &frac[digits..];
        }
        let offset_s: i64 = match rest {
            "Z" | "z" => 0,
            _ => {
                let sign = match rest.as_bytes().first()? {
                    b'+' => 1,
                    b'-' => -1,
                    _ => return None,
                };
                let (h, m) = rest[1..].split_once(':')?;
                if h.len() != 2 || m.len() != 2 {
                    return None;
                }
                sign * (i64::from(num(h)?) * 3600 + i64::from(num(m)?) * 60)
            }
        };
        let unix_ms = civil_ms(year, month, day, hour, minute, second) + millis - offset_s * 1000;
        Some(SyslogTime::Rfc3339 { unix_ms })
    }
}

impl LogError {
    pub(super) fn bad(field: Field, value: &str) -> LogError {
        let value: String = value.chars().take(60).collect();
        LogError::Bad { field, value }
    }
}

fn num(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn month(s: &str) -> Option<u8> {
    MONTHS.iter().position(|m| *m == s).map(|i| i as u8 + 1)
}

fn is_leap(y: i32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn valid(year: i32, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> bool {
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&day) && hour < 24 && minute < 60 && second < 61
}

/// Days from 1970-01-01 to a proleptic Gregorian date, counting years from March so that the
/// leap day is the last day of the counted year.
fn days_from_civil(year: i32, month: u8, day: u8) -> i64 {
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (i64::from(month) + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn civil_ms(year: i32, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> i64 {
    let secs = i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second);
    days_from_civil(year, month, day) * DAY_MS + secs * 1000
}

/// The UTC year `ms` falls in.
fn year_of(ms: i64) -> i32 {
    // Start from an estimate and correct it: at most one step either way.
    let mut year = 1970 + (ms.div_euclid(DAY_MS) * 400 / 146_097) as i32;
    while civil_ms(year, 1, 1, 0, 0, 0) > ms {
        year -= 1;
    }
    while civil_ms(year + 1, 1, 1, 0, 0, 0) <= ms {
        year += 1;
    }
    year
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the haproxy_log fuzz target: a multi-byte character where a digit should be
    /// panicked on a byte slice inside it. Not ASCII is simply not a timestamp.
    #[test]
    fn timestamps_with_non_ascii_bytes_are_refused_not_a_panic() {
        assert_eq!(SyslogTime::parse_rfc3339("2026-11-22T14:47:\u{fffd}\u{fffd}643003+00:00"), None);
        assert_eq!(SyslogTime::parse_rfc3339("2026-11-22T14:4\u{e9}:13.643003+00:00"), None);
        assert_eq!(SyslogTime::parse_rfc3164("N\u{e9}v 22 14:47:13 host"), None);
        assert_eq!(SyslogTime::parse_rfc3164("Nov 22 14:47:1\u{e9} host"), None);
        assert_eq!(LogDate::parse("22/Nov/2026:14:47:1\u{e9}.64"), None);
    }

    #[test]
    fn civil_dates_match_known_epochs() {
        assert_eq!(civil_ms(1970, 1, 1, 0, 0, 0), 0);
        assert_eq!(civil_ms(2000, 3, 1, 0, 0, 0), 951_868_800_000);
        assert_eq!(civil_ms(2026, 11, 22, 14, 5, 1), 1_795_356_301_000);
        assert_eq!(year_of(1_795_356_301_000), 2026);
        assert_eq!(year_of(civil_ms(2024, 12, 31, 23, 59, 59)), 2024);
        assert_eq!(year_of(civil_ms(2025, 1, 1, 0, 0, 0)), 2025);
    }

    #[test]
    fn accept_dates() {
        let d = LogDate::parse("22/Nov/2026:14:05:01.123").unwrap();
        assert_eq!(d.unix_ms(0), 1_795_356_301_123);
        assert_eq!(d.unix_ms(3600), 1_795_356_301_123 - 3_600_000, "an hour east of UTC is earlier");
        for bad in [
            "22/Nov/2026:14:05:01",
            "31/Nov/2026:14:05:01.123",
            "22/Nox/2026:14:05:01.123",
            "22/Nov/2026:24:05:01.123",
        ] {
            assert_eq!(LogDate::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn syslog_stamps_take_the_year_that_is_not_in_the_future() {
        let now = civil_ms(2027, 1, 3, 10, 0, 0);
        let dec = SyslogTime::parse_rfc3164("Dec 31 23:59:58 host").unwrap();
        assert_eq!(dec.unix_ms(now, 0), civil_ms(2026, 12, 31, 23, 59, 58));
        let jan = SyslogTime::parse_rfc3164("Jan  2 08:00:00").unwrap();
        assert_eq!(jan.unix_ms(now, 0), civil_ms(2027, 1, 2, 8, 0, 0));
        let t = SyslogTime::parse_rfc3339("2026-11-22T15:05:01.5+01:00").unwrap();
        assert_eq!(t.unix_ms(0, 0), 1_795_356_301_500);
        assert_eq!(
            SyslogTime::parse_rfc3339("2026-11-22T14:05:01Z"),
            Some(SyslogTime::Rfc3339 { unix_ms: 1_795_356_301_000 })
        );
        assert_eq!(SyslogTime::parse_rfc3339("2026-11-22T14:05:01"), None);
    }
}
