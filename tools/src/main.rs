//! `lml`: command-line tools for the serverless VGG19 trainer. Wiring only:
//! the command enum and its dispatch; each command's arguments and handler
//! live in `cmd/<command>.rs` (`plan.rs` for `lml plan`), what they share in
//! the `lml_tools` library.

mod cmd;
mod plan;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "lml", version, about = "Train a softmax head on frozen VGG19 features, locally or on AWS Lambda")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a softmax head with N parallel workers on the local runtime
    /// (the start / worker / combine protocol, as on AWS Lambda), with a
    /// live progress display. Generates a learnable dataset if given no data.
    Train(Box<cmd::train::Args>),
    /// Print the start event of a job on AWS Lambda (for `aws lambda invoke
    /// --payload`), from the same flags as `train`, checked as the function
    /// checks it.
    #[command(name = "start-event")]
    StartEvent(Box<cmd::start_event::Args>),
    /// Estimate what a job would cost and take on AWS Lambda.
    Plan(plan::PlanArgs),
    /// Print a job's progress and final accuracy (a job under --root; on AWS: `lml aws status`).
    Status(cmd::status::Args),
    /// Draw a job's training curves (training and held-out loss and
    /// accuracy per round, with epoch marks) as PNG or SVG.
    Plot(cmd::plot::Args),
    /// Reproduce the seed's experiments on the local runtime, scaled down:
    /// its Tables 3 (time limit), 5 (memory) and 6 (workers, with Figs. 12
    /// and 14), beside the seed's numbers and our projection for AWS.
    #[command(subcommand)]
    Experiment(cmd::experiment::Command),
    /// Drive jobs on the deployed function (start, status, stop, resume,
    /// ingest from S3) through the AWS SDK.
    Aws(Box<cmd::aws::Args>),
    /// Ask a running job to stop after the round in progress.
    Stop(cmd::stop::Args),
    /// Kernel demo: generate images (and random VGG19 weights unless given),
    /// extract frozen features, train the softmax head, report test accuracy.
    Demo(cmd::demo::Args),
    /// Time one VGG19 forward layer by layer (GFLOP/s against a measured FMA
    /// peak) and report the process's peak resident memory.
    Profile(cmd::profile::Args),
    /// Convert the official CIFAR-10 archive (`cifar-10-binary.tar.gz` or
    /// `cifar-10-python.tar.gz`, or an extracted folder) into memory-mappable .npy files.
    #[command(name = "prepare-cifar10")]
    PrepareCifar10(cmd::prepare_cifar10::Args),
    /// Run the frozen VGG19 over a prepared split once and cache the features
    /// (sharded, resumable; shards are merged when all exist).
    #[command(name = "extract-features")]
    ExtractFeatures(cmd::extract_features::Args),
    /// Convert a VGG19 checkpoint (torchvision or timm `.safetensors`, or a
    /// Keras `.h5`) into the kernel's .npy weight directory.
    ///
    /// Keras files are read as Keras' loader reads them, in every layout Keras
    /// has written: the Applications files Keras downloads
    /// (vgg19_weights_tf_dim_ordering_tf_kernels.h5, full or _notop), Keras 2
    /// save_weights / save (.h5, weights under model_weights), and Keras 3
    /// .weights.h5. A _notop file converts to pool5, a full one to fc7.
    #[command(name = "convert-weights")]
    ConvertWeights(cmd::convert_weights::Args),
    /// Download the official CIFAR-10 archive (MD5-checked, resumable).
    Fetch(cmd::fetch::Args),
    /// Train the softmax head on cached features (single process; the
    /// distributed job is `train`), and save it as .npy.
    #[command(name = "train-head")]
    TrainHead(cmd::train_head::Args),
    /// Generate format-exact fixtures for tests and demos.
    #[command(subcommand)]
    Synth(cmd::synth::Command),
    /// Classify image files (PNG, JPEG, any size) or a prepared split with a
    /// finished job's classifier: the frozen VGG19, the job's feature
    /// standardisation and its trained head. Prints the top classes.
    Predict(Box<cmd::predict::Args>),
    /// Accuracy, per-class precision and recall, and the confusion matrix of
    /// a finished job's classifier on a prepared split.
    Evaluate(Box<cmd::evaluate::Args>),
    /// Export a finished job's classifier: torchvision's VGG19 layout as
    /// .safetensors (the head in classifier.6, standardisation folded in),
    /// or the kernel's own .npy folder (--format npy).
    Export(Box<cmd::export::Args>),
    /// Write one self-contained HTML page about a trained job: its spec,
    /// timings, cost estimate on AWS Lambda, training curves and, on a split
    /// of images (--data, or the held-out images its spec names), its
    /// accuracy, confusion heat map and prediction grid.
    Report(Box<cmd::report::Args>),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Train(args) => cmd::train::run(&args),
        Command::StartEvent(args) => cmd::start_event::run(&args),
        Command::Plan(args) => plan::plan(&args),
        Command::Status(args) => cmd::status::run(&args),
        Command::Plot(args) => cmd::plot::run(&args),
        Command::Experiment(command) => cmd::experiment::run(command),
        Command::Aws(args) => cmd::aws::run(&args),
        Command::Stop(args) => cmd::stop::run(&args),
        Command::Demo(args) => cmd::demo::run(&args),
        Command::Profile(args) => cmd::profile::run(&args),
        Command::PrepareCifar10(args) => cmd::prepare_cifar10::run(&args),
        Command::ExtractFeatures(args) => cmd::extract_features::run(&args),
        Command::ConvertWeights(args) => cmd::convert_weights::run(args),
        Command::Fetch(args) => cmd::fetch::run(args),
        Command::TrainHead(args) => cmd::train_head::run(&args),
        Command::Synth(command) => cmd::synth::run(command),
        Command::Predict(args) => cmd::predict::run(&args),
        Command::Evaluate(args) => cmd::evaluate::run(&args),
        Command::Export(args) => cmd::export::run(&args),
        Command::Report(args) => cmd::report::run(&args),
    }
}
