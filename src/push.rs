//! `trellis push`: what the push outcomes (Expo's tickets and receipts, the `push` table) tell
//! an app server, answered from the Parquet files.

use std::path::Path;

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

/// The tokens to stop sending to: those whose newest decisive outcome says
/// `DeviceNotRegistered`, with when that was seen. Outcomes are ordered by their send (the
/// ticket's time); decisive are a delivery (a receipt `ok`) and `DeviceNotRegistered` (at the
/// send or in the receipt), so a send still waiting for its receipt, or one that failed for
/// another reason (`MessageRateExceeded`), does not take a gone device off the list, and a
/// device that received a later send is not on it. Sends of one time that disagree count as a
/// delivery.
pub fn invalid_tokens_sql(project: Option<&str>) -> String {
    let only = project
        .map(|p| format!("AND t.project = '{}'", p.replace('\'', "''")))
        .unwrap_or_default();
    format!(
        "WITH final AS (\n\
         \x20 SELECT t.project, t.token, t.at_ms AS sent_ms,\n\
         \x20   CASE WHEN r.ticket_id IS NULL THEN t.at_ms ELSE r.at_ms END AS seen_ms,\n\
         \x20   r.status = 'ok' AS delivered,\n\
         \x20   coalesce(r.error, t.error) = 'DeviceNotRegistered' AS gone\n\
         \x20 FROM push t LEFT JOIN push r\n\
         \x20   ON r.step = 'receipt' AND r.project = t.project AND r.ticket_id = t.ticket_id\n\
         \x20 WHERE t.step = 'ticket' AND t.token IS NOT NULL {only}\n\
         ), decisive AS (\n\
         \x20 SELECT * FROM final WHERE delivered OR gone\n\
         ), latest AS (\n\
         \x20 SELECT project, token, max(sent_ms) AS sent_ms FROM decisive GROUP BY project, token\n\
         )\n\
         SELECT d.project, d.token, max(d.seen_ms) AS seen_ms\n\
         FROM decisive d JOIN latest l\n\
         \x20 ON d.project = l.project AND d.token = l.token AND d.sent_ms = l.sent_ms\n\
         GROUP BY d.project, d.token\n\
         HAVING NOT bool_or(coalesce(d.delivered, false))\n\
         ORDER BY d.project, d.token"
    )
}

/// Runs a push command over the Parquet files under `root`.
pub async fn run(command: Push, root: &Path) -> anyhow::Result<()> {
    match command {
        Push::InvalidTokens { project, format } => {
            if !root.join("push").is_dir() {
                anyhow::bail!(
                    "no push outcomes are stored yet under {}: forward Expo's tickets and receipts to POST /v1/projects/{{project}}/push/tickets and /push/receipts",
                    root.display()
                );
            }
            let sql = invalid_tokens_sql(project.as_deref());
            crate::print_query(root, &sql, &format, "reading the push table").await
        }
    }
}
