//! trellis benchmarks. The criterion benches live in `benches/`; `README.md` says how to run
//! each and records the latest figures.
