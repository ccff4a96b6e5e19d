use clap::Parser;

use llm_convert::exit::ExitStatus;

fn main() {
    let cli = llm_convert::cli::Cli::parse();
    llm_convert::exit::quiet_panics();
    let status = match std::panic::catch_unwind(move || llm_convert::cli::run(cli)) {
        Ok(result) => result.unwrap_or_else(|e| {
            eprintln!("error: {e:#}");
            ExitStatus::of_error(&e)
        }),
        Err(payload) => llm_convert::exit::report_panic(payload.as_ref()),
    };
    status.exit()
}
