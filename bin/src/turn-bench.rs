fn main() -> anyhow::Result<()> {
    turn_bench::main()
}
