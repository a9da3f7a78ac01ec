//! Workload logs: the combined output file, size-capped by copy-and-truncate rotation, and a
//! stream over it that can tail and follow.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use orch_core::runtime::{log_start, LogOptions, LogStream, RuntimeError};

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

/// Copies `input` (a workload's output pipe) into `current` until end of input, keeping
/// `current` at most `max_bytes` long (at least 1): when the next piece would not fit, what fits
/// (up to the last line break, or `max_bytes` exactly for a longer line) is written, older files
/// shift up (`.1` → `.2`, the oldest beyond `keep` dropped), `current` is renamed to `.1` and a
/// new `current` is started; with `keep` 0 it is truncated instead. A file already past the cap
/// is rotated first. Nothing is lost between writes, and no file outgrows the cap.
///
/// Write errors (a full disk) drop output rather than stop reading: the workload never blocks
/// on, or is killed by, its log. This is what a log writer process runs
/// ([`ProcessConfig::log_writer`](crate::ProcessConfig::log_writer)); it returns when every
/// holder of the pipe's write end has closed it.
pub fn copy_capped(
    mut input: impl io::Read,
    current: &Path,
    max_bytes: u64,
    keep: usize,
) -> io::Result<()> {
    let max = max_bytes.max(1);
    let open = |p: &Path| fs::OpenOptions::new().create(true).append(true).open(p);
    let mut file = open(current)?;
    let mut len = file.metadata()?.len();
    if len >= max {
        (file, len) = rotate(current, file, keep)?;
    }
    let mut buf = vec![0u8; CHUNK as usize];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut data = &buf[..n];
        while !data.is_empty() {
            let room = usize::try_from(max - len).unwrap_or(usize::MAX);
            let cut = if data.len() <= room {
                data.len()
            } else {
                match data[..room].iter().rposition(|b| *b == b'\n') {
                    Some(i) => i + 1,
                    None if len == 0 => room,
                    None => 0,
                }
            };
            // A failed write (ENOSPC) loses this piece; the length is re-read to stay exact.
            if io::Write::write_all(&mut file, &data[..cut]).is_ok() {
                len += cut as u64;
            } else {
                len = file.metadata().map(|m| m.len()).unwrap_or(len);
            }
            data = &data[cut..];
            if !data.is_empty() {
                match rotate(current, file, keep) {
                    Ok(next) => (file, len) = next,
                    // Cannot rotate: drop the rest of this chunk and try again later.
                    Err(_) => {
                        file = open(current)?;
                        len = file.metadata()?.len().min(max);
                        break;
                    }
                }
            }
        }
    }
}

