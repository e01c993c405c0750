//! The `fxbridge` binary: everything happens in [`fxbridge::cli`].

fn main() -> std::process::ExitCode {
    match fxbridge::cli::main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fxbridge: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
