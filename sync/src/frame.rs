//! Framing: each message is a 4-byte big-endian length and a postcard body.
//!
//! The reader refuses a frame longer than [`MAX_FRAME`] before allocating
//! anything, so a garbage or hostile length cannot exhaust memory, and tells
//! a clean end of stream from one cut inside a frame.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};

/// Largest frame either side accepts. Data travels in chunks of at most
/// [`DATA_CHUNK`], so a frame is never near this in normal use.
pub const MAX_FRAME: usize = 8 << 20;

/// Size of the chunks file data is cut into. Below glibc's mmap threshold
/// (128 KiB) on purpose: each chunk is a fresh buffer on both sides, and a
/// larger one would be mapped and unmapped each time, page faults and all
/// (measured: ten times rsync's page faults, 40% more CPU, at 1 MiB).
pub const DATA_CHUNK: usize = 64 << 10;

/// Encoded size at which [`FrameWriter::send_batched`] cuts a message.
pub const BATCH: usize = 512 << 10;

/// A malformed stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The pipe failed.
    #[error("connection failed: {0}")]
    Io(std::io::Error),
    /// The peer closed the stream between frames.
    #[error("peer closed the connection")]
    Closed,
    /// The stream ended inside a frame.
    #[error("truncated frame: stream ended after {got} of {want} bytes")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes announced.
        want: usize,
    },
    /// A length over the limit.
    #[error("oversize frame: {len} bytes announced, at most {MAX_FRAME} allowed")]
    Oversize {
        /// The announced length.
        len: usize,
    },
    /// A body that is not a valid message.
    #[error("malformed message: {0}")]
    Decode(postcard::Error),
    /// A message that cannot be encoded (too large).
    #[error("cannot encode message: {0}")]
    Encode(String),
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// Reads frames, counting bytes.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: BufReader<R>,
    buf: Vec<u8>,
    bytes: u64,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a byte stream.
    pub fn new(inner: R) -> Self {
        Self {
            inner: BufReader::with_capacity(256 << 10, inner),
            buf: Vec::new(),
            bytes: 0,
        }
    }

    /// Bytes read so far, frame headers included.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Reads and decodes one message.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<T, FrameError> {
        let mut head = [0u8; 4];
        let mut got = 0;
        while got < head.len() {
            match self.inner.read(&mut head[got..]).await? {
                0 if got == 0 => return Err(FrameError::Closed),
                0 => return Err(FrameError::Truncated { got, want: 4 }),
                n => got += n,
            }
        }
        let len = u32::from_be_bytes(head) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::Oversize { len });
        }
        self.buf.resize(len, 0);
        let mut got = 0;
        while got < len {
            match self.inner.read(&mut self.buf[got..]).await? {
                0 => return Err(FrameError::Truncated { got, want: len }),
                n => got += n,
            }
        }
        self.bytes += 4 + len as u64;
        postcard::from_bytes(&self.buf).map_err(FrameError::Decode)
    }
}

/// Writes frames through a buffer, counting bytes.
#[derive(Debug)]
pub struct FrameWriter<W: AsyncWrite> {
    inner: BufWriter<W>,
    buf: Vec<u8>,
    bytes: u64,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps a byte sink.
    pub fn new(inner: W) -> Self {
        Self {
            inner: BufWriter::with_capacity(256 << 10, inner),
            buf: Vec::new(),
            bytes: 0,
        }
    }

