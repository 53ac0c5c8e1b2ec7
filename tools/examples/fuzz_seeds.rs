//! Writes the generated fuzz seeds of every harness (or of the targets
//! named after the folder) as `DIR/<target>/seed-N`, for `fuzz/campaign.sh`.
//!
//! Usage: `cargo run -p lml-tools --example fuzz_seeds -- DIR [TARGET...]`

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("usage: fuzz_seeds DIR [TARGET...]"));
    let named: Vec<String> = args.collect();
    for target in lml_tools::fuzz::TARGETS.iter().filter(|t| named.is_empty() || named.iter().any(|n| n == *t)) {
        let out = dir.join(target);
        std::fs::create_dir_all(&out)?;
        let seeds = lml_tools::fuzz::seeds(target);
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(out.join(format!("seed-{i}")), seed)?;
        }
        println!("{target}: {} seeds in {}", seeds.len(), out.display());
    }
    Ok(())
}
