//! The `mirrorfs` command.

fn main() -> std::process::ExitCode {
    mirrorfs::cli::run(std::env::args_os())
}
