//! Any bytes on a bus topic decode to an event or record, or to an error: never a panic, and
//! never an allocation the input does not pay for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_schemas::records::{
    self, Alert, AuditEntry, Detection, GuardCommand, HealthPartial, IssueCommand, IssueRecord,
    SessionRecord, SessionStart,
};
use trellis_schemas::avro;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = avro::decode(data) {
        // What decodes encodes again.
        avro::encode(&event).expect("a decoded event encodes");
    }
    let _ = records::decode::<SessionRecord>(data);
    let _ = records::decode::<HealthPartial>(data);
    let _ = records::decode::<IssueRecord>(data);
    let _ = records::decode::<IssueCommand>(data);
    let _ = records::decode::<SessionStart>(data);
    let _ = records::decode::<GuardCommand>(data);
    let _ = records::decode::<Detection>(data);
    let _ = records::decode::<Alert>(data);
    let _ = records::decode::<AuditEntry>(data);
});
