fn main() {
    std::process::exit(opsrun::cli::main());
}
