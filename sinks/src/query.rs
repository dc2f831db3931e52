//! SQL over the Parquet sink's files, with DataFusion.
//!
//! Every table of the registry ([`trellis_schemas::tables`]) is registered as a listing table
//! over its directory under the root (`events`, `errors`, `perf`, `transactions`,
//! `session_updates`, `notifications`, `sessions`, `health_partials`, `issues`, `detections`,
//! `alerts`, `audit`), with the Arrow schema from `trellis_schemas` and
//! the hive partition columns `project` (text), `date` (a date) and `hour` (0-23), so filters on
//! them skip directories. A table with no files yet still answers, with no rows. Only finished
//! files are read: those being written are dot-prefixed `.parquet.inprogress` files, and a file
//! appears under its final name by an atomic rename, so a query never sees a partial file.
//!
//! In `sessions` and `health_partials` the `project` column is the partition column (the files also
//! hold it, with the same value).

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;

use crate::parquet::layout::{EXTENSION, Table};

/// How [`query`] prints its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// An aligned text table (DataFusion's pretty printer).
    #[default]
    Table,
    /// CSV with a header line (flat columns only).
    Csv,
    /// A JSON array of objects.
    Json,
}

impl FromStr for OutputFormat {
    type Err = QueryError;

    fn from_str(s: &str) -> Result<Self, QueryError> {
        match s {
            "table" => Ok(OutputFormat::Table),
            "csv" => Ok(OutputFormat::Csv),
            "json" => Ok(OutputFormat::Json),
            other => Err(QueryError::Format(other.to_string())),
        }
    }
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The SQL is invalid, names an unknown table or column, or failed while running.
    /// DataFusion's message is the whole story (its own chain repeats it), so it is not also
    /// a `source`: a user reads it once.
    #[error("{}", .0.strip_backtrace())]
    DataFusion(DataFusionError),
    /// The answer could not be printed in the chosen format (CSV cannot hold nested columns).
    #[error("printing the answer: {0}")]
    Print(#[from] datafusion::arrow::error::ArrowError),
    /// The data directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: std::path::PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// An unknown output format.
    #[error("unknown output format {0:?}: use table, csv or json")]
    Format(String),
}

impl From<DataFusionError> for QueryError {
    fn from(error: DataFusionError) -> Self {
        QueryError::DataFusion(error)
    }
}

/// The hive partition columns every table directory has, in path order.
pub fn partition_columns() -> Vec<(String, DataType)> {
    vec![
        ("project".into(), DataType::Utf8),
        ("date".into(), DataType::Date32),
        ("hour".into(), DataType::Int32),
    ]
}

/// Runs `sql` over the tables under `root` and prints the answer in `format`.
pub async fn query(root: &Path, sql: &str, format: OutputFormat) -> Result<String, QueryError> {
    let ctx = SessionContext::new();
    register(&ctx, root).await?;
    let batches = ctx.sql(sql).await?.collect().await?;
    print(&batches, format)
}

/// The name of the table that holds every stored row of `table`, replayed duplicates included.
pub fn stored_name(table: Table) -> String {
    format!("stored_{}", table.name())
}

/// Registers every table under `root` in `ctx`: `stored_<table>` holds every row of the files,
/// and `<table>` is a view over it with one row per identity ([`Table::identity`]), so that rows
/// a replaying stage wrote twice count once.
pub async fn register(ctx: &SessionContext, root: &Path) -> Result<(), QueryError> {
    let root = match root.canonicalize() {
        Ok(root) => Some(root),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(QueryError::Io {
                path: root.to_path_buf(),
                source,
            });
        }
    };
    for table in Table::all() {
        let dir = root
            .as_ref()
            .map(|r| r.join(table.name()))
            .filter(|d| d.is_dir());
        let schema = table.schema();
        let provider: Arc<dyn datafusion::catalog::TableProvider> = match dir {
            Some(dir) => Arc::new(listing(&dir, &schema)?),
            None => Arc::new(MemTable::try_new(table_schema(&schema), vec![vec![]])?),
        };
        let stored = stored_name(table);
        ctx.register_table(stored.as_str(), provider)?;
        // The partition columns lead, so a filter on them still prunes files under the view.
        let keys: Vec<String> = partition_columns()
            .into_iter()
            .map(|(name, _)| name)
            .chain(table.identity().iter().map(|c| c.to_string()))
            .map(|column| format!("s.{column}"))
            .collect();
        // `DISTINCT ON` keeps each key's first row with `first_value`, whose columns are
        // nullable: the files are read as nullable throughout (`file_schema`), or DataFusion 55
        // finds the view's logical and physical schemas apart under a `UNION ALL`. (A
        // `ROW_NUMBER()` window instead keeps the columns as they are, but cost 4 to 6 times
        // this view's time.)
        let view = ctx
            .sql(&format!(
                "SELECT DISTINCT ON ({}) * FROM {stored} s",
                keys.join(", ")
            ))
            .await?
            .into_view();
        ctx.register_table(table.name(), view)?;
    }
    Ok(())
}

