//! The agent protocol decoder: [`FrameReader`] over a byte stream, and the
//! postcard messages of both directions.
//!
//! Input: one selector byte, then the stream. The selector's low bit picks
//! the direction (server→agent [`ToAgent`], agent→server [`FromAgent`]); the
//! rest picks how many bytes each `read` of the stream returns, so partial
//! reads are exercised too.
//!
//! Asserts:
//! - reading never panics, and stops at the first error (no hang);
//! - reading in small pieces gives exactly what reading the whole gives;
//! - an oversize error only for a length over `MAX_FRAME`, a truncation
//!   only with fewer bytes than announced;
//! - `bytes()` counts the frames consumed (4 + length each), never more
//!   than the input;
//! - every decoded message round-trips: it encodes, the encoding decodes,
//!   and that re-encodes to the same bytes.

#![no_main]

use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use cfi_sync::frame::{FrameError, FrameReader, FrameWriter, MAX_FRAME};
use cfi_sync::message::{FromAgent, ToAgent};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, ReadBuf};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    })
}

/// Hands the stream out at most `step` bytes a read.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.step.min(self.data.len()).min(buf.remaining());
        let (head, tail) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = tail;
        Poll::Ready(Ok(()))
    }
}

/// What one `recv` gave, comparable: the message re-encoded, or the error.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Message(Vec<u8>),
    Closed,
    Truncated { got: usize, want: usize },
    Oversize { len: usize },
    Decode(String),
}

async fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = FrameWriter::new(&mut out);
    w.send(msg).await.expect("a decoded message must encode");
    w.flush().await.unwrap();
    drop(w);
    out
}

/// Reads `stream` to the first error; checks each message's round trip.
fn read_all<T: Serialize + DeserializeOwned>(
    stream: impl AsyncRead + Unpin,
    len: usize,
) -> Vec<Outcome> {
    runtime().block_on(async {
        let mut r = FrameReader::new(stream);
        let mut out = Vec::new();
        loop {
            let before = r.bytes();
            match r.recv::<T>().await {
                Ok(msg) => {
                    let bytes = encode(&msg).await;
                    assert!(bytes.len() - 4 <= MAX_FRAME);
                    let again: T = FrameReader::new(&bytes[..])
                        .recv()
                        .await
                        .expect("an encoded message must decode");
                    assert_eq!(
                        encode(&again).await,
                        bytes,
                        "round trip changed the message"
                    );
                    assert!(r.bytes() >= before + 4);
                    out.push(Outcome::Message(bytes));
                }
                Err(e) => {
                    out.push(match e {
                        FrameError::Closed => Outcome::Closed,
                        FrameError::Truncated { got, want } => {
                            assert!(got < want, "{e}");
                            Outcome::Truncated { got, want }
                        }
                        FrameError::Oversize { len } => {
                            assert!(len > MAX_FRAME, "{e}");
                            Outcome::Oversize { len }
                        }
                        FrameError::Decode(d) => {
                            // The bad frame was read whole, so it counts.
                            assert!(r.bytes() >= before + 4);
                            Outcome::Decode(d.to_string())
                        }
                        other => panic!("unexpected error reading a byte slice: {other}"),
                    });
                    assert!(r.bytes() <= len as u64, "counted more than the stream");
                    return out;
                }
            }
        }
    })
}

fn check<T: Serialize + DeserializeOwned>(step: usize, data: &[u8]) {
    let whole = read_all::<T>(data, data.len());
    let trickled = read_all::<T>(Trickle { data, step }, data.len());
    assert_eq!(whole, trickled, "reading in {step}-byte pieces differs");
}

fuzz_target!(|input: &[u8]| {
    let Some((&selector, data)) = input.split_first() else {
        return;
    };
    let step = usize::from(selector >> 1) + 1;
    if selector & 1 == 0 {
        check::<ToAgent>(step, data);
    } else {
        check::<FromAgent>(step, data);
    }
});
