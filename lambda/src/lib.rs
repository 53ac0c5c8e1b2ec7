//! # lml-lambda: the training protocol (not yet implemented)
//!
//! This crate will hold the start / worker / combine protocol of the seed's
//! paper over a shared directory, with a local runtime and the AWS Lambda
//! binary (issues "lambda: the start / worker / combine training protocol" and
//! "lambda on AWS"). Nothing is implemented here yet; the kernel and the
//! `lml` tool work on their own.
