//! Rebuilds the API when a migration is added or changed: `sqlx::migrate!`
//! embeds `../migrations` at compile time, and on stable Rust cargo does not
//! know the macro read that directory.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
