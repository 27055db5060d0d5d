//! `market-seller`: the seller command-line interface (see `clients::cli`).

fn main() -> std::process::ExitCode {
    clients::cli::seller_main()
}
