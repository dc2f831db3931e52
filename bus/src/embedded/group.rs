//! Consumer groups inside one process: members of a group split the partitions of the topics
//! they read, and the split is recomputed whenever a member joins or leaves.
//!
//! Assignment is round-robin: the `i`th partition of a topic goes to the `i mod n`th of the `n`
//! members reading it, members ordered by id. A member notices a new generation on its next poll;
//! partitions it gained start from the group's committed offset.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

#[derive(Default)]
struct Group {
    generation: u64,
    /// Member id → the topics it reads.
    members: BTreeMap<u64, Vec<String>>,
}

/// Tracks the members of every group.
#[derive(Default)]
pub(crate) struct Coordinator {
    groups: Mutex<HashMap<String, Group>>,
    next_member: Mutex<u64>,
}

impl Coordinator {
    /// Adds a member; returns its id.
    pub(crate) fn join(&self, group: &str, topics: &[&str]) -> u64 {
        let id = {
            let mut next = self.next_member.lock().expect("member counter");
            *next += 1;
            *next
        };
        let mut groups = self.groups.lock().expect("groups");
        let g = groups.entry(group.to_string()).or_default();
        g.members
            .insert(id, topics.iter().map(|t| t.to_string()).collect());
        g.generation += 1;
        id
    }

    /// Removes a member.
    pub(crate) fn leave(&self, group: &str, member: u64) {
        if let Ok(mut groups) = self.groups.lock()
            && let Some(g) = groups.get_mut(group)
        {
            g.members.remove(&member);
            g.generation += 1;
        }
    }

    /// The group's generation now.
    pub(crate) fn generation(&self, group: &str) -> u64 {
        let groups = self.groups.lock().expect("groups");
        groups.get(group).map(|g| g.generation).unwrap_or(0)
    }

    /// The partitions `member` owns, given each topic's partition count, and the generation
    /// the answer belongs to.
    pub(crate) fn assignment(
        &self,
        group: &str,
        member: u64,
        partitions: impl Fn(&str) -> Option<u32>,
    ) -> (u64, Vec<(String, u32)>) {
        let groups = self.groups.lock().expect("groups");
        let Some(g) = groups.get(group) else {
            return (0, Vec::new());
        };
        let Some(topics) = g.members.get(&member) else {
            return (g.generation, Vec::new());
        };
        let mut owned = Vec::new();
        for topic in topics {
            let readers: Vec<u64> = g
                .members
                .iter()
                .filter(|(_, t)| t.contains(topic))
                .map(|(id, _)| *id)
                .collect();
            let me = readers
                .iter()
                .position(|id| *id == member)
                .expect("member reads its topics");
            for p in 0..partitions(topic).unwrap_or(0) {
                if p as usize % readers.len() == me {
                    owned.push((topic.clone(), p));
                }
            }
        }
        (g.generation, owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_split_partitions_and_take_over_when_one_leaves() {
        let c = Coordinator::default();
        let a = c.join("g", &["t"]);
        let b = c.join("g", &["t"]);
        let parts = |_: &str| Some(4);
        let (_, pa) = c.assignment("g", a, parts);
        let (_, pb) = c.assignment("g", b, parts);
        assert_eq!(pa, vec![("t".to_string(), 0), ("t".to_string(), 2)]);
        assert_eq!(pb, vec![("t".to_string(), 1), ("t".to_string(), 3)]);
        let before = c.generation("g");
        c.leave("g", a);
        assert!(c.generation("g") > before);
        let (_, pb) = c.assignment("g", b, parts);
        assert_eq!(pb.len(), 4);
    }
}
