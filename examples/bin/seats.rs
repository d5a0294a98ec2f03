//! A nonstop node that runs the `seats` kind, actively replicated: `seats node --config node.toml`.

fn main() -> std::process::ExitCode {
    let mut registry = nonstop::Registry::new();
    registry.register_threaded("seats", nonstop_examples::seats::Seats::from_settings);
    nonstop::node::main(registry)
}
