//! The `cardgate` executable; the command line lives in [`cardgate::cli`].

fn main() -> std::process::ExitCode {
    cardgate::cli::main()
}
