//! A model value straight to one `RowBinary` row, by walking it with serde: no intermediate tree.
//!
//! The plan's columns come from the same types, flattened depth-first in field order
//! ([`trellis_schemas::clickhouse`]), so the fields a serializer visits meet the columns in the
//! order the `INSERT` names them. A field whose path is the next column's is written as that
//! column; a struct whose path prefixes it is walked; an absent struct (`None`) writes every
//! column under it as null; a field no column names is skipped. `Nested` and JSON-text columns
//! (a few per row at most) go through `serde_json` as [`super::encode`]'s tree path does, so both
//! write the same bytes; a test holds them equal over a simulated fleet.

use std::fmt;

use serde::Serialize;
use serde::ser::{self, Impossible, SerializeSeq, SerializeStruct};
use trellis_schemas::clickhouse::{Column, ColumnType, Encoding};

use super::encode::{write_len, write_null, write_str, write_value_column};

/// Why a value did not fit its column.
#[derive(Debug)]
pub struct Error {
    /// The column, when known.
    pub column: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.reason)
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error {
            column: String::new(),
            reason: msg.to_string(),
        }
    }
}

/// Appends `value`'s row of `columns` to `out`. On an error `out` may hold part of the row; the
/// caller truncates.
pub fn write_row<T: Serialize + ?Sized>(
    columns: &[Column],
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    let mut row = Row {
        columns,
        next: 0,
        path: Vec::new(),
        out,
    };
    value.serialize(&mut row)?;
    // Columns no field reached (a missing field reads as null, as in the tree path).
    while row.next < columns.len() {
        row.null_column()?;
    }
    Ok(())
}

struct Row<'a> {
    columns: &'a [Column],
    next: usize,
    path: Vec<&'static str>,
    out: &'a mut Vec<u8>,
}

enum Place {
    /// The next column is this field.
    Column,
    /// The next column is inside this field.
    Inside,
    /// No column is this field or inside it.
    Nowhere,
}

impl Row<'_> {
    fn place(&self) -> Place {
        let Some(column) = self.columns.get(self.next) else {
            return Place::Nowhere;
        };
        let path = &column.path;
        let prefix =
            path.len() >= self.path.len() && path.iter().zip(&self.path).all(|(a, b)| a == b);
        match (prefix, path.len() == self.path.len()) {
            (true, true) => Place::Column,
            (true, false) => Place::Inside,
            (false, _) => Place::Nowhere,
        }
    }

    /// Writes the next column as null and moves past it.
    fn null_column(&mut self) -> Result<(), Error> {
        let column = &self.columns[self.next];
        write_null(column, self.out).map_err(|reason| Error {
            column: column.name.clone(),
            reason,
        })?;
        self.next += 1;
        Ok(())
    }

    /// Writes every column under the current path as null (an absent struct).
    fn null_inside(&mut self) -> Result<(), Error> {
        while matches!(self.place(), Place::Inside | Place::Column) {
            self.null_column()?;
        }
        Ok(())
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Error> {
        self.path.push(key);
        let result = match self.place() {
            Place::Column => {
                let column = &self.columns[self.next];
                let named = |mut e: Error| {
                    e.column.clone_from(&column.name);
                    e
                };
                match (&column.encoding, &column.column_type) {
                    (Encoding::Direct, ColumnType::Nested(_)) | (Encoding::Json, _) => {
                        let tree = serde_json::to_value(value).map_err(|e| Error {
                            column: column.name.clone(),
                            reason: e.to_string(),
                        })?;
                        write_value_column(column, &tree, self.out).map_err(|reason| Error {
                            column: column.name.clone(),
                            reason,
                        })?;
                    }
                    (Encoding::Direct, t) => value
                        .serialize(Leaf {
                            t,
                            out: &mut *self.out,
                        })
                        .map_err(named)?,
                }
                self.next += 1;
                Ok(())
            }
            Place::Inside => value.serialize(&mut *self),
            Place::Nowhere => Ok(()),
        };
        self.path.pop();
        result
    }
}

fn unsupported(what: &str) -> Error {
    ser::Error::custom(format!("{what} has no column mapping"))
}

