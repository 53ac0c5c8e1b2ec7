//! Library side of the `lml` tools: generators shared by the command line,
//! the integration tests and the benchmarks.

pub mod calibrate;
pub mod cifar;
pub mod convert;
pub mod features;
pub mod fetch;
pub mod fuzz;
pub mod keras;
pub mod pickle;
pub mod synth;
