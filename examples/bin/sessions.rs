//! A nonstop node that runs the `sessions` kind: `sessions node --config node.toml`.

fn main() -> std::process::ExitCode {
    let mut registry = nonstop::Registry::new();
    registry.register("sessions", nonstop_examples::sessions::Sessions::from_settings);
    nonstop::node::main(registry)
}
