//! The `tessera` graph tool. Subcommands arrive with the graph-tool issue.
fn main() {
    eprintln!("tessera: the graph tool (inspect, rewrite, verify, bench, demo) is not built yet; see README.md");
    std::process::exit(2);
}
