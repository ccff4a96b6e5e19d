use clap::Parser;

fn main() {
    let cli = llm_convert::cli::Cli::parse();
    match llm_convert::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(llm_convert::error::exit_code(&e));
        }
    }
}
