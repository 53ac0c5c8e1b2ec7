//! One module per command: its arguments and its handler (`run`).

pub mod aws;
pub mod convert_weights;
pub mod demo;
pub mod evaluate;
pub mod experiment;
pub mod export;
pub mod extract_features;
pub mod fetch;
pub mod plot;
pub mod predict;
pub mod prepare_cifar10;
pub mod profile;
pub mod report;
pub mod start_event;
pub mod status;
pub mod stop;
pub mod synth;
pub mod train;
pub mod train_head;
