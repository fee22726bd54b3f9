//! Request and response bodies, streamed.
//!
//! [`RequestBody`] wraps hyper's body: it counts the bytes the server consumes into the stats, and carries
//! out a connection-reset fault at exactly the planned byte. [`receive_blob`] pipes a body into a
//! [`BlobWriter`] running on the blocking pool, so network reads and MD5/CRC/disk work overlap and an object
//! is never held in memory. [`stream_pieces`] serves a manifest from disk the same way in reverse.

use std::convert::Infallible;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::error::{OssError, ServerError};
use super::faults::Faults;
use super::store::{BlobWriter, Hasher, NewBlob, Piece, Pin, Store};

/// The response body type.
pub type Body = BoxBody<Bytes, io::Error>;

pub fn empty() -> Body {
    Empty::<Bytes>::new().map_err(|never: Infallible| match never {}).boxed()
}

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|never: Infallible| match never {}).boxed()
}

/// Per-connection control: a handler cancels `reset` to have the connection task abort the TCP connection.
#[derive(Debug, Default)]
pub struct ConnCtl {
    pub reset: CancellationToken,
}

/// How long a request body may stall before the request is answered `400 RequestTimeout` (a client that
/// stops sending must not hold a connection and a temp file forever).
const BODY_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The client broke the body (disconnected, bad chunking, short body) or stopped sending it.
#[derive(Debug)]
pub enum BodyError {
    Client(#[allow(dead_code)] hyper::Error),
    Stalled,
}

impl BodyError {
    pub fn to_oss(&self) -> OssError {
        match self {
            BodyError::Client(_) => OssError::incomplete_body(),
            BodyError::Stalled => OssError::new(
                http::StatusCode::BAD_REQUEST,
                "RequestTimeout",
                "Your socket connection to the server was not read from or written to within the timeout period.",
            ),
        }
    }
}

/// A request body being consumed, with exact byte accounting and fault resets.
pub struct RequestBody {
    body: Option<Incoming>,
    op: &'static str,
    faults: Arc<Faults>,
    conn: Arc<ConnCtl>,
    reset_after: Option<u64>,
    consumed: u64,
}

impl RequestBody {
    pub fn new(
        body: Incoming,
        op: &'static str,
        faults: Arc<Faults>,
        conn: Arc<ConnCtl>,
        reset_after: Option<u64>,
    ) -> Self {
        RequestBody { body: Some(body), op, faults, conn, reset_after, consumed: 0 }
    }

    /// Abort the connection and never return: the connection task drops this request's future.
    async fn reset_now(&mut self) -> Infallible {
        self.faults.record_injected_reset(self.op);
        self.faults.record_status(self.op, "reset");
        tracing::info!(op = self.op, consumed = self.consumed, "fault: resetting the connection");
        self.conn.reset.cancel();
        std::future::pending::<Infallible>().await
    }

    /// The next piece of the body, `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, BodyError> {
        loop {
            if let Some(limit) = self.reset_after
                && self.consumed >= limit
            {
                match self.reset_now().await {}
            }
            let Some(body) = self.body.as_mut() else {
                if self.reset_after.is_some() {
                    // The body ended before the planned byte: reset before any answer.
                    match self.reset_now().await {}
                }
                return Ok(None);
            };
            let Ok(frame) = tokio::time::timeout(BODY_IDLE_TIMEOUT, body.frame()).await else {
                self.body = None;
                return Err(BodyError::Stalled);
            };
            let frame = match frame {
                None => {
                    self.body = None;
                    continue;
                }
                Some(Err(e)) => {
                    self.body = None;
                    return Err(BodyError::Client(e));
                }
                Some(Ok(frame)) => frame,
            };
            let Ok(mut data) = frame.into_data() else { continue };
            if data.is_empty() {
                continue;
            }
            if let Some(limit) = self.reset_after {
                // Count exactly up to the planned byte; the rest of this read is discarded with the connection.
                let room = limit - self.consumed;
                if data.len() as u64 > room {
                    data.truncate(room as usize);
                }
            }
            self.consumed += data.len() as u64;
            self.faults.record_body_bytes(self.op, data.len() as u64);
            return Ok(Some(data));
        }
    }

