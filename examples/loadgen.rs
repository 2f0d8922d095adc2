//! A load generator and backend for `scripts/bench.sh`: the same work against every topology.
//!
//! loadgen serve ADDR                          echo backend (for every test)
//! loadgen bulk ADDR CONNS MIB                 MiB each way over CONNS long connections
//! loadgen rr ADDR CONNS SECONDS SIZE          keep-alive request/response, latency percentiles
//! loadgen paced ADDR CONNS SECONDS SIZE RATE  the same at a fixed total rate (requests/s)
//! loadgen connect ADDR CONNS SECONDS          a new connection per exchange (1 byte each way)
//!
//! Each measurement prints one line: `name value unit [key=value ...]`. Loops are bounded by time
//! and count; addresses are the caller's (loopback in the script).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> T {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        eprintln!("loadgen: missing or bad {what}");
        std::process::exit(2)
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let addr: SocketAddr = arg(&args, 2, "ADDR");
    let result = rt.block_on(async {
        match args.get(1).map(String::as_str) {
            Some("serve") => serve(addr).await,
            Some("bulk") => bulk(addr, arg(&args, 3, "CONNS"), arg(&args, 4, "MIB")).await,
            Some("rr") => {
                rr(addr, arg(&args, 3, "CONNS"), arg(&args, 4, "SECONDS"), arg(&args, 5, "SIZE")).await
            }
            Some("paced") => {
                let (conns, seconds, size) =
                    (arg(&args, 3, "CONNS"), arg(&args, 4, "SECONDS"), arg(&args, 5, "SIZE"));
                paced(addr, conns, seconds, size, arg(&args, 6, "RATE")).await
            }
            Some("connect") => connect(addr, arg(&args, 3, "CONNS"), arg(&args, 4, "SECONDS")).await,
            _ => {
                eprintln!("usage: loadgen serve|bulk|rr|connect ADDR ...");
                std::process::exit(2)
            }
        }
    });
    if let Err(e) = result {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}

async fn serve(addr: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (mut s, _) = listener.accept().await?;
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if w.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = w.shutdown().await;
        });
    }
}

async fn bulk(addr: SocketAddr, conns: usize, mib: usize) -> Result<()> {
    let per_conn = (mib << 20) / conns.max(1);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        tasks.push(tokio::spawn(async move {
            let s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            let (mut r, mut w) = s.into_split();
            let writer = tokio::spawn(async move {
                let block = vec![0x5au8; 64 * 1024];
                let mut left = per_conn;
                while left > 0 {
                    let n = left.min(block.len());
                    w.write_all(&block[..n]).await?;
                    left -= n;
                }
                w.shutdown().await?;
                Ok::<_, std::io::Error>(())
            });
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0usize;
            loop {
                let n = r.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            writer.await??;
            if got != per_conn {
                return Err(format!("echoed {got} of {per_conn} bytes").into());
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "bulk {:.1} MiB/s conns={conns} mib={mib} seconds={secs:.2}",
        (per_conn * conns) as f64 / (1 << 20) as f64 / secs
    );
    Ok(())
}

async fn rr(addr: SocketAddr, conns: usize, seconds: f64, size: usize) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let all = exchanges(addr, conns, size, deadline, None).await?;
    print_latency("rr", all, start.elapsed().as_secs_f64().max(seconds), conns, size);
    Ok(())
}

/// Keep-alive request/response at a fixed total rate, spread over `conns` connections: the latency
/// one request sees at a given load, rather than at saturation. Each connection sends on its own
/// schedule (staggered). The timer ticks in milliseconds, so a request's latency runs from when it
/// was actually sent.
async fn paced(addr: SocketAddr, conns: usize, seconds: f64, size: usize, rate: f64) -> Result<()> {
    let period = Duration::from_secs_f64(conns as f64 / rate.max(1.0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(seconds);
    let all = exchanges(addr, conns, size, deadline, Some(period)).await?;
    print_latency("paced", all, seconds, conns, size);
    Ok(())
}

/// `conns` keep-alive connections exchanging `size` bytes each way until `deadline`: back to back,
/// or one exchange per `period` on each connection. Returns every exchange's latency in µs; at most
/// a million samples per connection, so memory stays bounded whatever the rate.
async fn exchanges(
    addr: SocketAddr,
    conns: usize,
    size: usize,
    deadline: tokio::time::Instant,
    period: Option<Duration>,
) -> Result<Vec<u32>> {
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            let msg = vec![0x42u8; size];
            let mut back = vec![0u8; size];
            let mut lat = Vec::with_capacity(100_000);
            let mut due = period.map(|p| start + p.mul_f64(i as f64 / conns as f64));
            loop {
                if let Some(due) = due {
                    if due >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(due).await;
                }
                if tokio::time::Instant::now() >= deadline || lat.len() >= 1_000_000 {
                    break;
                }
                let sent = Instant::now();
                s.write_all(&msg).await?;
                s.read_exact(&mut back).await?;
                lat.push(sent.elapsed().as_micros() as u32);
                due = due.zip(period).map(|(d, p)| d + p);
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

/// The one line a latency measurement prints: rate, p50 and p99.
fn print_latency(name: &str, mut all: Vec<u32>, secs: f64, conns: usize, size: usize) {
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(0)
    };
    println!(
        "{name} {:.0} req/s p50_us={} p99_us={} conns={conns} size={size} requests={}",
        all.len() as f64 / secs,
        pct(0.50),
        pct(0.99),
        all.len()
    );
}

async fn connect(addr: SocketAddr, conns: usize, seconds: f64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (done, failed) = (done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline && n < 10_000_000 {
                n += 1;
                let one = async {
                    let mut s = TcpStream::connect(addr).await?;
                    s.set_nodelay(true)?;
                    s.write_all(b"x").await?;
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b).await?;
                    Ok::<_, std::io::Error>(())
                };
                match tokio::time::timeout(Duration::from_secs(5), one).await {
                    Ok(Ok(())) => done.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "connect {:.0} conn/s conns={conns} done={} failed={}",
        done.load(Ordering::Relaxed) as f64 / secs,
        done.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    Ok(())
}
