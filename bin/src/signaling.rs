fn main() -> anyhow::Result<()> {
    signaling::cli::main()
}
