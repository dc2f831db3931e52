//! Every project's grouping rules, compiled once: the default rules and each project's own.

use std::collections::{BTreeMap, HashMap};

use super::{Grouper, GroupingConfig};

/// Every project's grouping rules, compiled once.
pub struct Groupers {
    default: Grouper,
    projects: HashMap<String, Grouper>,
}

impl Groupers {
    /// Compiles the default rules and each project's; the error names the bad rule.
    pub fn new(
        default: &GroupingConfig,
        projects: &BTreeMap<String, GroupingConfig>,
    ) -> Result<Self, String> {
        let default = Grouper::new(default).map_err(|e| format!("processors.grouping: {e}"))?;
        let projects = projects
            .iter()
            .map(|(name, config)| {
                Grouper::new(config)
                    .map(|g| (name.clone(), g))
                    .map_err(|e| format!("processors.project_grouping.{name}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Groupers { default, projects })
    }

    /// The default rules for every project.
    pub fn default_rules() -> Self {
        Groupers::new(&GroupingConfig::default(), &BTreeMap::new())
            .expect("the default grouping rules compile")
    }

    /// The rules of `project`.
    pub fn for_project(&self, project: &str) -> &Grouper {
        self.projects.get(project).unwrap_or(&self.default)
    }
}
