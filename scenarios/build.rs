//! Rebuilds the crate (and so its tests) when a scenario file is added or removed:
//! rstest's `#[files("cases/*.toml")]` expands the glob at compile time.

fn main() {
    println!("cargo:rerun-if-changed=cases");
    println!("cargo:rerun-if-changed=build.rs");
}
