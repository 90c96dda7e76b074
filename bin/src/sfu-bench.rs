fn main() -> anyhow::Result<()> {
    sfu_bench::main()
}
