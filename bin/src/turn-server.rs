fn main() -> anyhow::Result<()> {
    turn_server::cli::main()
}
