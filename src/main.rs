use clap::Parser;

fn main() {
    let cli = hrk::cli::Cli::parse();
    if let Err(e) = hrk::cli::run(cli) {
        // One line: the context chain joined with ": ".
        eprintln!("hrk: error: {e:#}");
        std::process::exit(1);
    }
}
