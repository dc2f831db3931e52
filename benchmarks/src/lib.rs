//! trellis benchmarks. The criterion benches live in `benches/`; `README.md` says how to run
//! each and records the latest figures. [`fleet`] generates the synthetic app fleet the load
//! generator sends.

pub mod fleet;
