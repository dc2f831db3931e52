//! The README's analyst queries are the ones the ClickHouse query test runs.

#[test]
fn the_readme_lists_every_tested_analyst_query_verbatim() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let queries =
        std::fs::read_to_string(format!("{root}/sinks/src/clickhouse/queries.sql")).unwrap();
    let mut count = 0;
    for block in queries.split("\n-- name: ").skip(1) {
        let sql: Vec<&str> = block
            .lines()
            .skip(1)
            .filter(|l| !l.starts_with("--"))
            .collect();
        let sql = sql.join("\n");
        let sql = sql.trim();
        assert!(
            readme.contains(sql),
            "README.md lacks the query {}",
            block.lines().next().unwrap_or_default()
        );
        count += 1;
    }
    assert!(
        count >= 10,
        "{count} analyst queries; the README promises at least 10"
    );
}