    /// Read a small body (XML) into memory; `limit` guards against absurd requests.
    pub async fn read_to_vec(&mut self, limit: usize) -> Result<Vec<u8>, OssError> {
        let mut out = Vec::new();
        while let Some(chunk) = self.chunk().await.map_err(|e| e.to_oss())? {
            if out.len() + chunk.len() > limit {
                return Err(OssError::invalid_argument(format!("The request body is larger than {limit} bytes.")));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Consume whatever is left (so the client can read our answer instead of a broken pipe).
    pub async fn drain(&mut self) -> Result<(), BodyError> {
        while self.chunk().await?.is_some() {}
        Ok(())
    }
}

enum Msg {
    Data(Bytes),
    End,
}

/// Stream a body into a new blob. Three stages overlap: this task reads the network, one blocking thread
/// hashes (MD5 + CRC-64) and another writes the file, so a large upload costs about the slower of MD5 and
/// the disk rather than their sum. `max` bounds the size (OSS's 5 GB).
pub async fn receive_blob(store: &Store, body: &mut RequestBody, max: u64) -> Result<NewBlob, OssError> {
    let (write_tx, mut write_rx) = mpsc::channel::<Msg>(16);
    let (hash_tx, mut hash_rx) = mpsc::channel::<Msg>(16);
    let writer_store = store.clone();
    let writer = tokio::task::spawn_blocking(move || -> Result<Option<BlobWriter>, ServerError> {
        let mut w = writer_store.begin_blob()?;
        while let Some(msg) = write_rx.blocking_recv() {
            match msg {
                Msg::Data(b) => w.write(&b).map_err(|e| ServerError::io("write a received blob", e))?,
                Msg::End => return Ok(Some(w)),
            }
        }
        // The sender went away without `End`: the request failed; dropping `w` removes the temp file.
        Ok(None)
    });
    let hasher = tokio::task::spawn_blocking(move || {
        let mut h = Hasher::new();
        while let Some(msg) = hash_rx.blocking_recv() {
            match msg {
                Msg::Data(b) => h.update(&b),
                Msg::End => return Some(h.finish()),
            }
        }
        None
    });
    let mut total = 0u64;
    let mut outcome: Result<(), OssError> = Ok(());
    loop {
        match body.chunk().await {
            Ok(Some(data)) => {
                total += data.len() as u64;
                if total > max {
                    outcome = Err(OssError::entity_too_large("5 GB"));
                    break;
                }
                // `Bytes` clones share the buffer: both stages see the same memory.
                if hash_tx.send(Msg::Data(data.clone())).await.is_err() || write_tx.send(Msg::Data(data)).await.is_err()
                {
                    break; // the writer failed; its error is reported below
                }
            }
            Ok(None) => {
                let _ = hash_tx.send(Msg::End).await;
                let _ = write_tx.send(Msg::End).await;
                break;
            }
            Err(e) => {
                outcome = Err(e.to_oss());
                break;
            }
        }
    }
    drop((write_tx, hash_tx));
    let written = writer.await.map_err(|_| OssError::internal())?;
    let digests = hasher.await.map_err(|_| OssError::internal())?;
    outcome?;
    match (written, digests) {
        (Ok(Some(w)), Some(digests)) => tokio::task::spawn_blocking(move || w.finish(digests))
            .await
            .map_err(|_| OssError::internal())?
            .map_err(OssError::from),
        (Err(e), _) => Err(e.into()),
        _ => Err(OssError::incomplete_body()),
    }
}

const READ_CHUNK: u64 = 256 * 1024;

/// Serve pieces of blobs as a streaming body. The pin keeps the blobs alive until the stream ends.
pub fn stream_pieces(store: Store, pieces: Vec<Piece>, pin: Pin) -> Body {
    let (tx, mut rx) = mpsc::channel::<Result<Frame<Bytes>, io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let _pin = pin;
        for piece in pieces {
            if let Err(e) = send_piece(&store, &piece, &tx) {
                if e.kind() != io::ErrorKind::BrokenPipe {
                    tracing::error!(blob = %piece.blob, error = %e, "cannot read a stored blob");
                    let _ = tx.blocking_send(Err(e));
                }
                return;
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    BodyExt::boxed(StreamBody::new(stream))
}

fn send_piece(store: &Store, piece: &Piece, tx: &mpsc::Sender<Result<Frame<Bytes>, io::Error>>) -> io::Result<()> {
    let mut file = std::fs::File::open(store.blob_path(&piece.blob))?;
    file.seek(SeekFrom::Start(piece.offset))?;
    let mut left = piece.len;
    while left > 0 {
        let n = left.min(READ_CHUNK) as usize;
        let mut buf = vec![0u8; n];
        file.read_exact(&mut buf)?;
        left -= n as u64;
        if tx.blocking_send(Ok(Frame::data(Bytes::from(buf)))).is_err() {
            // The client went away.
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
    }
    Ok(())
}

/// MD5 and CRC-64 of pieces (UploadPartCopy), read on the calling (blocking) thread.
pub fn digest_pieces(store: &Store, pieces: &[Piece]) -> io::Result<([u8; 16], u64)> {
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; READ_CHUNK as usize];
    for piece in pieces {
        let mut file = std::fs::File::open(store.blob_path(&piece.blob))?;
        file.seek(SeekFrom::Start(piece.offset))?;
        let mut left = piece.len;
        while left > 0 {
            let n = left.min(READ_CHUNK) as usize;
            file.read_exact(&mut buf[..n])?;
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
    }
    let d = hasher.finish();
    Ok((d.md5, d.crc64))
}
