//! The `warrenmq` binary: parses the command line and runs the broker.

fn main() {
    println!("warrenmq");
}
