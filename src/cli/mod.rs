//! Subcommands of the `ptload` binary.

pub mod inspect;
pub mod tree;
