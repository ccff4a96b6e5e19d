//! A file's identity without reading it: device, inode, size, mtime and ctime. A rerun trusts a
//! file it hashed before (a cache entry, the bmodel it wrote) while its stamp is unchanged,
//! instead of reading it again.
//!
//! Why that is safe: every write to a file sets its ctime to the current time, and no user
//! call sets ctime back (`touch -d` and `cp -p` set mtime only); truncation changes the size,
//! replacing the file (rename, copy over a deleted one) the inode. The one gap is a write in the
//! same timestamp tick as the change the stamp saw: so a stamp is only taken of a file whose
//! times are at least [`SETTLE`] old, and whose times are fine-grained (a filesystem keeping
//! whole seconds gets no stamp: its files are hashed every time).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// How old a file's times must be for its stamp to be taken: longer than the coarsest tick a
/// Linux filesystem with nanosecond times stamps with (one jiffy, 10 ms at HZ=100).
pub const SETTLE: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    pub dev: u64,
    pub inode: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileStamp {
    /// The stamp `path` has now (following symlinks).
    pub fn of(path: &Path) -> std::io::Result<FileStamp> {
        Ok(FileStamp::of_metadata(&std::fs::metadata(path)?))
    }

    /// The stamp of a file's metadata (an open file's: the file a map reads, whatever its
    /// path names later).
    pub fn of_metadata(m: &std::fs::Metadata) -> FileStamp {
        let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
        FileStamp {
            dev: m.dev(),
            inode: m.ino(),
            size: m.len(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        }
    }

    /// How long from `now` until any later write is sure to change this stamp (zero: already),
    /// or `None` when the filesystem keeps whole seconds (both times on a second boundary).
    pub fn settles_in(&self, now: SystemTime) -> Option<Duration> {
        let whole = |t: i128| t % 1_000_000_000 == 0;
        if whole(self.mtime_ns) && whole(self.ctime_ns) {
            return None;
        }
        let now = now.duration_since(UNIX_EPOCH).ok()?.as_nanos() as i128;
        let newest = self.mtime_ns.max(self.ctime_ns);
        let ready = newest + SETTLE.as_nanos() as i128;
        Some(Duration::from_nanos((ready - now).max(0) as u64))
    }

    /// Whether every write after `now` is sure to change this stamp.
    pub fn settled_at(&self, now: SystemTime) -> bool {
        self.settles_in(now) == Some(Duration::ZERO)
    }

    /// The stamp of `path` once it has settled, waiting for that (at most [`SETTLE`]); `None`
    /// when it cannot settle (coarse times) or changes meanwhile: then the file gets no stamp
    /// and is hashed when next needed.
    pub fn settled(path: &Path) -> Option<FileStamp> {
        let first = FileStamp::of(path).ok()?;
        let wait = first.settles_in(SystemTime::now())?;
        if wait.is_zero() {
            return Some(first);
        }
        std::thread::sleep(wait);
        let again = FileStamp::of(path).ok()?;
        (again == first && again.settled_at(SystemTime::now())).then_some(again)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn every_kind_of_change_changes_the_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"0123456789").unwrap();
        let s = FileStamp::settled(&p).expect("a fine-grained filesystem");
        assert!(s.settled_at(SystemTime::now()));
        assert_eq!(FileStamp::of(&p).unwrap(), s, "reading changes nothing");

        // Same size, mtime put back as `touch -r` would: ctime still moves.
        let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        (&f).write_all(b"x").unwrap();
        f.set_modified(mtime).unwrap();
        drop(f);
        let edited = FileStamp::of(&p).unwrap();
        assert_eq!((edited.size, edited.mtime_ns), (s.size, s.mtime_ns));
        assert_ne!(edited, s);

        let s = FileStamp::settled(&p).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(5)
            .unwrap();
        assert_ne!(FileStamp::of(&p).unwrap(), s, "truncated");

        let s = FileStamp::settled(&p).unwrap();
        let other = dir.path().join("g");
        std::fs::copy(&p, &other).unwrap();
        std::fs::rename(&other, &p).unwrap();
        assert_ne!(FileStamp::of(&p).unwrap(), s, "replaced by a copy");
    }

    #[test]
    fn a_fresh_file_settles_later_and_whole_seconds_never() {
        let at = |secs: i128, nanos: i128| FileStamp {
            dev: 1,
            inode: 2,
            size: 3,
            mtime_ns: secs * 1_000_000_000 + nanos,
            ctime_ns: secs * 1_000_000_000 + nanos,
        };
        let t = |secs: u64, millis: u64| UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis);
        let s = at(100, 5_000_000);
        assert_eq!(s.settles_in(t(100, 15)), Some(Duration::from_millis(40)));
        assert!(!s.settled_at(t(100, 54)));
        assert!(s.settled_at(t(100, 55)));
        assert_eq!(at(100, 0).settles_in(t(200, 0)), None);
    }
}
