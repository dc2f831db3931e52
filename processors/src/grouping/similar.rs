//! Merge candidates and merging.
//!
//! An issue's similarity signature is a MinHash (64 values) over the tokens of its fingerprint
//! components: each component, and for frames also their function and location alone, so an
//! issue whose bug moved to another file still resembles its old self. Two signatures agree in
//! about as many positions as the Jaccard similarity of the token sets. A [`SimilarityIndex`]
//! finds candidates by locality-sensitive hashing (32 bands of 2 values: pairs at Jaccard 0.3
//! are found with probability 0.95, at 0.5 with 0.9999) and ranks them by estimated similarity.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, xxh3_128};

use super::fingerprint::Grouper;
use super::issue::{Issue, IssueId};
use super::lifecycle::Status;

/// Values in a signature.
pub const SIGNATURE_LEN: usize = 64;
/// Values per LSH band.
const ROWS_PER_BAND: usize = 2;

/// A MinHash signature of a token set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature(Vec<u64>);

impl Signature {
    /// The signature of a token set; `None` when there are no tokens.
    pub fn of_tokens<I, S>(tokens: I) -> Option<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut mins = vec![u64::MAX; SIGNATURE_LEN];
        let mut any = false;
        for token in tokens {
            any = true;
            let hash = xxh3_128(token.as_ref().as_bytes());
            let (a, b) = (hash as u64, ((hash >> 64) as u64) | 1);
            for (i, min) in mins.iter_mut().enumerate() {
                let value = mix(a.wrapping_add(b.wrapping_mul(i as u64)));
                *min = (*min).min(value);
            }
        }
        any.then_some(Self(mins))
    }

    /// The signature of an issue (or a fingerprint) from its components.
    pub fn of_components(components: &[String]) -> Option<Self> {
        Self::of_tokens(tokens(components))
    }

    /// The estimated Jaccard similarity, from 0 to 1.
    pub fn similarity(&self, other: &Signature) -> f64 {
        let agree = self.0.iter().zip(&other.0).filter(|(a, b)| a == b).count();
        agree as f64 / SIGNATURE_LEN as f64
    }

    fn band_keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.0
            .chunks(ROWS_PER_BAND)
            .enumerate()
            .map(|(band, rows)| {
                let mut bytes = [0u8; 8 * (ROWS_PER_BAND + 1)];
                bytes[..8].copy_from_slice(&(band as u64).to_le_bytes());
                for (i, row) in rows.iter().enumerate() {
                    bytes[8 * (i + 1)..8 * (i + 2)].copy_from_slice(&row.to_le_bytes());
                }
                xxh3_64(&bytes)
            })
    }
}

/// The similarity tokens of fingerprint components: each component, and for a frame
/// (`frame:function@location`) also `fn:function` and `loc:location`.
pub fn tokens(components: &[String]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for component in components {
        out.insert(component.clone());
        if let Some(frame) = component.strip_prefix("frame:") {
            let (function, location) = frame.split_once('@').unwrap_or((frame, ""));
            if !function.is_empty() {
                out.insert(format!("fn:{function}"));
            }
            if !location.is_empty() {
                out.insert(format!("loc:{location}"));
            }
        }
    }
    out
}

/// splitmix64's finalizer, so the 64 hash functions are not linear in each other.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// An existing issue that resembles a new one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeCandidate {
    /// The existing issue.
    pub issue: IssueId,
    /// The estimated Jaccard similarity, from 0 to 1.
    pub similarity: f64,
}

/// The signatures of a project's issues, indexed to find similar ones without comparing all.
#[derive(Debug, Clone, Default)]
pub struct SimilarityIndex {
    signatures: HashMap<IssueId, Signature>,
    buckets: HashMap<u64, Vec<IssueId>>,
}

impl SimilarityIndex {
    /// Adds (or replaces) an issue's signature.
    pub fn insert(&mut self, issue: IssueId, signature: Signature) {
        self.remove(&issue);
        for key in signature.band_keys() {
            self.buckets.entry(key).or_default().push(issue.clone());
        }
        self.signatures.insert(issue, signature);
    }

    /// Removes an issue, for example after it was merged into another.
    pub fn remove(&mut self, issue: &IssueId) {
        let Some(signature) = self.signatures.remove(issue) else {
            return;
        };
        for key in signature.band_keys() {
            if let Some(bucket) = self.buckets.get_mut(&key) {
                bucket.retain(|id| id != issue);
                if bucket.is_empty() {
                    self.buckets.remove(&key);
                }
            }
        }
    }

    /// How many issues are indexed.
    pub fn len(&self) -> usize {
        self.signatures.len()
    }

    /// Whether no issue is indexed.
    pub fn is_empty(&self) -> bool {
        self.signatures.is_empty()
    }

    /// The merge candidates for `issue` (usually a new one) by the project's threshold and
    /// limit; none when its fingerprint has no components.
    pub fn candidates_for(&self, grouper: &Grouper, issue: &Issue) -> Vec<MergeCandidate> {
        let Some(signature) = Signature::of_components(&issue.components) else {
            return Vec::new();
        };
        let (threshold, limit) = grouper.merge_settings();
        self.candidates(&signature, Some(&issue.id), threshold, limit)
    }

