fn main() -> anyhow::Result<()> {
    signaling_bench::main()
}
