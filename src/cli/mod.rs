//! Subcommands of the `ptload` binary.

pub mod inspect;
