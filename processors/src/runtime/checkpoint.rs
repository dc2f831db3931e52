//! Checkpoints: a partition's processor state together with the input offset it reflects.
//!
//! A checkpoint is a manifest, `DIR/STAGE/TOPIC/PARTITION/OFFSET.ckpt`, naming the chunks its
//! state was cut into, each a file `chunks/HASH` named by the xxh3-128 of its bytes. The state is
//! cut where its content says (FastCDC, about 1 MiB a chunk), so the chunks of an unchanged
//! stretch of state are the same from one checkpoint to the next and are not written again: a
//! dedupe set of hundreds of MB whose new ids land at its end rewrites a few MB per checkpoint,
//! not all of it. Every file is written under a temporary name, fsynced and renamed, so a reader
//! sees a whole file or none; the manifest goes last. A manifest ends with an xxh3 checksum of
//! the rest, and a chunk must hash to its name: a checkpoint that fails either is skipped for the
//! one before. The newest two per partition are kept, with the chunks they name.
//!
//! Every processor instance of a stage must see the same directory: on one machine it lives
//! under the data directory; scaled out, it is a volume the instances share, so that the instance
//! a partition moves to finds the state its previous owner left.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::{xxh3_64, xxh3_128};

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
/// The first bytes of a manifest. A checkpoint without them holds its state itself (the layout
/// before chunks): it is still read.
const MAGIC: &[u8; 8] = b"TRLCKPT2";
const CHUNKS: &str = "chunks";
/// Chunk sizes (FastCDC's minimum, average and maximum).
const CHUNK_MIN: u32 = 256 << 10;
const CHUNK_AVG: u32 = 1 << 20;
const CHUNK_MAX: u32 = 4 << 20;

/// What the last save wrote, for the stage's metrics and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Saved {
    /// Bytes of state checkpointed.
    pub state_bytes: u64,
    /// Bytes of chunks written (the rest were already on disk).
    pub written_bytes: u64,
}

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
            let state = match verify(&body) {
                Some(manifest) if manifest.starts_with(MAGIC) => assemble(&dir, manifest)?,
                Some(state) => Some(state.to_vec()),
                None => None,
            };
            match state {
                Some(state) => return Ok(Some(Checkpoint { offset, state })),
                None => {
                    tracing::warn!(path = %path.display(), "Checkpoint fails its checksum; using the one before.")
                }
            }
        }
        Ok(None)
    }

    /// Durably saves a partition's state as of `offset`, writing only the chunks not already on
    /// disk, then drops all but the newest two checkpoints and the chunks no kept one names.
    pub fn save(
        &self,
        topic: &str,
        partition: u32,
        checkpoint: &Checkpoint,
    ) -> Result<Saved, CheckpointError> {
        let dir = self.partition_dir(topic, partition);
        let chunks = dir.join(CHUNKS);
        fs::create_dir_all(&chunks).map_err(io(&chunks))?;
        let state = &checkpoint.state;
        let mut manifest = MAGIC.to_vec();
        let mut saved = Saved {
            state_bytes: state.len() as u64,
            written_bytes: 0,
        };
        for cut in fastcdc::v2020::FastCDC::new(state, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX) {
            let bytes = &state[cut.offset..cut.offset + cut.length];
            let hash = xxh3_128(bytes);
            manifest.extend_from_slice(&hash.to_le_bytes());
            manifest.extend_from_slice(&(cut.length as u64).to_le_bytes());
            let path = chunks.join(chunk_name(hash));
            if !path.exists() {
                write_durably(&chunks, &path, &[bytes])?;
                saved.written_bytes += bytes.len() as u64;
            }
        }
        if saved.written_bytes > 0 {
            sync_dir(&chunks)?;
        }
        let name = format!("{:020}{SUFFIX}", checkpoint.offset);
        let sum = xxh3_64(&manifest).to_le_bytes();
        write_durably(&dir, &dir.join(name), &[&manifest, &sum])?;
        sync_dir(&dir)?;
        let all = list(&dir)?;
        let (old, kept) = all.split_at(all.len().saturating_sub(KEEP));
        for (_, path) in old {
            let _ = fs::remove_file(path);
        }
        forget_chunks(&chunks, kept);
        Ok(saved)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError {
    let path = path.to_path_buf();
    move |source| CheckpointError::Io { path, source }
}

/// Writes `parts` to `path` through a temporary file in `dir`, synced before the rename. A file
/// that could not be written or synced is never renamed into place: what it holds is unknown,
/// and the space it took is given back.
fn write_durably(dir: &Path, path: &Path, parts: &[&[u8]]) -> Result<(), CheckpointError> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = fs::File::create(&tmp).and_then(|mut file| {
        for part in parts {
            file.write_all(part)?;
        }
        file.sync_all()
    });
    if let Err(source) = written {
        let _ = fs::remove_file(&tmp);
        return Err(CheckpointError::Io { path: tmp, source });
    }
    fs::rename(&tmp, path).map_err(io(path))
}

fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// The file name of the chunk with xxh3-128 `hash`.
fn chunk_name(hash: u128) -> String {
    format!("{hash:032x}")
}

/// The chunks a manifest (checksum already verified) names, as (hash, length), in order; `None`
/// if it is not a manifest (a checkpoint in the older single-file layout) or not a whole one.
fn chunks_of(manifest: &[u8]) -> Option<impl Iterator<Item = (u128, u64)> + '_> {
    let entries = manifest.strip_prefix(MAGIC.as_slice())?;
    entries.len().is_multiple_of(24).then(|| {
        entries.chunks_exact(24).map(|entry| {
            let (hash, length) = entry.split_at(16);
            let hash = u128::from_le_bytes(hash.try_into().expect("16 bytes"));
            let length = u64::from_le_bytes(length.try_into().expect("8 bytes"));
            (hash, length)
        })
    })
}

/// The state a manifest names, or `None` if a chunk is missing or not what it was.
fn assemble(dir: &Path, manifest: &[u8]) -> Result<Option<Vec<u8>>, CheckpointError> {
    let Some(named) = chunks_of(manifest) else {
        return Ok(None);
    };
    let mut state = Vec::new();
    for (hash, length) in named {
        let path = dir.join(CHUNKS).join(chunk_name(hash));
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CheckpointError::Io { path, source }),
        };
        if bytes.len() as u64 != length || xxh3_128(&bytes) != hash {
            return Ok(None);
        }
        state.extend_from_slice(&bytes);
    }
    Ok(Some(state))
}

