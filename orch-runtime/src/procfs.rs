//! Reading `/proc/<pid>/stat`: whether a process lives and when it started (the PID-reuse guard).

use std::io;

/// The fields of `/proc/<pid>/stat` the runtime needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    /// Field 22: when the process started, in clock ticks since boot.
    pub start_time: u64,
}

impl Stat {
    /// Whether the process has ended (a zombie has ended, it only awaits its parent's `wait`).
    pub fn ended(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Reads `/proc/<pid>/stat`.
pub(crate) fn stat(pid: i32) -> io::Result<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("malformed /proc/{pid}/stat"),
        )
    })
}

/// Parses the text of `/proc/<pid>/stat`. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // `rest` starts at field 3, so field 22 is at index 19.
    let start_time = fields.get(19)?.parse().ok()?;
    Some(Stat { state, start_time })
}

/// Whether `pid` is a live (not zombie) process that started at `start_time`: the same
/// process that was recorded, not another one that reused its PID.
pub(crate) fn is_alive(pid: i32, start_time: u64) -> bool {
    matches!(stat(pid), Ok(s) if s.start_time == start_time && !s.ended())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: 'S',
                start_time: 987654
            })
        );
        assert_eq!(parse_stat("12 (x) Z 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn reads_own_stat() {
        let me = stat(std::process::id() as i32).unwrap();
        assert!(!me.ended());
        assert!(is_alive(std::process::id() as i32, me.start_time));
        assert!(!is_alive(std::process::id() as i32, me.start_time + 1));
    }
}