impl<'a> ser::Serializer for &mut Row<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Impossible<(), Error>;
    type SerializeTuple = Impossible<(), Error>;
    type SerializeTupleStruct = Impossible<(), Error>;
    type SerializeTupleVariant = Impossible<(), Error>;
    type SerializeMap = Impossible<(), Error>;
    type SerializeStruct = Self;
    type SerializeStructVariant = Impossible<(), Error>;

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, Error> {
        Ok(self)
    }
    fn serialize_none(self) -> Result<(), Error> {
        self.null_inside()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        self.null_inside()
    }

    fn serialize_bool(self, _: bool) -> Result<(), Error> {
        Err(unsupported("a bool record"))
    }
    fn serialize_i8(self, _: i8) -> Result<(), Error> {
        Err(unsupported("an integer record"))
    }
    fn serialize_i16(self, _: i16) -> Result<(), Error> {
        Err(unsupported("an integer record"))
    }
    fn serialize_i32(self, _: i32) -> Result<(), Error> {
        Err(unsupported("an integer record"))
    }
    fn serialize_i64(self, _: i64) -> Result<(), Error> {
        Err(unsupported("an integer record"))
    }
    fn serialize_u8(self, _: u8) -> Result<(), Error> {
        Err(unsupported("an integer record"))
    }
    fn serialize_u16(self, _: u16) -> Result<(), Error> {
        Err(unsupported("an integer record"))
    }
    fn serialize_u32(self, _: u32) -> Result<(), Error> {
        Err(unsupported("an integer record"))
    }
    fn serialize_u64(self, _: u64) -> Result<(), Error> {
        Err(unsupported("an integer record"))
    }
    fn serialize_f32(self, _: f32) -> Result<(), Error> {
        Err(unsupported("a float record"))
    }
    fn serialize_f64(self, _: f64) -> Result<(), Error> {
        Err(unsupported("a float record"))
    }
    fn serialize_char(self, _: char) -> Result<(), Error> {
        Err(unsupported("a char record"))
    }
    fn serialize_str(self, _: &str) -> Result<(), Error> {
        Err(unsupported("a string record"))
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), Error> {
        Err(unsupported("a bytes record"))
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Error> {
        Err(unsupported("a unit struct"))
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<(), Error> {
        Err(unsupported("an enum record"))
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), Error> {
        Err(unsupported("an enum record"))
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        Err(unsupported("a list of records"))
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Error> {
        Err(unsupported("a tuple"))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Error> {
        Err(unsupported("a tuple struct"))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        Err(unsupported("an enum record"))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Err(unsupported("a map"))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        Err(unsupported("an enum record"))
    }
}

impl<'a> SerializeStruct for &mut Row<'a> {
    type Ok = ();
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.field(key, value)
    }
    fn skip_field(&mut self, key: &'static str) -> Result<(), Error> {
        self.path.push(key);
        let result = match self.place() {
            Place::Column => self.null_column(),
            Place::Inside => self.null_inside(),
            Place::Nowhere => Ok(()),
        };
        self.path.pop();
        result
    }
    fn end(self) -> Result<(), Error> {
        Ok(())
    }
}

/// One value of a column of type `t`.
struct Leaf<'a> {
    t: &'a ColumnType,
    out: &'a mut Vec<u8>,
}

impl Leaf<'_> {
    fn wrong(&self, got: impl fmt::Display) -> Error {
        ser::Error::custom(format!("expected {}, got {got}", self.t))
    }

    fn int(self, v: i128) -> Result<(), Error> {
        match self.t {
            ColumnType::Int64 => match i64::try_from(v) {
                Ok(v) => self.out.extend_from_slice(&v.to_le_bytes()),
                Err(_) => return Err(self.wrong(v)),
            },
            ColumnType::Int32 => match i32::try_from(v) {
                Ok(v) => self.out.extend_from_slice(&v.to_le_bytes()),
                Err(_) => return Err(self.wrong(v)),
            },
            ColumnType::UInt8 => match u8::try_from(v) {
                Ok(v) => self.out.push(v),
                Err(_) => return Err(self.wrong(v)),
            },
            // An integer where a float goes, as serde_json's `as_f64` allows.
            ColumnType::Float64 => self.out.extend_from_slice(&(v as f64).to_le_bytes()),
            ColumnType::Nullable(inner) => {
                self.out.push(0);
                return Leaf {
                    t: inner,
                    out: self.out,
                }
                .int(v);
            }
            _ => return Err(self.wrong(v)),
        }
        Ok(())
    }
}

