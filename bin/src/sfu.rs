fn main() -> anyhow::Result<()> {
    sfu::cli::main()
}
