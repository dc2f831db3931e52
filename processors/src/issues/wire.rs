//! What travels on `errors.grouped`, from the process stage (and the admin API) to the issues
//! stage: its key, and the header that names an error's source record.

/// The key of a project's messages on `errors.grouped`.
pub fn grouped_key(project: &str) -> Vec<u8> {
    project.as_bytes().to_vec()
}

/// The header on `errors.grouped` naming the `events.raw` record an error came from, as
/// `partition:offset`.
pub const SOURCE_HEADER: &str = "trellis-source";

/// The [`SOURCE_HEADER`] value for a record of `events.raw`.
pub fn source_header(partition: u32, offset: u64) -> trellis_bus::Header {
    trellis_bus::Header {
        name: SOURCE_HEADER.into(),
        value: format!("{partition}:{offset}").into_bytes(),
    }
}

pub(super) fn parse_source(value: &[u8]) -> Option<(u32, u64)> {
    let (partition, offset) = std::str::from_utf8(value).ok()?.split_once(':')?;
    Some((partition.parse().ok()?, offset.parse().ok()?))
}
