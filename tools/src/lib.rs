//! Library side of the `lml` tools: everything the commands share (data and
//! weight formats, the feature cache and its one loop over images, the job
//! flags, work folders, progress bars, reports) and the generators used by
//! the integration tests and the benchmarks. The binary (`src/main.rs` and
//! `src/cmd/`) is wiring only: one file per command, its arguments and handler.

pub mod bars;
pub mod calibrate;
pub mod cifar;
pub mod convert;
pub mod experiment;
pub mod export;
pub mod features;
pub mod fetch;
pub mod fuzz;
pub mod job;
pub mod keras;
pub mod model;
pub mod page;
pub mod pickle;
pub mod pictures;
pub mod report;
pub mod synth;
pub mod work;
