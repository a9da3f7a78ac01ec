//! Workload logs: the combined output file, size-capped by copy-and-truncate rotation, and a
//! stream over it that can tail and follow.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use orch_core::runtime::{LogStream, RuntimeError};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// The file a workload's stdout and stderr go to, inside its directory.
pub(crate) const LOG_FILE: &str = "output.log";

/// The largest chunk a log stream yields at once.
const CHUNK: u64 = 64 * 1024;

/// How often a following stream looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(150);

/// The `n`-th rotated file next to `current` (`output.log.1` is the newest).
pub(crate) fn rotated(current: &Path, n: usize) -> PathBuf {
    let mut name = current.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Rotates `current` when it is larger than `max_bytes`: older files shift up (`.1` → `.2`, the
/// oldest beyond `keep` is overwritten), the current content is copied to `.1`, and the current
/// file is truncated in place.
///
/// Copy-and-truncate keeps the file the workload holds open (with `O_APPEND`, so its next write
/// lands at the new end): nothing has to be signalled or reopened. The price: output written
/// between the copy and the truncation is lost, and the cap is soft (the file may grow past
/// `max_bytes` until the next check).
pub(crate) fn rotate_if_needed(current: &Path, max_bytes: u64, keep: usize) -> io::Result<bool> {
    let len = match fs::metadata(current) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max_bytes {
        return Ok(false);
    }
    if keep > 0 {
        for n in (1..keep).rev() {
            match fs::rename(rotated(current, n), rotated(current, n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        fs::copy(current, rotated(current, 1))?;
    }
    fs::OpenOptions::new()
        .write(true)
        .open(current)?
        .set_len(0)?;
    Ok(true)
}

/// One stretch of a file still to be read.
struct Segment {
    path: PathBuf,
    pos: u64,
    end: u64,
}

/// Decides whether a following stream goes on (false once the workload is removed).
pub(crate) type KeepFollowing = Arc<dyn Fn() -> bool + Send + Sync>;

/// Keep following while `owner` lives and `present` says the workload is still known to it.
pub(crate) fn while_present<T: Send + Sync + 'static>(
    owner: std::sync::Weak<T>,
    present: impl Fn(&T) -> bool + Send + Sync + 'static,
) -> KeepFollowing {
    Arc::new(move || owner.upgrade().is_some_and(|o| present(&o)))
}

struct Cursor {
    segments: VecDeque<Segment>,
    current: PathBuf,
    pos: u64,
    follow: Option<KeepFollowing>,
}

/// A stream of the logs at `current` and its `keep` rotated files, oldest first, starting
/// `tail` bytes before the end (all of it with `None`). With `follow`, it then polls the current
/// file for appended output until `follow` returns false or the stream is dropped; when the file
/// shrinks (rotated), it reads again from its start.
pub(crate) fn stream(
    current: PathBuf,
    keep: usize,
    tail: Option<u64>,
    follow: Option<KeepFollowing>,
) -> LogStream {
    let len_of = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut files: Vec<(PathBuf, u64)> = (1..=keep)
        .rev()
        .map(|n| rotated(&current, n))
        .filter(|p| p.exists())
        .map(|p| {
            let len = len_of(&p);
            (p, len)
        })
        .collect();
    let current_len = len_of(&current);
    files.push((current.clone(), current_len));
    let total: u64 = files.iter().map(|(_, len)| len).sum();
    let mut skip = tail.map_or(0, |t| total.saturating_sub(t));
    let mut segments = VecDeque::new();
    for (path, len) in files {
        if skip >= len {
            skip -= len;
            continue;
        }
        segments.push_back(Segment {
            path,
            pos: skip,
            end: len,
        });
        skip = 0;
    }
    let cursor = Cursor {
        segments,
        current,
        pos: current_len,
        follow,
    };
    futures::stream::unfold(cursor, |mut c| async move {
        let item = next(&mut c).await?;
        Some((item, c))
    })
    .boxed()
}

async fn next(c: &mut Cursor) -> Option<Result<Vec<u8>, RuntimeError>> {
    while let Some(seg) = c.segments.front_mut() {
        if seg.pos >= seg.end {
            c.segments.pop_front();
            continue;
        }
        match read_at(&seg.path, seg.pos, (seg.end - seg.pos).min(CHUNK)).await {
            Ok(buf) if !buf.is_empty() => {
                seg.pos += buf.len() as u64;
                return Some(Ok(buf));
            }
            // Gone or shrunk (rotated meanwhile): nothing more in this stretch.
            Ok(_) => {
                c.segments.pop_front();
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                c.segments.pop_front();
            }
            Err(e) => return Some(Err(read_error(&seg.path, e))),
        }
    }
    let follow = c.follow.clone()?;
    loop {
        if !follow() {
            return None;
        }
        let len = match tokio::fs::metadata(&c.current).await {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Some(Err(read_error(&c.current, e))),
        };
        if len < c.pos {
            // Truncated by rotation: what is there now is new.
            c.pos = 0;
        }
        if len > c.pos {
            match read_at(&c.current, c.pos, (len - c.pos).min(CHUNK)).await {
                Ok(buf) if !buf.is_empty() => {
                    c.pos += buf.len() as u64;
                    return Some(Ok(buf));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Some(Err(read_error(&c.current, e))),
            }
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

async fn read_at(path: &Path, pos: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut f = tokio::fs::File::open(path).await?;
    f.seek(SeekFrom::Start(pos)).await?;
    let mut buf = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut buf).await?;
    Ok(buf)
}

fn read_error(path: &Path, source: io::Error) -> RuntimeError {
    RuntimeError::Io {
        context: format!("cannot read log {}", path.display()),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(s: LogStream) -> Vec<u8> {
        let chunks: Vec<_> = s.collect().await;
        chunks.into_iter().flat_map(|c| c.unwrap()).collect()
    }

    #[tokio::test]
    async fn tails_across_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let cur = dir.path().join(LOG_FILE);
        fs::write(rotated(&cur, 2), b"aaaa").unwrap();
        fs::write(rotated(&cur, 1), b"bbbb").unwrap();
        fs::write(&cur, b"cccc").unwrap();
        let all = collect(stream(cur.clone(), 2, None, None)).await;
        assert_eq!(all, b"aaaabbbbcccc");
        let tail = collect(stream(cur.clone(), 2, Some(6), None)).await;
        assert_eq!(tail, b"bbcccc");
        let only_current = collect(stream(cur.clone(), 0, None, None)).await;
        assert_eq!(only_current, b"cccc");
        let nothing = collect(stream(cur.clone(), 2, Some(0), None)).await;
        assert!(nothing.is_empty());
    }

    #[test]
    fn rotation_shifts_and_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let cur = dir.path().join(LOG_FILE);
        fs::write(&cur, b"first").unwrap();
        assert!(!rotate_if_needed(&cur, 10, 2).unwrap());
        assert!(rotate_if_needed(&cur, 3, 2).unwrap());
        fs::write(&cur, b"second").unwrap();
        assert!(rotate_if_needed(&cur, 3, 2).unwrap());
        fs::write(&cur, b"third").unwrap();
        assert!(rotate_if_needed(&cur, 3, 2).unwrap());
        assert_eq!(fs::read(&cur).unwrap(), b"");
        assert_eq!(fs::read(rotated(&cur, 1)).unwrap(), b"third");
        assert_eq!(fs::read(rotated(&cur, 2)).unwrap(), b"second");
        assert!(!rotated(&cur, 3).exists());
        fs::write(&cur, b"fourth").unwrap();
        assert!(rotate_if_needed(&cur, 3, 0).unwrap());
        assert_eq!(fs::read(&cur).unwrap(), b"");
        assert!(!rotate_if_needed(&dir.path().join("missing"), 3, 1).unwrap());
    }
}
