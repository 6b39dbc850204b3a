fn main() -> std::process::ExitCode {
    meshscale_control::cli::main()
}
