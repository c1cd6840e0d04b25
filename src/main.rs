//! `slim`: one binary for every role (demo runner, coordinator, worker, tools).
//!
//! This file only turns flags into typed calls; the work lives in the crates.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    slim_worker::backend::keep_freed_memory();
    let args = cli::Cli::parse();
    cli::init_logging(&args.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::dispatch(args.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
