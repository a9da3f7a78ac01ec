//! Resource quantities (`cpu: 500m`, `memory: 128Mi`), durations (`10s`) and timestamps,
//! with the same spelling Kubernetes users already know.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// CPU in thousandths of a core: `500m` is half a core, `2` is two cores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cpu(pub u64);

/// Memory in bytes: `128Mi`, `1Gi`, `500M`, `1048576`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Memory(pub u64);

/// A span of time written as `10s`, `500ms`, `1m30s`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(pub Duration);

/// Wall-clock time in milliseconds since the Unix epoch, written as RFC 3339.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Cpu {
    /// Parses `500m`, `0.5`, `2`.
    pub fn parse(s: &str) -> Result<Cpu, String> {
        let s = s.trim();
        let err = || {
            format!("invalid cpu quantity {s:?}: expected cores such as \"2\", \"0.5\" or millicores such as \"500m\"")
        };
        if let Some(m) = s.strip_suffix('m') {
            return m.parse::<u64>().map(Cpu).map_err(|_| err());
        }
        let v: f64 = s.parse().map_err(|_| err())?;
        if !v.is_finite() || !(0.0..=1_000_000.0).contains(&v) {
            return Err(err());
        }
        let millis = (v * 1000.0).round() as u64;
        if millis == 0 && v > 0.0 {
            return Err(format!(
                "invalid cpu quantity {s:?}: the smallest cpu quantity is 1m (0.001 cores); use 0 or leave it out for none"
            ));
        }
        Ok(Cpu(millis))
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 % 1000 == 0 {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

const MEMORY_SUFFIXES: &[(&str, u64)] = &[
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("k", 1_000),
    ("K", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
];

impl Memory {
    /// Parses `128Mi`, `1Gi`, `500M`, `1048576`.
    pub fn parse(s: &str) -> Result<Memory, String> {
        let s = s.trim();
        let err = || {
            format!("invalid memory quantity {s:?}: expected bytes such as \"1048576\" or a number with a suffix Ki, Mi, Gi, Ti, k, M, G, T (\"128Mi\")")
        };
        let (num, mult) = MEMORY_SUFFIXES
            .iter()
            .find_map(|(suf, m)| s.strip_suffix(suf).map(|n| (n, *m)))
            .unwrap_or((s, 1));
        let v: f64 = num.parse().map_err(|_| err())?;
        let bytes = v * mult as f64;
        if !bytes.is_finite() || !(0.0..=1e18).contains(&bytes) {
            return Err(err());
        }
        if bytes > 0.0 && bytes.round() == 0.0 {
            return Err(format!(
                "invalid memory quantity {s:?}: less than one byte; a memory limit must be at least 4Mi (or 0, or left out, for none)"
            ));
        }
        Ok(Memory(bytes.round() as u64))
    }
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (suf, m) in MEMORY_SUFFIXES[..4].iter().rev() {
            if self.0 >= *m && self.0 % m == 0 {
                return write!(f, "{}{}", self.0 / m, suf);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Span {
    /// Parses `10s`, `500ms`, `1m30s`, `1h`.
    pub fn parse(s: &str) -> Result<Span, String> {
        humantime::parse_duration(s.trim()).map(Span).map_err(|_| {
            format!("invalid duration {s:?}: expected a number with a unit such as \"500ms\", \"10s\", \"1m30s\"")
        })
    }
    /// Builds a span from whole seconds.
    pub const fn secs(s: u64) -> Span {
        Span(Duration::from_secs(s))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Timestamp {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(d.as_millis() as u64)
    }
    /// Time elapsed since this timestamp (zero if it lies in the future).
    pub fn elapsed(&self) -> Duration {
        Duration::from_millis(Timestamp::now().0.saturating_sub(self.0))
    }
    /// Parses RFC 3339.
    pub fn parse(s: &str) -> Result<Timestamp, String> {
        let t = humantime::parse_rfc3339_weak(s.trim()).map_err(|_| {
            format!("invalid timestamp {s:?}: expected RFC 3339 such as \"2026-01-02T03:04:05Z\"")
        })?;
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        Ok(Timestamp(d.as_millis() as u64))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = UNIX_EPOCH + Duration::from_millis(self.0);
        write!(f, "{}", humantime::format_rfc3339_millis(t))
    }
}

/// Formats an age the way `kubectl get` does: `5s`, `3m`, `2h`, `4d`.
pub fn format_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

macro_rules! string_quantity {
    ($t:ty, $what:literal) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$t, E> {
                        <$t>::parse(v).map_err(E::custom)
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$t, E> {
                        <$t>::parse(&v.to_string()).map_err(E::custom)
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$t, E> {
                        <$t>::parse(&v.to_string()).map_err(E::custom)
                    }
                    fn visit_f64<E: de::Error>(self, v: f64) -> Result<$t, E> {
                        <$t>::parse(&v.to_string()).map_err(E::custom)
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

string_quantity!(Cpu, "a cpu quantity such as \"500m\" or \"2\"");
string_quantity!(Memory, "a memory quantity such as \"128Mi\"");
string_quantity!(Span, "a duration such as \"10s\"");
string_quantity!(Timestamp, "an RFC 3339 timestamp");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_quantities() {
        for (input, millis, shown) in [
            ("500m", 500, "500m"),
            ("2", 2000, "2"),
            ("0.25", 250, "250m"),
        ] {
            let c = Cpu::parse(input).unwrap();
            assert_eq!(c.0, millis);
            assert_eq!(c.to_string(), shown);
        }
        for (input, bytes, shown) in [
            ("128Mi", 128 << 20, "128Mi"),
            ("1Gi", 1 << 30, "1Gi"),
            ("1000", 1000, "1000"),
            ("1k", 1000, "1000"),
        ] {
            let m = Memory::parse(input).unwrap();
            assert_eq!(m.0, bytes);
            assert_eq!(m.to_string(), shown);
        }
        assert!(Cpu::parse("-1").is_err());
        // Nothing non-zero becomes zero.
        assert!(Cpu::parse("0.0000001").is_err());
        assert!(Cpu::parse("0.0004").is_err());
        assert_eq!(Cpu::parse("0").unwrap().0, 0);
        assert_eq!(Cpu::parse("0.001").unwrap().0, 1);
        assert!(Memory::parse("0.1").is_err());
        assert_eq!(Memory::parse("0").unwrap().0, 0);
        assert!(Memory::parse("12Qi").is_err());
        assert_eq!(Span::parse("1m30s").unwrap().0, Duration::from_secs(90));
        assert!(Span::parse("ten").is_err());
    }

    #[test]
    fn timestamps_round_trip() {
        let t = Timestamp(1_700_000_000_123);
        assert_eq!(Timestamp::parse(&t.to_string()).unwrap(), t);
    }
}
