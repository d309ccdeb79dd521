//! Criterion benchmarks of the compare engine (in progress).
fn main() {}