/// Closes `file` (at `current`) and starts an empty one: renamed to `.1` after the older files
/// shift up, or truncated with `keep` 0.
fn rotate(current: &Path, file: fs::File, keep: usize) -> io::Result<(fs::File, u64)> {
    if keep == 0 {
        file.set_len(0)?;
        return Ok((file, 0));
    }
    drop(file);
    for n in (1..keep).rev() {
        match fs::rename(rotated(current, n), rotated(current, n + 1)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    fs::rename(current, rotated(current, 1))?;
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(current)?;
    Ok((file, 0))
}

/// Appends `line` to the log at `current` (after a line break if its output did not end with
/// one), where earlier runs left output; a log not yet written stays absent.
pub(crate) fn mark_restart(current: &Path, line: &str) -> io::Result<()> {
    let len_of = |p: &Path| fs::metadata(p).map_or(0, |m| m.len());
    if len_of(current) == 0 && len_of(&rotated(current, 1)) == 0 {
        return Ok(());
    }
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(current)?;
    let len = f.metadata()?.len();
    let mut last = [0u8; 1];
    let ends_open = len > 0
        && std::os::unix::fs::FileExt::read_at(&fs::File::open(current)?, &mut last, len - 1)? == 1
        && last[0] != b'\n';
    let text = if ends_open {
        format!("\n{line}")
    } else {
        line.to_string()
    };
    io::Write::write_all(&mut f, text.as_bytes())
}

/// One stretch of an open log file still to be read.
struct Segment {
    path: PathBuf,
    file: Arc<fs::File>,
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

/// The file a following stream reads: the one open at `current` when last looked.
struct Followed {
    file: Arc<fs::File>,
    ino: u64,
}

struct Cursor {
    segments: VecDeque<Segment>,
    current: PathBuf,
    keep: usize,
    /// Where the followed file is read next.
    pos: u64,
    followed: Option<Followed>,
    follow: Option<KeepFollowing>,
}

/// A stream of the logs at `current` and its `keep` rotated files, oldest first, from where the
/// tails of `opts` start ([`log_start`]: at a line start). The files are opened at once, so a
/// rotation while the stream reads them does not mix them up. With `follow`, it then polls the
/// current file for appended output until `follow` returns false or the stream is dropped: when
/// a rotation renames the file away (a log writer), it reads the renamed one to its end, then
/// the new one from its start, losing nothing; when it is truncated in place (copy-and-truncate
/// without a writer), it reads again from its start.
pub(crate) fn stream(
    current: PathBuf,
    keep: usize,
    opts: &LogOptions,
    follow: Option<KeepFollowing>,
) -> LogStream {
    let open = |p: &Path| -> Option<(Arc<fs::File>, u64, u64)> {
        let f = fs::File::open(p).ok()?;
        let m = f.metadata().ok()?;
        Some((
            Arc::new(f),
            m.len(),
            std::os::unix::fs::MetadataExt::ino(&m),
        ))
    };
    let mut files: Vec<(PathBuf, Arc<fs::File>, u64)> = (1..=keep)
        .rev()
        .map(|n| rotated(&current, n))
        .filter_map(|p| open(&p).map(|(f, len, _)| (p, f, len)))
        .collect();
    let opened = open(&current);
    let current_len = opened.as_ref().map_or(0, |(_, len, _)| *len);
    let followed = opened.map(|(file, len, ino)| {
        files.push((current.clone(), file.clone(), len));
        Followed { file, ino }
    });
    let total: u64 = files.iter().map(|(_, _, len)| len).sum();
    // Reads of the files as one: `len` bytes from `pos`, across file ends.
    let read = |mut pos: u64, len: usize| -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len);
        for (_, file, flen) in &files {
            if out.len() == len {
                break;
            }
            if pos >= *flen {
                pos -= flen;
                continue;
            }
            let want = ((flen - pos) as usize).min(len - out.len());
            let mut buf = vec![0u8; want];
            let n = read_full(file, &mut buf, pos)?;
            out.extend_from_slice(&buf[..n]);
            pos = 0;
        }
        Ok(out)
    };
    let mut skip = log_start(total, opts, read).unwrap_or(0);
    let mut segments = VecDeque::new();
    for (path, file, len) in files {
        if skip >= len {
            skip -= len;
            continue;
        }
        segments.push_back(Segment {
            path,
            file,
            pos: skip,
            end: len,
        });
        skip = 0;
    }
    let cursor = Cursor {
        segments,
        current,
        keep,
        pos: current_len,
        followed,
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
        match read_at(&seg.file, seg.pos, (seg.end - seg.pos).min(CHUNK)).await {
            Ok(buf) if !buf.is_empty() => {
                seg.pos += buf.len() as u64;
                return Some(Ok(buf));
            }
            // Shrunk (truncated meanwhile): nothing more in this stretch.
            Ok(_) => {
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
        let at_path = match tokio::fs::metadata(&c.current).await {
            Ok(m) => Some(std::os::unix::fs::MetadataExt::ino(&m)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Some(Err(read_error(&c.current, e))),
        };
        let Some(f) = &c.followed else {
            // Nothing open yet: the file appeared (or the stream began before it existed).
            if at_path.is_some() {
                if let Ok(file) = fs::File::open(&c.current) {
                    let ino = file
                        .metadata()
                        .map_or(0, |m| std::os::unix::fs::MetadataExt::ino(&m));
                    c.followed = Some(Followed {
                        file: Arc::new(file),
                        ino,
                    });
                    c.pos = 0;
                    continue;
                }
            }
            tokio::time::sleep(FOLLOW_POLL).await;
            continue;
        };
        // The length of the open file, read after the path was looked at: if the path has moved
        // on, every write to this file came before the rename, so this length is final.
        let len = match f.file.metadata() {
            Ok(m) => m.len(),
            Err(e) => return Some(Err(read_error(&c.current, e))),
        };
        if len < c.pos {
            // Truncated in place: what is there now is new.
            c.pos = 0;
        }
        if len > c.pos {
            match read_at(&f.file, c.pos, (len - c.pos).min(CHUNK)).await {
                Ok(buf) if !buf.is_empty() => {
                    c.pos += buf.len() as u64;
                    return Some(Ok(buf));
                }
                Ok(_) => {}
                Err(e) => return Some(Err(read_error(&c.current, e))),
            }
        }
        if at_path != Some(f.ino) {
            // Rotated away and read to its end: on to the file written after it, which is the
            // next newer rotated one when several rotations happened since the last look, else
            // the current one (opened on the next round).
            c.followed = successor(&c.current, c.keep, f.ino);
            c.pos = 0;
            continue;
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

/// The rotated file written after the one with inode `ino`, if `ino` is a rotated file other
/// than the newest (`.1`).
fn successor(current: &Path, keep: usize, ino: u64) -> Option<Followed> {
    let ino_of = |p: &Path| {
        fs::metadata(p)
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
    };
    let k = (2..=keep).find(|n| ino_of(&rotated(current, *n)) == Some(ino))?;
    let file = fs::File::open(rotated(current, k - 1)).ok()?;
    let ino = std::os::unix::fs::MetadataExt::ino(&file.metadata().ok()?);
    Some(Followed {
        file: Arc::new(file),
        ino,
    })
}

/// Up to `len` bytes of `file` from `pos`.
async fn read_at(file: &Arc<fs::File>, pos: u64, len: u64) -> io::Result<Vec<u8>> {
    let file = file.clone();
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len as usize];
        let got = read_full(&file, &mut buf, pos)?;
        buf.truncate(got);
        Ok(buf)
    })
    .await
    .map_err(io::Error::other)?
}

/// Fills `buf` from `file` at `pos` (less only at the end of the file); returns the count.
fn read_full(file: &fs::File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match std::os::unix::fs::FileExt::read_at(file, &mut buf[got..], pos + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
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
        let bytes = |n| LogOptions {
            tail_bytes: Some(n),
            ..LogOptions::default()
        };
        let lines = |n| LogOptions {
            tail_lines: Some(n),
            ..LogOptions::default()
        };
        let all = collect(stream(cur.clone(), 2, &LogOptions::default(), None)).await;
        assert_eq!(all, b"aaaabbbbcccc");
        // No line breaks: the byte cut is kept.
        let tail = collect(stream(cur.clone(), 2, &bytes(6), None)).await;
        assert_eq!(tail, b"bbcccc");
        let only_current = collect(stream(cur.clone(), 0, &LogOptions::default(), None)).await;
        assert_eq!(only_current, b"cccc");
        let nothing = collect(stream(cur.clone(), 2, &bytes(0), None)).await;
        assert!(nothing.is_empty());
        // Lines across the files: the tail starts at the line start, in whichever file.
        fs::write(rotated(&cur, 2), b"one\ntw").unwrap();
        fs::write(rotated(&cur, 1), b"o\nthr").unwrap();
        fs::write(&cur, b"ee\nfour\n").unwrap();
        let tail = collect(stream(cur.clone(), 2, &bytes(12), None)).await;
        assert_eq!(tail, b"three\nfour\n");
        let tail = collect(stream(cur.clone(), 2, &lines(3), None)).await;
        assert_eq!(tail, b"two\nthree\nfour\n");
    }

    #[test]
    fn copy_capped_never_outgrows_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let cur = dir.path().join(LOG_FILE);
        // Already past the cap: rotated before anything is written.
        fs::write(&cur, vec![b'x'; 50]).unwrap();
        let lines: Vec<u8> = (0..1000)
            .flat_map(|i| format!("line {i:04}\n").into_bytes())
            .collect();
        // A 10-byte line and a 25-byte line, then 30 bytes without a line break.
        let input = [
            lines.clone(),
            b"123456789\n".to_vec(),
            vec![b'a'; 24],
            b"\n".to_vec(),
        ]
        .concat();
        let input = [input, vec![b'z'; 30]].concat();
        copy_capped(&input[..], &cur, 20, 3).unwrap();
        let sizes: Vec<u64> = [
            cur.clone(),
            rotated(&cur, 1),
            rotated(&cur, 2),
            rotated(&cur, 3),
        ]
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .collect();
        assert!(sizes.iter().all(|s| *s <= 20), "{sizes:?}");
        assert!(!rotated(&cur, 4).exists());
        // Newest first: the unbroken tail split at the cap, then the 25-byte line, which did
        // not fit after the 10-byte one and was itself split at the cap in a file of its own.
        assert_eq!(fs::read(&cur).unwrap(), vec![b'z'; 10]);
        assert_eq!(fs::read(rotated(&cur, 1)).unwrap(), vec![b'z'; 20]);
        assert_eq!(fs::read(rotated(&cur, 2)).unwrap(), b"aaaa\n");
        assert_eq!(fs::read(rotated(&cur, 3)).unwrap(), vec![b'a'; 20]);
        // keep 0: one file, truncated.
        let solo = dir.path().join("solo.log");
        copy_capped(&lines[..], &solo, 100, 0).unwrap();
        assert!(fs::metadata(&solo).unwrap().len() <= 100);
        assert!(!rotated(&solo, 1).exists());
        let text = String::from_utf8(fs::read(&solo).unwrap()).unwrap();
        assert!(
            text.ends_with("line 0999\n") && text.starts_with("line "),
            "{text}"
        );
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
