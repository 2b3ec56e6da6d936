//! A toy gateway: serves "completions" and reports each one to Meterline with the client.
//!
//!   cargo run -p meterline-client --example gateway -- http://127.0.0.1:8080 "$(cat .local/gateway-token)"
//!
//! It records 1,000 requests for three accounts, prints the client's counters every second,
//! and shuts down cleanly on Ctrl-C or when done, sending what is buffered.

use std::time::Duration;

use meterline_client::{ClientConfig, GatewayClient, UsageEvent};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let endpoint = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let token = args.next().expect("usage: gateway ENDPOINT TOKEN");
    let client = GatewayClient::start(ClientConfig::new(&endpoint, &token));
    let accounts = ["acct-demo-1", "acct-demo-2", "acct-demo-3"];
    let serve = async {
        for i in 0..1_000u64 {
            // ... the gateway forwards the request to the model provider here ...
            let mut e = UsageEvent::new(
                accounts[(i % 3) as usize],
                "key-demo",
                "gw-example",
                "eu-west-1",
                "aws",
                "openai",
                "gpt-4o-mini",
                200 + i % 50,
                80,
            );
            e.status = Some(200);
            e.latency_ms = Some(120);
            client.record(e); // never waits on Meterline
            tokio::time::sleep(Duration::from_millis(2)).await;
            if i % 500 == 0 {
                println!("{:?}", client.counters());
            }
        }
    };
    tokio::select! {
        _ = serve => {}
        _ = tokio::signal::ctrl_c() => println!("stopping"),
    }
    client.shutdown().await;
    println!("done: {:?}", client.counters());
}
