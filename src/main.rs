use clap::Parser;

use llm_convert::exit::ExitStatus;

fn main() {
    let cli = llm_convert::cli::Cli::parse();
    let status = llm_convert::cli::run(cli).unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitStatus::of_error(&e)
    });
    status.exit()
}
