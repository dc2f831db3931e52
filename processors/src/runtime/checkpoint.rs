//! Checkpoints: a partition's processor state together with the input offset it reflects.
//!
//! A checkpoint is one file, `DIR/STAGE/TOPIC/PARTITION/OFFSET.ckpt`, written under a temporary
//! name, fsynced and renamed, so a reader sees a whole checkpoint or none. Its body ends with an
//! xxh3 checksum of the rest; a file that fails it is skipped for the one before. The newest two
//! per partition are kept.
//!
//! Every processor instance of a stage must see the same directory: on one machine it lives
//! under the data directory; scaled out, it is a volume the instances share, so that the instance
//! a partition moves to finds the state its previous owner left.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

/// Why a checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file system refused.
    #[error("checkpoint {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
}

/// A partition's saved state.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The next input offset to process: the state reflects every record before it.
    pub offset: u64,
    /// The processor's serialized state.
    pub state: Vec<u8>,
}

/// A directory of checkpoints, shared by every instance of a stage.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    dir: PathBuf,
}

const SUFFIX: &str = ".ckpt";
const KEEP: usize = 2;

impl Checkpoints {
    /// Checkpoints of `stage` under `dir` (created on first save).
    pub fn new(dir: impl Into<PathBuf>, stage: &str) -> Self {
        Checkpoints {
            dir: dir.into().join(stage),
        }
    }

    fn partition_dir(&self, topic: &str, partition: u32) -> PathBuf {
        self.dir.join(topic).join(partition.to_string())
    }

    /// The newest intact checkpoint of a partition, if any.
    pub fn load(&self, topic: &str, partition: u32) -> Result<Option<Checkpoint>, CheckpointError> {
        let dir = self.partition_dir(topic, partition);
        for (offset, path) in list(&dir)?.into_iter().rev() {
            let body = fs::read(&path).map_err(|source| CheckpointError::Io {
                path: path.clone(),
                source,
            })?;
            match verify(&body) {
                Some(state) => {
                    return Ok(Some(Checkpoint {
                        offset,
                        state: state.to_vec(),
                    }));
                }
                None => {
                    tracing::warn!(path = %path.display(), "Checkpoint fails its checksum; using the one before.")
                }
            }
        }
        Ok(None)
    }

    /// Durably saves a partition's state as of `offset`, then drops all but the newest two.
    pub fn save(
        &self,
        topic: &str,
        partition: u32,
        checkpoint: &Checkpoint,
    ) -> Result<(), CheckpointError> {
        let dir = self.partition_dir(topic, partition);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CheckpointError::Io { path, source }
        };
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let name = format!("{:020}{SUFFIX}", checkpoint.offset);
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let mut file = fs::File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(&checkpoint.state).map_err(io(&tmp))?;
        file.write_all(&xxh3_64(&checkpoint.state).to_le_bytes())
            .map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        drop(file);
        let path = dir.join(&name);
        fs::rename(&tmp, &path).map_err(io(&path))?;
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&dir))?;
        let all = list(&dir)?;
        for (_, old) in all.iter().take(all.len().saturating_sub(KEEP)) {
            let _ = fs::remove_file(old);
        }
        Ok(())
    }
}

/// The checkpoint files of a partition, oldest first.
fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CheckpointError::Io {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut found: Vec<(u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let offset = name.strip_suffix(SUFFIX)?.parse().ok()?;
            Some((offset, e.path()))
        })
        .collect();
    found.sort();
    Ok(found)
}

fn verify(body: &[u8]) -> Option<&[u8]> {
    let split = body.len().checked_sub(8)?;
    let (state, sum) = body.split_at(split);
    (xxh3_64(state).to_le_bytes() == sum).then_some(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_intact_checkpoint_wins_and_two_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Checkpoints::new(dir.path(), "process");
        assert_eq!(store.load("events.raw", 3).unwrap(), None);
        for offset in [10, 20, 30] {
            let state = format!("state at {offset}").into_bytes();
            store
                .save("events.raw", 3, &Checkpoint { offset, state })
                .unwrap();
        }
        let newest = store.load("events.raw", 3).unwrap().unwrap();
        assert_eq!(newest.offset, 30);
        assert_eq!(newest.state, b"state at 30");
        let pdir = dir.path().join("process/events.raw/3");
        assert_eq!(fs::read_dir(&pdir).unwrap().count(), 2);

        // A torn newest file is skipped for the one before.
        let path = pdir.join(format!("{:020}{SUFFIX}", 30));
        let mut body = fs::read(&path).unwrap();
        body[0] ^= 1;
        fs::write(&path, body).unwrap();
        assert_eq!(store.load("events.raw", 3).unwrap().unwrap().offset, 20);
        // Other partitions are separate.
        assert_eq!(store.load("events.raw", 4).unwrap(), None);
    }
}
