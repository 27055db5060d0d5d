//! `market-buyer`: the buyer command-line interface (see `clients::cli`).

fn main() -> std::process::ExitCode {
    clients::cli::buyer_main()
}