    /// The at most `limit` indexed issues most similar to `signature`, at or above `threshold`,
    /// most similar first (ties by id), leaving out `exclude` (the new issue itself).
    pub fn candidates(
        &self,
        signature: &Signature,
        exclude: Option<&IssueId>,
        threshold: f64,
        limit: usize,
    ) -> Vec<MergeCandidate> {
        let mut seen: HashSet<&IssueId> = HashSet::new();
        let mut out: Vec<MergeCandidate> = Vec::new();
        for key in signature.band_keys() {
            for id in self.buckets.get(&key).into_iter().flatten() {
                if Some(id) == exclude || !seen.insert(id) {
                    continue;
                }
                let Some(other) = self.signatures.get(id) else {
                    continue;
                };
                let similarity = signature.similarity(other);
                if similarity >= threshold {
                    out.push(MergeCandidate {
                        issue: id.clone(),
                        similarity,
                    });
                }
            }
        }
        out.sort_by(|a, b| {
            b.similarity
                .total_cmp(&a.similarity)
                .then_with(|| a.issue.cmp(&b.issue))
        });
        out.truncate(limit);
        out
    }
}

/// After a merge, events of `from` belong to `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alias {
    /// The merged issue.
    pub from: IssueId,
    /// The issue it was merged into.
    pub to: IssueId,
}

/// A merge that cannot be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// The issues belong to different projects.
    #[error("cannot merge issue {from} of project `{from_project}` into project `{into_project}`")]
    OtherProject {
        /// The issue to merge.
        from: IssueId,
        /// Its project.
        from_project: String,
        /// The target's project.
        into_project: String,
    },
    /// An issue merged into itself.
    #[error("cannot merge issue {0} into itself")]
    SameIssue(IssueId),
}

/// Merges issue `from` into `into`: counts and times add up, users and releases are united,
/// and `from` (with the issues merged into it before) becomes an alias of `into`. `into` keeps
/// its title, culprit, sample and status; an ignore condition on it counts only events and
/// users after the merge. Returns the aliases to record, `from`'s first.
pub fn merge_issues(into: &mut Issue, from: Issue) -> Result<Vec<Alias>, MergeError> {
    if into.project != from.project {
        return Err(MergeError::OtherProject {
            from: from.id,
            from_project: from.project,
            into_project: into.project.clone(),
        });
    }
    if into.id == from.id || into.aliases.contains(&from.id) {
        return Err(MergeError::SameIssue(from.id));
    }
    let users_before = into.users_affected();
    into.add_users(from.users.iter().copied(), from.users_level);
    let users_after = into.users_affected();
    if let Status::Ignored {
        events_at,
        users_at,
        ..
    } = &mut into.status
    {
        *events_at += from.event_count;
        *users_at += users_after.saturating_sub(users_before);
    }
    into.event_count += from.event_count;
    if from.first_seen_ms < into.first_seen_ms {
        into.first_seen_ms = from.first_seen_ms;
        into.first_release = from.first_release.clone();
    }
    into.last_seen_ms = into.last_seen_ms.max(from.last_seen_ms);
    if super::issue::severity(from.level) > super::issue::severity(into.level) {
        into.level = from.level;
    }
    into.releases_forgotten += from.releases_forgotten;
    for (key, seen) in from.releases {
        into.add_release(key, seen);
    }
    into.merged_fingerprints.push(from.fingerprint);
    into.merged_fingerprints.extend(from.merged_fingerprints);
    let mut aliases = vec![Alias {
        from: from.id.clone(),
        to: into.id.clone(),
    }];
    aliases.extend(from.aliases.iter().map(|id| Alias {
        from: id.clone(),
        to: into.id.clone(),
    }));
    into.aliases.push(from.id);
    into.aliases.extend(from.aliases);
    Ok(aliases)
}

/// Where merged issues went: resolves an issue id to the issue that now holds its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AliasTable {
    to: HashMap<IssueId, IssueId>,
}

impl AliasTable {
    /// Records an alias; chains (A→B, then B→C) resolve to the end.
    pub fn insert(&mut self, alias: Alias) {
        if alias.from != alias.to {
            self.to.insert(alias.from, alias.to);
        }
    }

    /// Forgets the aliases that lead to `target` (an issue that is itself forgotten), so the
    /// events of the issues merged into it open issues of their own again.
    pub fn forget_target(&mut self, target: &IssueId) {
        self.to.retain(|_, to| to != target);
    }

    /// The issue that holds the events of `id` (`id` itself when it was never merged).
    pub fn resolve<'a>(&'a self, id: &'a IssueId) -> &'a IssueId {
        let mut current = id;
        // A cycle cannot come from `merge_issues`; the bound guards against hand-made tables.
        for _ in 0..=self.to.len() {
            match self.to.get(current) {
                Some(next) => current = next,
                None => break,
            }
        }
        current
    }
}

#[cfg(test)]
#[path = "similar_tests.rs"]
mod tests;
