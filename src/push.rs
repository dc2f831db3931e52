//! `trellis push`: what the push outcomes (Expo's tickets and receipts, the `push` table) tell
//! an app server, answered from the Parquet files.

use std::path::Path;

use anyhow::Context;
use trellis_sinks::query::{OutputFormat, query};

/// Push commands.
#[derive(clap::Subcommand)]
pub enum Push {
    /// Lists the push tokens whose latest outcome is `DeviceNotRegistered` (the app was
    /// uninstalled or its token expired), so the app server can stop sending to them.
    InvalidTokens {
        /// Only this project's tokens.
        #[arg(long)]
        project: Option<String>,
        /// How to print the answer: table, csv or json.
        #[arg(long, default_value = "table")]
        format: String,
    },
}

/// The tokens whose newest outcome (a ticket's receipt when it has one, else the ticket) is
/// `DeviceNotRegistered`, with when that was seen: a token that worked again since is not
/// listed.
pub fn invalid_tokens_sql(project: Option<&str>) -> String {
    let only = project
        .map(|p| format!("AND t.project = '{}'", p.replace('\'', "''")))
        .unwrap_or_default();
    format!(
        "WITH final AS (\n\
         \x20 SELECT t.project, t.token,\n\
         \x20   CASE WHEN r.ticket_id IS NULL THEN t.at_ms ELSE r.at_ms END AS at_ms,\n\
         \x20   CASE WHEN r.ticket_id IS NULL THEN t.error ELSE r.error END AS error\n\
         \x20 FROM push t LEFT JOIN push r\n\
         \x20   ON r.step = 'receipt' AND r.project = t.project AND r.ticket_id = t.ticket_id\n\
         \x20 WHERE t.step = 'ticket' AND t.token IS NOT NULL {only}\n\
         ), latest AS (\n\
         \x20 SELECT project, token, max(at_ms) AS at_ms FROM final GROUP BY project, token\n\
         )\n\
         SELECT f.project, f.token, max(f.at_ms) AS seen_ms\n\
         FROM final f JOIN latest l\n\
         \x20 ON f.project = l.project AND f.token = l.token AND f.at_ms = l.at_ms\n\
         WHERE f.error = 'DeviceNotRegistered'\n\
         GROUP BY f.project, f.token ORDER BY f.project, f.token"
    )
}

/// Runs a push command over the Parquet files under `root`.
pub async fn run(command: Push, root: &Path) -> anyhow::Result<()> {
    match command {
        Push::InvalidTokens { project, format } => {
            let format: OutputFormat = format
                .parse()
                .map_err(|e| anyhow::anyhow!("--format: {e}"))?;
            if !root.join("push").is_dir() {
                anyhow::bail!(
                    "no push outcomes are stored yet under {}: forward Expo's tickets and receipts to POST /v1/projects/{{project}}/push/tickets and /push/receipts",
                    root.display()
                );
            }
            let answer = query(root, &invalid_tokens_sql(project.as_deref()), format)
                .await
                .context("reading the push table")?;
            print!("{answer}");
            if !answer.ends_with('\n') {
                println!();
            }
            Ok(())
        }
    }
}