/// The file schema a listing table reads: the table's, without the columns that the partition
/// directories provide.
fn file_schema(schema: &Schema) -> SchemaRef {
    let partitions = partition_columns();
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .filter(|f| !partitions.iter().any(|(name, _)| name == f.name()))
        .map(|f| Arc::new(nullable(f)))
        .collect();
    Arc::new(Schema::new(fields))
}

/// `field`, and every field nested in it, nullable (see [`register`]).
fn nullable(field: &Field) -> Field {
    let data_type = match field.data_type() {
        DataType::Struct(children) => {
            DataType::Struct(children.iter().map(|c| Arc::new(nullable(c))).collect())
        }
        DataType::List(item) => DataType::List(Arc::new(nullable(item))),
        DataType::LargeList(item) => DataType::LargeList(Arc::new(nullable(item))),
        DataType::Map(entries, sorted) => DataType::Map(entries.clone(), *sorted),
        other => other.clone(),
    };
    field.clone().with_data_type(data_type).with_nullable(true)
}

/// The columns a query sees: the file schema and then the partition columns.
fn table_schema(schema: &Schema) -> SchemaRef {
    let mut fields: Vec<_> = file_schema(schema).fields().iter().cloned().collect();
    for (name, data_type) in partition_columns() {
        fields.push(Arc::new(Field::new(name, data_type, false)));
    }
    Arc::new(Schema::new(fields))
}

fn listing(dir: &Path, schema: &Schema) -> Result<ListingTable, QueryError> {
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(format!(".{EXTENSION}"))
        .with_table_partition_cols(partition_columns());
    let url = ListingTableUrl::parse(format!("{}/", dir.display()))?;
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(file_schema(schema));
    Ok(ListingTable::try_new(config)?)
}

fn print(batches: &[RecordBatch], format: OutputFormat) -> Result<String, QueryError> {
    use datafusion::arrow::{csv, json, util::pretty};
    match format {
        OutputFormat::Table => Ok(pretty::pretty_format_batches(batches)?.to_string()),
        OutputFormat::Csv => {
            let mut out = Vec::new();
            {
                let mut writer = csv::WriterBuilder::new().with_header(true).build(&mut out);
                for batch in batches {
                    writer.write(batch)?;
                }
            }
            Ok(String::from_utf8_lossy(&out).into_owned())
        }
        OutputFormat::Json => {
            let mut writer = json::ArrayWriter::new(Vec::new());
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
            let out = writer.into_inner();
            if out.is_empty() {
                return Ok("[]".into());
            }
            Ok(String::from_utf8_lossy(&out).into_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tables_without_files_answer_with_no_rows_and_unknown_names_fail() {
        let root = tempfile::tempdir().unwrap();
        let missing = root.path().join("nothing-yet");
        let csv = query(
            &missing,
            "SELECT count(*) AS n FROM sessions",
            OutputFormat::Csv,
        )
        .await
        .unwrap();
        assert_eq!(csv, "n\n0\n");
        let json = query(
            &missing,
            "SELECT session_id, project, date FROM sessions",
            OutputFormat::Json,
        )
        .await
        .unwrap();
        assert_eq!(json, "[]");
        let err = query(&missing, "SELECT * FROM nope", OutputFormat::Table)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        assert!(matches!(
            "yaml".parse::<OutputFormat>(),
            Err(QueryError::Format(_))
        ));
        assert_eq!("csv".parse::<OutputFormat>().unwrap(), OutputFormat::Csv);
    }
}
