//! A plain WASI command component: it targets `wasi:cli/command`, not the
//! `reconciler` world.
fn main() {
    println!("hello from a command");
}
