//! The `mfbatch` binary: a thin shell over the library; all of it lives in `cli/`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
