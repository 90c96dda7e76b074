fn main() -> anyhow::Result<()> {
    stun_server::cli::main()
}
