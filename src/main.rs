//! The `ptload` command line: `ptload inspect [--json] [--sha256] [--tree] [--encoding NAME]
//! [--map-location LOC]... [--no-weights-only] FILE` and `ptload convert [--select PATH]
//! [--dedup] [--skip-unsupported] [--force] [--quiet] [--max-shard-size SIZE] IN OUT`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(
    name = "ptload",
    version,
    about = "Inspect and convert PyTorch checkpoints without Python"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List a checkpoint's tensors: path, dtype, shape, device, bytes (or, with --tree, the
    /// whole object).
    Inspect(cli::inspect::InspectArgs),
    /// Convert a checkpoint (a file, a distributed checkpoint's folder, a sharded checkpoint's
    /// index, or a .safetensors file) to .safetensors, to a .pt in torch.save's format, or to
    /// sharded safetensors.
    Convert(cli::convert::ConvertArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Inspect(a) => cli::inspect::run(&a),
        Command::Convert(a) => cli::convert::run(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // One line on stderr, naming the file and the problem.
            eprintln!("ptload: {}", message.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
