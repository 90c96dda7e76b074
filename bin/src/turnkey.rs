fn main() {
    turnkey::cli::main()
}
