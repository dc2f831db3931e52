//! Writes valid bus payloads (an event of every kind, and every record type) into a directory,
//! as the starting corpus of the `bus_payloads` fuzz target:
//! `cargo run -p trellis-schemas --example payload_seeds -- fuzz/corpus/bus_payloads`.

use trellis_schemas::records::{
    self, Alert, AuditEntry, Detection, GuardCommand, HealthPartial, IssueCommand, IssueRecord,
    SessionRecord, SessionStart,
};
use trellis_schemas::{avro, sample};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: payload_seeds DIRECTORY")?;
    std::fs::create_dir_all(&dir)?;
    let write = |name: String, bytes: Vec<u8>| std::fs::write(format!("{dir}/{name}"), bytes);
    for n in 0..60 {
        write(
            format!("event-{n}"),
            avro::encode(&sample::event("plants", n % 7, n))?,
        )?;
    }
    write(
        "session".into(),
        records::encode(&SessionRecord::default())?,
    )?;
    write(
        "partial".into(),
        records::encode(&HealthPartial::default())?,
    )?;
    write("issue".into(), records::encode(&IssueRecord::default())?)?;
    write("command".into(), records::encode(&IssueCommand::default())?)?;
    write("start".into(), records::encode(&SessionStart::default())?)?;
    write("guard".into(), records::encode(&GuardCommand::default())?)?;
    write("detection".into(), records::encode(&Detection::default())?)?;
    write("alert".into(), records::encode(&Alert::default())?)?;
    write("audit".into(), records::encode(&AuditEntry::default())?)?;
    Ok(())
}
