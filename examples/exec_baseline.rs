//! Benchmark floor for `scripts/bench`: commands on already-open native-mux
//! connections through `opsrun::transport`, with no planning, journal or UI.
//!
//! ```text
//! exec_baseline SSH_CONFIG USER COUNT ADDRESS:PORT [ADDRESS:PORT...]
//! ```
//! Opens one master per address, then (1) runs `true` COUNT times one after the
//! other on the first connection and (2) runs `true` once on every connection at
//! the same time. Prints `key=value` lines (milliseconds) for the script to parse.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use opsrun::transport::{connect_all, Command, Connection, Endpoint};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: exec_baseline SSH_CONFIG USER COUNT ADDRESS:PORT [ADDRESS:PORT...]");
        std::process::exit(2);
    }
    let config = PathBuf::from(&args[0]);
    let user = args[1].clone();
    let count: usize = args[2].parse().expect("COUNT is a number");
    let endpoints: Vec<Endpoint> = args[3..]
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let (addr, port) = a.rsplit_once(':').expect("ADDRESS:PORT");
            let mut ep = Endpoint::ssh(format!("h{}", i + 1), addr);
            ep.port = Some(port.parse().expect("port is a number"));
            ep.user = Some(user.clone());
            ep.config_file = Some(config.clone());
            ep.connect_timeout = Some(Duration::from_secs(10));
            ep
        })
        .collect();

    let t = Instant::now();
    let conns: Vec<Connection> = connect_all(&endpoints, 8)
        .await
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("connect: {e}")))
        .collect();
    println!("connect_ms={:.1}", ms(t.elapsed()));

    let first = &conns[0];
    // One warm-up exec so the first measured one does not pay for lazy setup.
    exec(first).await;
    let t = Instant::now();
    for _ in 0..count {
        exec(first).await;
    }
    let serial = t.elapsed();
    println!("serial_total_ms={:.1}", ms(serial));
    println!("serial_per_exec_ms={:.3}", ms(serial) / count as f64);

    let t = Instant::now();
    futures::future::join_all(conns.iter().map(exec)).await;
    println!("fanout_hosts={}", conns.len());
    println!("fanout_ms={:.1}", ms(t.elapsed()));

    for c in conns {
        let _ = c.close().await;
    }
}

async fn exec(conn: &Connection) {
    let out = conn
        .exec(&Command::new("true"), &mut |_, _| {})
        .await
        .unwrap_or_else(|e| panic!("exec: {e}"));
    assert!(out.success(), "`true` failed: {out:?}");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
