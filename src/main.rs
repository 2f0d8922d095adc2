//! The `cordon` binary: everything lives in the library.
fn main() -> std::process::ExitCode {
    cordon::cli::main()
}
