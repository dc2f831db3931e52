//! The Avro, Arrow and ClickHouse schemas of every kind agree field by field, and the committed
//! `.avsc` files are exactly what the Rust types imply.

use apache_avro::Schema as AvroSchema;
use apache_avro::schema::{RecordSchema, UnionSchema};
use arrow_schema::{DataType, Field};
use trellis_schemas::clickhouse::{self, ColumnType, Encoding};
use trellis_schemas::{Kind, arrow, avro};

/// `UPDATE_AVSC=1 cargo test -p trellis-schemas --test agreement` rewrites the `.avsc` files.
#[test]
fn committed_avsc_files_match_the_types() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/avro");
    let bless = std::env::var_os("UPDATE_AVSC").is_some();
    for kind in Kind::ALL {
        let path = format!("{dir}/{kind}.avsc");
        let derived = avro::derived_avsc(kind);
        if bless {
            std::fs::write(&path, &derived).unwrap();
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap();
        let committed = AvroSchema::parse_str(&committed).unwrap();
        assert_eq!(
            committed.canonical_form(),
            avro::derived_schema(kind).canonical_form(),
            "{path} is out of date with the {kind} type; \
             run `UPDATE_AVSC=1 cargo test -p trellis-schemas --test agreement`"
        );
    }
}

/// What a field holds, said the same way for every format.
#[derive(Debug, Clone, PartialEq)]
enum Shape {
    Text,
    Long,
    Double,
    Bool,
    Nullable(Box<Shape>),
    List(Box<Shape>),
    Record(Vec<(String, Shape)>),
}

fn avro_shape(schema: &AvroSchema) -> Shape {
    match schema {
        AvroSchema::String => Shape::Text,
        // Unit enums travel as symbols in Avro and as their names in Arrow and ClickHouse.
        AvroSchema::Enum(_) => Shape::Text,
        AvroSchema::Long | AvroSchema::Int => Shape::Long,
        AvroSchema::Double => Shape::Double,
        AvroSchema::Boolean => Shape::Bool,
        AvroSchema::Array(a) => Shape::List(Box::new(avro_shape(&a.items))),
        AvroSchema::Union(UnionSchema { .. }) => {
            let variants = match schema {
                AvroSchema::Union(u) => u.variants(),
                _ => unreachable!(),
            };
            assert_eq!(variants.len(), 2, "only [null, T] unions are used");
            assert_eq!(
                variants[0],
                AvroSchema::Null,
                "null comes first in optional fields"
            );
            Shape::Nullable(Box::new(avro_shape(&variants[1])))
        }
        AvroSchema::Record(RecordSchema { fields, .. }) => Shape::Record(
            fields
                .iter()
                .map(|f| (f.name.clone(), avro_shape(&f.schema)))
                .collect(),
        ),
        other => panic!("the model uses an Avro type the agreement test does not know: {other:?}"),
    }
}

fn arrow_shape(field: &Field) -> Shape {
    let base = match field.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 => Shape::Text,
        DataType::Dictionary(_, value) if **value == DataType::Utf8 => Shape::Text,
        DataType::Int64 | DataType::Int32 => Shape::Long,
        DataType::Float64 => Shape::Double,
        DataType::Boolean => Shape::Bool,
        DataType::List(item) | DataType::LargeList(item) => {
            Shape::List(Box::new(arrow_shape(item)))
        }
        DataType::Struct(children) => Shape::Record(
            children
                .iter()
                .map(|c| (c.name().clone(), arrow_shape(c)))
                .collect(),
        ),
        other => panic!("the model uses an Arrow type the agreement test does not know: {other}"),
    };
    // serde_arrow marks list items nullable only when they are; records are never optional here.
    if field.is_nullable() {
        Shape::Nullable(Box::new(base))
    } else {
        base
    }
}

#[test]
fn avro_and_arrow_agree_field_by_field() {
    for kind in Kind::ALL {
        let avro = avro_shape(avro::schema(kind));
        let arrow = Shape::Record(
            arrow::fields(kind)
                .iter()
                .map(|f| (f.name().clone(), arrow_shape(f)))
                .collect(),
        );
        assert_eq!(avro, arrow, "{kind}: Avro and Arrow disagree");
    }
}

/// Walks the Avro shape the way the ClickHouse mapping documents it, and compares.
fn expected_columns(fields: &[(String, Shape)], prefix: &str, out: &mut Vec<(String, String)>) {
    fn scalar(shape: &Shape) -> String {
        match shape {
            Shape::Text => "String".into(),
            Shape::Long => "Int64".into(),
            Shape::Double => "Float64".into(),
            Shape::Bool => "UInt8".into(),
            Shape::Nullable(inner) => format!("Nullable({})", scalar(inner)),
            other => panic!("not a scalar: {other:?}"),
        }
    }
    for (name, shape) in fields {
        match shape {
            Shape::Record(children) => {
                let p = if name == "common" {
                    prefix.to_string()
                } else {
                    format!("{prefix}{name}_")
                };
                expected_columns(children, &p, out);
            }
            Shape::List(item) => match &**item {
                Shape::Record(children)
                    if children
                        .iter()
                        .all(|(_, s)| !matches!(s, Shape::Record(_) | Shape::List(_))) =>
                {
                    for (child, s) in children {
                        out.push((
                            format!("{prefix}{name}.{child}"),
                            format!("Array({})", scalar(s)),
                        ));
                    }
                }
                Shape::Record(_) | Shape::List(_) => {
                    out.push((format!("{prefix}{name}"), "String".into()))
                }
                s => out.push((format!("{prefix}{name}"), format!("Array({})", scalar(s)))),
            },
            s => out.push((format!("{prefix}{name}"), scalar(s))),
        }
    }
}

#[test]
fn clickhouse_columns_agree_with_avro() {
    for kind in Kind::ALL {
        let Shape::Record(fields) = avro_shape(avro::schema(kind)) else {
            unreachable!()
        };
        let mut expected = Vec::new();
        expected_columns(&fields, "", &mut expected);
        expected.push(("event_date".into(), "Date".into()));
        assert_eq!(
            clickhouse::physical_columns(kind.table()),
            expected,
            "{kind}: ClickHouse and Avro disagree"
        );
    }
}

#[test]
fn clickhouse_encodes_deep_lists_as_json_and_keeps_every_field() {
    let columns = clickhouse::columns(Kind::Error.table());
    let exceptions = columns.iter().find(|c| c.name == "exceptions").unwrap();
    assert_eq!(
        (exceptions.column_type.clone(), exceptions.encoding.clone()),
        (ColumnType::String, Encoding::Json)
    );
    let app_version = columns
        .iter()
        .find(|c| c.name == "release_app_version")
        .unwrap();
    assert_eq!(app_version.path, ["common", "release", "app_version"]);
    let update_id = columns
        .iter()
        .find(|c| c.name == "release_update_id")
        .unwrap();
    assert_eq!(update_id.column_type.to_string(), "Nullable(String)");
    assert!(columns.iter().any(|c| c.name == "release_channel"));
    assert!(columns.iter().any(|c| c.name == "release_runtime_version"));
}
