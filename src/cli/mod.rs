//! Subcommands of the `ptload` binary.

pub mod convert;
pub mod inspect;
pub mod tree;
