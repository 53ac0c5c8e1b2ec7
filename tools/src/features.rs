//! The frozen-feature cache of `lml extract-features`: the kernel's
//! [`lml_kernel::features`], which the distributed extraction job of
//! `lml-lambda` runs too, so both give the same bytes. See there for the
//! layout and the guarantees.

pub use lml_kernel::features::{
    carry_class_list, check_shard, extract_rows, extract_shard, merge, publish_shard, shard_path, shard_rows,
    CacheNote, Dtype, BATCH, CACHE_FORMAT,
};
