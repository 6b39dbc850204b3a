//! A TCP echo tool for the end-to-end scenarios, run inside namespaces.
//!
//!   meshscale-e2e-tcp serve <addr:port>         echo every connection back
//!   meshscale-e2e-tcp check <addr:port> <bytes> send a pseudo-random stream,
//!                                               verify the echo byte for byte
//!
//! Unlike `nc`, `check` proves that the bytes arrived intact and in order,
//! in both directions, and fails (non-zero exit) on any difference, short
//! read or stall.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const CHUNK: usize = 64 * 1024;
/// A stall longer than this fails the check.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve", addr] => serve(addr),
        ["check", addr, bytes] => bytes
            .parse()
            .map_err(|e| format!("bad byte count {bytes:?}: {e}"))
            .and_then(|n| check(addr, n)),
        _ => Err("usage: meshscale-e2e-tcp serve ADDR | check ADDR BYTES".to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshscale-e2e-tcp: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(addr: &str) -> Result<(), String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    println!("listening on {addr}");
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                std::thread::spawn(move || echo(stream));
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
    Ok(())
}

fn echo(mut stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Err(e) = stream.write_all(&buf[..n]) {
                    eprintln!("{peer}: write: {e}");
                    return;
                }
                total += n as u64;
            }
            Err(e) => {
                eprintln!("{peer}: read: {e}");
                return;
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
    println!("{peer}: echoed {total} bytes");
}

/// A deterministic byte stream (xorshift64), so the receiver can verify
/// without keeping a copy.
struct Pattern(u64);

impl Pattern {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }
}

const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

fn check(addr: &str, bytes: u64) -> Result<(), String> {
    let target: SocketAddr = addr
        .parse()
        .map_err(|e| format!("bad address {addr}: {e}"))?;
    let start = Instant::now();
    let stream = TcpStream::connect_timeout(&target, IO_TIMEOUT)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    for (what, r) in [
        ("read", stream.set_read_timeout(Some(IO_TIMEOUT))),
        ("write", stream.set_write_timeout(Some(IO_TIMEOUT))),
    ] {
        r.map_err(|e| format!("set {what} timeout: {e}"))?;
    }
    let mut writer = stream.try_clone().map_err(|e| format!("clone: {e}"))?;
    // Write on a thread while this one reads, or both sides' buffers fill up.
    let sender = std::thread::spawn(move || -> Result<(), String> {
        let mut pattern = Pattern(SEED);
        let mut buf = vec![0u8; CHUNK];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            pattern.fill(&mut buf[..n]);
            writer
                .write_all(&buf[..n])
                .map_err(|e| format!("write after {} bytes: {e}", bytes - left))?;
            left -= n as u64;
        }
        writer
            .shutdown(Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))
    });
    let mut reader = stream;
    let mut expected = Pattern(SEED);
    let mut want = vec![0u8; CHUNK];
    let mut got = vec![0u8; CHUNK];
    let mut received = 0u64;
    loop {
        let n = reader
            .read(&mut got)
            .map_err(|e| format!("read after {received} bytes: {e}"))?;
        if n == 0 {
            break;
        }
        if received + n as u64 > bytes {
            return Err(format!("received more than the {bytes} bytes sent"));
        }
        expected.fill(&mut want[..n]);
        if let Some(i) = (0..n).find(|&i| got[i] != want[i]) {
            return Err(format!("byte {} differs", received + i as u64));
        }
        received += n as u64;
    }
    sender
        .join()
        .map_err(|_| "the sender thread panicked".to_string())??;
    if received != bytes {
        return Err(format!("received {received} of {bytes} bytes"));
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "ok: {bytes} bytes echoed intact in {secs:.2}s ({:.1} MB/s each way)",
        bytes as f64 / secs / 1e6
    );
    Ok(())
}