/// Removes the chunks none of the `kept` checkpoints names (best effort: a chunk left behind
/// is removed by a later save).
fn forget_chunks(chunks: &Path, kept: &[(u64, PathBuf)]) {
    let mut named = BTreeSet::new();
    for (_, path) in kept {
        let Ok(body) = fs::read(path) else {
            // Unreadable now: keep every chunk rather than guess.
            return;
        };
        if let Some(chunks) = verify(&body).and_then(chunks_of) {
            named.extend(chunks.map(|(hash, _)| chunk_name(hash)));
        }
    }
    let Ok(entries) = fs::read_dir(chunks) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !named.contains(&name) && !name.starts_with('.') {
            let _ = fs::remove_file(entry.path());
        }
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
        assert_eq!(manifests(&pdir).len(), 2);

        // A torn newest manifest is skipped for the one before.
        let path = pdir.join(format!("{:020}{SUFFIX}", 30));
        let mut body = fs::read(&path).unwrap();
        body[0] ^= 1;
        fs::write(&path, body).unwrap();
        assert_eq!(store.load("events.raw", 3).unwrap().unwrap().offset, 20);
        // Other partitions are separate.
        assert_eq!(store.load("events.raw", 4).unwrap(), None);
    }

    fn manifests(dir: &Path) -> Vec<u64> {
        list(dir).unwrap().into_iter().map(|(o, _)| o).collect()
    }

    /// Pseudo-random bytes, so content-defined cuts fall as they would in real state.
    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..n).map(|_| rng.u8(..)).collect()
    }

    #[test]
    fn a_checkpoint_writes_only_the_chunks_that_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Checkpoints::new(dir.path(), "process");
        let mut state = noise(64 << 20, 1);
        let first = store
            .save(
                "events.raw",
                0,
                &Checkpoint {
                    offset: 1,
                    state: state.clone(),
                },
            )
            .unwrap();
        assert_eq!(first.state_bytes, 64 << 20);
        assert_eq!(first.written_bytes, 64 << 20);

        // New ids at the end, a few forgotten at the start, one changed in the middle.
        state.extend(noise(2 << 20, 2));
        state.drain(..4096);
        state[30 << 20] ^= 0xff;
        let second = store
            .save(
                "events.raw",
                0,
                &Checkpoint {
                    offset: 2,
                    state: state.clone(),
                },
            )
            .unwrap();
        assert!(
            second.written_bytes < 16 << 20,
            "{} of {} bytes written",
            second.written_bytes,
            second.state_bytes
        );
        let loaded = store.load("events.raw", 0).unwrap().unwrap();
        assert_eq!(loaded.offset, 2);
        assert!(loaded.state == state, "the state reads back whole");

        // A third save drops the first checkpoint and the chunks only it named.
        let chunks = dir.path().join("process/events.raw/0").join(CHUNKS);
        let before = fs::read_dir(&chunks).unwrap().count();
        state.truncate(8 << 20);
        store
            .save(
                "events.raw",
                0,
                &Checkpoint {
                    offset: 3,
                    state: state.clone(),
                },
            )
            .unwrap();
        let after = fs::read_dir(&chunks).unwrap().count();
        assert!(after < before, "{after} chunks after, {before} before");
        assert_eq!(manifests(&dir.path().join("process/events.raw/0")), [2, 3]);
        assert!(store.load("events.raw", 0).unwrap().unwrap().state == state);
    }

    #[test]
    fn a_damaged_or_missing_chunk_falls_back_to_the_checkpoint_before() {
        let dir = tempfile::tempdir().unwrap();
        let store = Checkpoints::new(dir.path(), "process");
        let old = noise(3 << 20, 3);
        let new = noise(3 << 20, 4);
        for (offset, state) in [(5, &old), (9, &new)] {
            let state = state.clone();
            store.save("t", 0, &Checkpoint { offset, state }).unwrap();
        }
        let chunks = dir.path().join("process/t/0").join(CHUNKS);
        let named = |state: &[u8]| {
            fastcdc::v2020::FastCDC::new(state, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX)
                .map(|c| {
                    chunks.join(format!(
                        "{:032x}",
                        xxh3_128(&state[c.offset..c.offset + c.length])
                    ))
                })
                .collect::<Vec<_>>()
        };
        let newest = named(&new);
        let mut bytes = fs::read(&newest[0]).unwrap();
        bytes[7] ^= 1;
        fs::write(&newest[0], bytes).unwrap();
        let loaded = store.load("t", 0).unwrap().unwrap();
        assert_eq!(loaded.offset, 5);
        assert!(loaded.state == old);
        fs::remove_file(&named(&old)[1]).unwrap();
        assert_eq!(store.load("t", 0).unwrap(), None);
    }

    #[test]
    fn a_checkpoint_written_before_chunks_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("process/t/1");
        fs::create_dir_all(&pdir).unwrap();
        let state = b"the state itself".to_vec();
        let mut body = state.clone();
        body.extend_from_slice(&xxh3_64(&state).to_le_bytes());
        fs::write(pdir.join(format!("{:020}{SUFFIX}", 12)), body).unwrap();
        let loaded = Checkpoints::new(dir.path(), "process")
            .load("t", 1)
            .unwrap();
        assert_eq!(loaded, Some(Checkpoint { offset: 12, state }));
    }
}
