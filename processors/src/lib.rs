//! trellis stream processors: read `events.raw` by partition, write deduplicated events,
//! sessions, issues and windowed aggregates. (Being built: see ARCHITECTURE.md for the plan.)
#![warn(missing_docs)]