impl<'a> ser::Serializer for Leaf<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Items<'a>;
    type SerializeTuple = Impossible<(), Error>;
    type SerializeTupleStruct = Impossible<(), Error>;
    type SerializeTupleVariant = Impossible<(), Error>;
    type SerializeMap = Impossible<(), Error>;
    type SerializeStruct = Impossible<(), Error>;
    type SerializeStructVariant = Impossible<(), Error>;

    fn serialize_none(self) -> Result<(), Error> {
        match self.t {
            ColumnType::Nullable(_) => self.out.push(1),
            ColumnType::Array(_) => write_len(0, self.out),
            _ => return Err(self.wrong("null")),
        }
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        self.serialize_none()
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }

    fn serialize_str(self, v: &str) -> Result<(), Error> {
        match self.t {
            ColumnType::String => write_str(v, self.out),
            ColumnType::Nullable(inner) if **inner == ColumnType::String => {
                self.out.push(0);
                write_str(v, self.out);
            }
            _ => return Err(self.wrong(format!("{v:?}"))),
        }
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, v: &'static str) -> Result<(), Error> {
        self.serialize_str(v)
    }
    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        match self.t {
            ColumnType::UInt8 => self.out.push(u8::from(v)),
            ColumnType::Nullable(inner) if **inner == ColumnType::UInt8 => {
                self.out.push(0);
                self.out.push(u8::from(v));
            }
            _ => return Err(self.wrong(v)),
        }
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), Error> {
        self.int(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), Error> {
        self.int(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), Error> {
        self.int(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<(), Error> {
        self.int(v.into())
    }
    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        self.int(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), Error> {
        self.int(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), Error> {
        self.int(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        self.int(v.into())
    }
    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        self.serialize_f64(v.into())
    }
    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        // Not a number and the infinities have no JSON form: the tree path refuses them too.
        if !v.is_finite() {
            return Err(self.wrong(v));
        }
        match self.t {
            ColumnType::Float64 => self.out.extend_from_slice(&v.to_le_bytes()),
            ColumnType::Nullable(inner) if **inner == ColumnType::Float64 => {
                self.out.push(0);
                self.out.extend_from_slice(&v.to_le_bytes());
            }
            _ => return Err(self.wrong(v)),
        }
        Ok(())
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Items<'a>, Error> {
        let (inner, nullable) = match self.t {
            ColumnType::Array(inner) => (&**inner, false),
            ColumnType::Nullable(t) => match &**t {
                ColumnType::Array(inner) => (&**inner, true),
                _ => return Err(self.wrong("a list")),
            },
            _ => return Err(self.wrong("a list")),
        };
        if nullable {
            self.out.push(0);
        }
        // Lists of known length (every `Vec`) are written in place; others are buffered.
        let buffer = match len {
            Some(n) => {
                write_len(n, self.out);
                None
            }
            None => Some(Vec::new()),
        };
        Ok(Items {
            t: inner,
            out: self.out,
            buffer,
            count: 0,
        })
    }

    fn serialize_bytes(self, _: &[u8]) -> Result<(), Error> {
        Err(self.wrong("bytes"))
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Error> {
        Err(self.wrong("a unit struct"))
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), Error> {
        Err(self.wrong("an enum with data"))
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Error> {
        Err(self.wrong("a tuple"))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Error> {
        Err(self.wrong("a tuple struct"))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        Err(self.wrong("an enum with data"))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Err(self.wrong("a map"))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Error> {
        Err(self.wrong("a record"))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        Err(self.wrong("an enum with data"))
    }
}

/// The items of an `Array` column.
struct Items<'a> {
    t: &'a ColumnType,
    out: &'a mut Vec<u8>,
    buffer: Option<Vec<u8>>,
    count: usize,
}

impl SerializeSeq for Items<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.count += 1;
        let out = match &mut self.buffer {
            Some(buffer) => buffer,
            None => &mut *self.out,
        };
        value.serialize(Leaf { t: self.t, out })
    }
    fn end(self) -> Result<(), Error> {
        if let Some(buffer) = self.buffer {
            write_len(self.count, self.out);
            self.out.extend_from_slice(&buffer);
        }
        Ok(())
    }
}
