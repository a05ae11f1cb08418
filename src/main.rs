fn main() {
    eprintln!("hrk: commands are not yet available");
    std::process::exit(2);
}
