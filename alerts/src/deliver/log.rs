//! Files the deliverer keeps under `<checkpoint_dir>/alert-deliver/`: the keys it settled per
//! partition of `alerts`, so nothing is sent twice.

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::DeliverError;
/// Keys remembered per partition: far more than the versions between two commits.
const REMEMBERED: usize = 10_000;

/// The keys delivered from one partition of `alerts`: an append-only file of one key per line,
/// synced after each append and compacted to the newest [`REMEMBERED`] keys when it doubles.
pub(super) struct DeliveredLog {
    path: PathBuf,
    file: std::fs::File,
    order: VecDeque<String>,
    keys: HashSet<String>,
    lines: usize,
}

impl DeliveredLog {
    pub(super) fn open(dir: &Path, topic: &str, partition: u32) -> Result<Self, DeliverError> {
        let path = dir.join(format!("{topic}-{partition}.delivered"));
        let io = |source| DeliverError::Log {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(e)),
        };
        let mut log = DeliveredLog {
            file: std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io)?,
            path: path.clone(),
            order: VecDeque::new(),
            keys: HashSet::new(),
            lines: 0,
        };
        // A torn last line (a crash mid-append) is not a key any version has.
        for key in text.lines().filter(|l| !l.is_empty()) {
            log.remember(key.to_string());
            log.lines += 1;
        }
        Ok(log)
    }

    fn remember(&mut self, key: String) {
        if self.keys.insert(key.clone()) {
            self.order.push_back(key);
        }
        while self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
    }

    pub(super) fn contains(&self, key: &str) -> bool {
        self.keys.contains(key)
    }

    pub(super) fn append(&mut self, key: &str) -> Result<(), DeliverError> {
        let io = |source| DeliverError::Log {
            path: self.path.clone(),
            source,
        };
        self.file
            .write_all(format!("{key}\n").as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(io)?;
        self.remember(key.to_string());
        self.lines += 1;
        if self.lines > 2 * REMEMBERED {
            self.compact()?;
        }
        Ok(())
    }

    fn compact(&mut self) -> Result<(), DeliverError> {
        let io = |source| DeliverError::Log {
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("compacting");
        let mut text = String::new();
        for key in &self.order {
            text.push_str(key);
            text.push('\n');
        }
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        self.file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        self.lines = self.order.len();
        Ok(())
    }
}
