//! The generated DDL runs on a real ClickHouse server (the one `scripts/test.sh` starts, at
//! `TEST_TRELLIS_CLICKHOUSE_URL`), which then reports exactly the columns the mapping promises,
//! and a row written through the mapping reads back.

use trellis_schemas::{Kind, clickhouse};

fn url() -> String {
    std::env::var("TEST_TRELLIS_CLICKHOUSE_URL")
        .expect("TEST_TRELLIS_CLICKHOUSE_URL is not set: run the suite with scripts/test.sh, which starts ClickHouse")
}

fn query(sql: &str) -> String {
    let mut response = ureq::post(&url())
        .config()
        .http_status_as_error(false)
        .build()
        .send(sql)
        .unwrap();
    let status = response.status();
    let body = response.body_mut().read_to_string().unwrap();
    assert!(status.is_success(), "ClickHouse refused:\n{sql}\n{body}");
    body
}

#[test]
fn every_table_is_created_with_the_promised_columns() {
    let database = format!(
        "ddl_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    query(&format!("CREATE DATABASE {database}"));
    for kind in Kind::ALL {
        let ddl = clickhouse::create_table(&database, kind.table());
        query(&ddl);
        query(&ddl); // idempotent
        let described = query(&format!(
            "SELECT name, type FROM system.columns WHERE database = '{database}' AND table = '{}' FORMAT TabSeparated",
            kind.table().name()
        ));
        let actual: Vec<(String, String)> = described
            .lines()
            .map(|l| {
                let (n, t) = l.split_once('\t').unwrap();
                (n.to_string(), t.to_string())
            })
            .collect();
        assert_eq!(actual, clickhouse::physical_columns(kind.table()), "{kind}");
    }
    // A row goes in through the mapping's column names and comes back.
    query(&format!(
        "INSERT INTO {database}.errors (event_id, project, timestamp_ms, received_at_ms, release_platform, release_app_version, \
         sdk_name, sdk_version, level, handled, exceptions, `tags.key`, `tags.value`, contexts) VALUES \
         ('e1', 'plants', 1764000000000, 1764000000400, 'ios', '2.14.0', 's', '1', 'fatal', 0, '[]', ['screen'], ['Home'], '{{}}')"
    ));
    let row = query(&format!(
        "SELECT event_id, event_date, release_app_version, tags.value FROM {database}.errors FORMAT TabSeparated"
    ));
    assert_eq!(row.trim(), "e1\t2025-11-24\t2.14.0\t['Home']");
    query(&format!("DROP DATABASE {database}"));
}
