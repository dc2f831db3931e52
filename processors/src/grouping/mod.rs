//! Error grouping: which error events are the same bug, the issue each group becomes, and the
//! issue's lifecycle. Pure logic: no I/O, no clock (times are passed in), no bus.
//!
//! **Fingerprints** ([`Grouper::fingerprint`]). The first of these that applies decides:
//! a project's fingerprint rule ([`FingerprintRule`], matching exception type, message or tag);
//! the SDK's fingerprint; the exception types of the whole chain with the normalized in-app
//! frames (all frames when none is in-app; [`InAppRule`]s override the SDK's flag), joined by the
//! normalized messages when no kept frame has a module or file (unsymbolicated bundle frames); the
//! exception types with their normalized messages; the normalized message alone. In custom fingerprints
//! `{{ default }}` stands for the default components, and `{{ default }}` alone is the same as
//! none. Normalizing a frame keeps its function and its module (or its file's last two path
//! segments) and drops line and column numbers, addresses, hashes, bundle and chunk names,
//! OTA-update bundle paths, and minified, anonymous and `[native code]` JavaScript frames;
//! normalizing a message replaces numbers, UUIDs, hashes, emails, URLs and quoted values with
//! placeholders. The components are hashed with xxh3-128 and the issue id derived from the
//! project and that hash ([`IssueId::derive`]), so every processor instance agrees without
//! coordination.
//!
//! **Lifecycle** ([`Issue::observe`], [`Issue::apply`], [`Issue::tick`]). An issue is `new`,
//! then `ongoing` after the new-issue window; an admin resolves it (now, in the next release,
//! or in release X) or ignores it (forever, until N more events, N more users, or a time). A
//! resolved issue becomes `regressed` only when it is seen in a release newer than the
//! resolution: old builds and older OTA updates still in use never reopen it. Releases are
//! ordered by version, build, then OTA update by its first-seen time ([`ReleaseClock`]).
//!
//! **Similar issues** ([`SimilarityIndex`], [`merge_issues`]): MinHash signatures over the
//! fingerprint tokens propose merge candidates for a new issue; merging B into A adds up the
//! counts and makes B an alias of A.

mod config;
mod fingerprint;
mod issue;
mod lifecycle;
mod normalize;
mod projects;
mod release;
mod similar;

pub use config::{FingerprintRule, GroupingConfig, GroupingConfigError, InAppRule};
pub use fingerprint::{Fingerprint, FingerprintHash, Grouper, GroupingRule, ParseHashError};
pub use issue::{
    Issue, IssueId, MAX_ISSUE_RELEASES, MAX_ISSUE_USERS, ReleaseSeen, title, user_hash,
};
pub use lifecycle::{
    Command, IgnoreUntil, LifecycleError, LifecyclePolicy, Outcome, Resolution, Status,
};
pub use projects::Groupers;
pub use release::{ReleaseClock, ReleaseKey, compare_versions, natural_cmp};
pub use similar::{
    Alias, AliasTable, MergeCandidate, MergeError, SIGNATURE_LEN, Signature, SimilarityIndex,
    merge_issues, tokens,
};
