//! A nonstop node that runs the `orderbook` kind: `orderbook node --config node.toml`.

fn main() -> std::process::ExitCode {
    let mut registry = nonstop::Registry::new();
    registry.register("orderbook", nonstop_examples::orderbook::OrderBook::from_settings);
    nonstop::node::main(registry)
}
