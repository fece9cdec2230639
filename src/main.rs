fn main() {
    std::process::exit(opsrun::app::main());
}
