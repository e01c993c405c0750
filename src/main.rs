//! The `fxbridge` binary: everything happens in [`fxbridge::cli`].

// mimalloc instead of glibc's malloc: a message's buffers are allocated on one
// thread and freed on another, which glibc handles slowly (measured: about 7%
// less CPU per message, see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    match fxbridge::cli::main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fxbridge: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
