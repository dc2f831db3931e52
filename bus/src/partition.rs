//! Key-to-partition mapping, the same as Kafka's default partitioner (murmur2), so a key lands on
//! the same partition whichever bus stores it.

/// The partition of `key` among `partitions`.
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    let hash = murmur2::murmur2(key, murmur2::KAFKA_SEED) & 0x7fff_ffff;
    hash % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from Kafka's own partitioner test (`Utils.murmur2` then `toPositive % n`).
    #[test]
    fn matches_kafka_default_partitioner() {
        assert_eq!(
            murmur2::murmur2(b"21", murmur2::KAFKA_SEED) as i32,
            -973932308
        );
        assert_eq!(
            murmur2::murmur2(b"foobar", murmur2::KAFKA_SEED) as i32,
            -790332482
        );
        assert_eq!(
            murmur2::murmur2(b"a-little-bit-long-string", murmur2::KAFKA_SEED) as i32,
            -985981536
        );
        assert_eq!(partition_for(b"foobar", 1), 0);
    }

    #[test]
    fn spreads_keys() {
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[partition_for(format!("device-{i}").as_bytes(), 8) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