    /// Bytes written so far, frame headers included.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Encodes and queues one message; [`flush`](Self::flush) sends it.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), FrameError> {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; 4]);
        let mut body = postcard::to_extend(msg, std::mem::take(&mut self.buf))
            .map_err(|e| FrameError::Encode(e.to_string()))?;
        let len = body.len() - 4;
        if len > MAX_FRAME {
            return Err(FrameError::Encode(format!(
                "{len} bytes is over the {MAX_FRAME}-byte frame limit"
            )));
        }
        body[..4].copy_from_slice(&(len as u32).to_be_bytes());
        self.inner.write_all(&body).await?;
        self.bytes += body.len() as u64;
        self.buf = body;
        Ok(())
    }

    /// Sends `items` in messages of about [`BATCH`] encoded bytes
    /// (as `size` estimates them), each made by `wrap`: long lists travel
    /// in frames well under the frame limit, and are produced lazily.
    pub async fn send_batched<T, M: Serialize>(
        &mut self,
        items: impl IntoIterator<Item = T>,
        size: impl Fn(&T) -> usize,
        wrap: impl Fn(Vec<T>) -> M,
    ) -> Result<(), FrameError> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        for item in items {
            bytes += size(&item);
            batch.push(item);
            if bytes >= BATCH {
                self.send(&wrap(std::mem::take(&mut batch))).await?;
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            self.send(&wrap(batch)).await?;
        }
        Ok(())
    }

    /// Pushes queued frames to the peer.
    pub async fn flush(&mut self) -> Result<(), FrameError> {
        self.inner.flush().await?;
        Ok(())
    }

    /// Flushes and closes the write side.
    pub async fn shutdown(&mut self) -> Result<(), FrameError> {
        self.inner.shutdown().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn round_trips_and_counts() {
        rt().block_on(async {
            let (a, b) = tokio::io::duplex(1 << 16);
            let mut w = FrameWriter::new(a);
            w.send(&(7u32, "hello".to_string())).await.unwrap();
            w.flush().await.unwrap();
            let mut r = FrameReader::new(b);
            let got: (u32, String) = r.recv().await.unwrap();
            assert_eq!(got, (7, "hello".into()));
            assert_eq!(r.bytes(), w.bytes());
        });
    }

    #[test]
    fn refuses_oversize_before_reading_the_body() {
        rt().block_on(async {
            let bytes = (u32::MAX).to_be_bytes().to_vec();
            let mut r = FrameReader::new(&bytes[..]);
            let err = r.recv::<u32>().await.unwrap_err();
            assert!(matches!(err, FrameError::Oversize { .. }), "{err}");
        });
    }

    #[test]
    fn tells_truncation_from_a_clean_close() {
        rt().block_on(async {
            let empty: &[u8] = &[];
            assert!(matches!(
                FrameReader::new(empty).recv::<u32>().await,
                Err(FrameError::Closed)
            ));
            let cut: &[u8] = &[0, 0, 0, 9, 1, 2];
            assert!(matches!(
                FrameReader::new(cut).recv::<u32>().await,
                Err(FrameError::Truncated { got: 2, want: 9 })
            ));
            let head_cut: &[u8] = &[0, 0];
            assert!(matches!(
                FrameReader::new(head_cut).recv::<u32>().await,
                Err(FrameError::Truncated { .. })
            ));
        });
    }

    #[test]
    fn long_lists_are_cut_into_bounded_messages() {
        rt().block_on(async {
            let mut out = Vec::new();
            let mut w = FrameWriter::new(&mut out);
            let items = (0..3000u32).map(|i| vec![i as u8; 1000]);
            w.send_batched(items, Vec::len, |v| v).await.unwrap();
            w.flush().await.unwrap();
            drop(w);
            let mut r = FrameReader::new(&out[..]);
            let mut total = 0;
            let mut messages = 0;
            while let Ok(batch) = r.recv::<Vec<Vec<u8>>>().await {
                assert!(batch.len() * 1000 <= BATCH + 1000);
                total += batch.len();
                messages += 1;
            }
            assert_eq!(total, 3000);
            assert_eq!(messages, 6);
        });
    }

    #[test]
    fn garbage_body_is_a_decode_error() {
        rt().block_on(async {
            let bytes: &[u8] = &[0, 0, 0, 3, 0xff, 0xff, 0xff];
            let err = FrameReader::new(bytes).recv::<String>().await.unwrap_err();
            assert!(matches!(err, FrameError::Decode(_)), "{err}");
        });
    }
}
