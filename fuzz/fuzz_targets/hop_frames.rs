//! The hop's frames as a peer may send them: read as streams until the input ends or is refused,
//! never a panic and never more bytes out than came in. The first byte picks a second check: the
//! rest, written as one app connection's bytes in pieces, reads back the same.
#![no_main]

use std::sync::OnceLock;

use cordon::proxy::hop::{self, HopStream};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().expect("a runtime"))
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        // As the server reads a client's hop.
        let mut input = data;
        for _ in 0..data.len() + 1 {
            match hop::next_stream(&mut input).await {
                Ok(true) => {}
                Ok(false) | Err(_) => break,
            }
            let mut got = Vec::new();
            let mut stream = HopStream::new(&mut input);
            let ended = stream.read_to_end(&mut got).await;
            assert!(got.len() <= data.len());
            if ended.is_err() {
                break;
            }
        }

        // What we write reads back whole.
        let Some((&split, payload)) = data.split_first() else { return };
        let mut wire = Vec::new();
        hop::open(&mut wire, &[]).await.expect("writing to memory");
        {
            let mut out = HopStream::new(&mut wire);
            let piece = usize::from(split).max(1);
            for chunk in payload.chunks(piece) {
                out.write_all(chunk).await.expect("writing to memory");
            }
            out.shutdown().await.expect("writing to memory");
        }
        let mut read = &wire[..];
        assert!(hop::next_stream(&mut read).await.expect("our own OPEN"));
        let mut back = Vec::new();
        HopStream::new(&mut read).read_to_end(&mut back).await.expect("our own frames");
        assert_eq!(back, payload);
    });
});
