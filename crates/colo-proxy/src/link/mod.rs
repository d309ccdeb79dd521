//! The link between `colo-proxy primary` and `colo-proxy secondary`: one stream
//! connection (TCP or Unix, see [`crate::shell::endpoint`]) carrying the protocol
//! of [`proto`] (docs/link-protocol.md).
//!
//! [`run`] keeps the link up: it takes one connection at a time (accepting, or
//! dialling with backoff), exchanges hellos, then reads messages for the driver
//! and writes the driver's [`OutQueue`] of encoded messages, with a heartbeat every
//! `heartbeat_interval`. A connection on which nothing arrives for
//! `heartbeat_timeout` is dropped even if TCP still thinks it is alive. A peer with
//! the wrong magic, version or role is logged with what is wrong and disconnected.
//! The driver hears of it all as [`PeerChange`]s (role `link`) and [`LinkEvent`]s.
//!
//! Reading and writing run concurrently, so two proxies both writing into full
//! socket buffers never wait on each other.
//!
//! Both directions batch, as the compare role's endpoints do: a message is queued as
//! its fixed head plus the frame's own `Bytes` ([`push_message`], no copy), the
//! writer sends everything queued with vectored writes, and the reader reads
//! straight into the decoder and hands every message of a read to the driver as
//! one [`LinkEvent::Messages`].

pub mod proto;

use std::time::Duration;

use colo_core::Frame;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;

use self::proto::{Decoder, HELLO_LEN, LinkRole, Message, Parts};
use crate::shell::PeerChange;
use crate::shell::endpoint::Source;
use crate::shell::input::{BATCH_FRAMES, READ_BUF, ReadSize};
use crate::shell::outq::{self, OutQueue};

/// The endpoint role name of the link in events, logs and `stats`.
pub const ROLE: &str = "link";

/// Link tunables.
#[derive(Debug, Clone, Copy)]
pub struct LinkConfig {
    /// Which proxy this is.
    pub me: LinkRole,
    /// How often a heartbeat is sent.
    pub heartbeat_interval: Duration,
    /// How long the peer may stay silent before the link is declared dead.
    pub heartbeat_timeout: Duration,
    /// Largest message accepted.
    pub max_message: usize,
}

/// Link options shared by `primary` and `secondary`.
#[derive(Debug, Clone, clap::Args)]
pub struct LinkArgs {
    /// Milliseconds between heartbeats on the link.
    #[arg(long, value_name = "MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub heartbeat_interval: u64,

    /// Milliseconds without anything from the peer after which the link is declared
    /// dead and dropped (even if TCP still thinks it is up); also bounds the hello.
    #[arg(long, value_name = "MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub heartbeat_timeout: u64,

    /// Largest link message accepted (a frame plus 9 bytes); a peer sending more is
    /// disconnected. Accepts K, M suffixes.
    #[arg(long, value_name = "SIZE", default_value = "256K", value_parser = crate::cli::parse_size)]
    pub link_max_message: u64,
}

impl LinkArgs {
    /// The timeout must leave room for heartbeats.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.heartbeat_timeout <= self.heartbeat_interval {
            anyhow::bail!(
                "--heartbeat-timeout ({} ms) must be longer than --heartbeat-interval ({} ms), \
                 or a live peer would be declared dead; e.g. three intervals",
                self.heartbeat_timeout,
                self.heartbeat_interval
            );
        }
        Ok(())
    }

    /// The link configuration for `me`.
    #[must_use]
    pub fn config(&self, me: LinkRole) -> LinkConfig {
        LinkConfig {
            me,
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval),
            heartbeat_timeout: Duration::from_millis(self.heartbeat_timeout),
            max_message: usize::try_from(self.link_max_message).unwrap_or(usize::MAX),
        }
    }
}

/// Queue `msg` for the peer without copying its frame; `false` if the queue had no
/// room (dropped and counted by the queue).
pub fn push_message(queue: &OutQueue, msg: &Message) -> bool {
    let parts = Parts::of(msg);
    queue.push_parts(parts.head(), parts.body.clone())
}

/// What the link task tells the driver besides peer changes.
#[derive(Debug)]
pub enum LinkEvent {
    /// Messages that arrived, in order (one read's worth, heartbeats left out).
    Messages(Vec<Message>),
    /// A peer was refused or dropped for a protocol error (the reason).
    ProtocolError(String),
}

/// The `link-error` control event's fields for a refused or dropped peer.
#[must_use]
pub fn error_fields(why: String) -> serde_json::Map<String, serde_json::Value> {
    let mut f = serde_json::Map::new();
    f.insert("role".into(), ROLE.into());
    f.insert("error".into(), why.into());
    f
}

/// What the I/O tasks of `primary` and `secondary` tell their driver.
#[derive(Debug)]
pub enum RoleEvent {
    /// Frames from the client port, in arrival order (one read's worth).
    Client(Vec<Frame>),
    /// Frames from this host's VM port (`--pvm`, `--svm`), in arrival order.
    Vm(Vec<Frame>),
    /// Something from the link.
    Link(LinkEvent),
    /// A peer came or went.
    Peer(PeerChange),
    /// A QMP monitor said something (the primary's checkpoint driver, `--qmp-*`).
    Qmp(crate::qmp::Vm, crate::qmp::QmpInput),
}

impl From<(crate::qmp::Vm, crate::qmp::QmpInput)> for RoleEvent {
    fn from((vm, input): (crate::qmp::Vm, crate::qmp::QmpInput)) -> Self {
        Self::Qmp(vm, input)
    }
}

impl From<PeerChange> for RoleEvent {
    fn from(p: PeerChange) -> Self {
        Self::Peer(p)
    }
}

impl From<LinkEvent> for RoleEvent {
    fn from(e: LinkEvent) -> Self {
        Self::Link(e)
    }
}

/// Keep the link up and carry messages both ways. Runs until the driver is gone.
pub async fn run<E>(mut source: Source, config: LinkConfig, queue: OutQueue, tx: mpsc::Sender<E>)
where
    E: From<PeerChange> + From<LinkEvent> + Send + 'static,
{
    loop {
        let io = source.next().await;
        let (mut rd, mut wr) = tokio::io::split(io);
        if let Err(why) = handshake(&mut rd, &mut wr, config).await {
            tracing::warn!(role = ROLE, error = %why, "link peer refused; disconnecting it");
            if tx.send(LinkEvent::ProtocolError(why).into()).await.is_err() {
                return;
            }
            continue;
        }
        tracing::info!(role = ROLE, peer = config.me.peer().as_str(), "link up");
        if !PeerChange::announce(&tx, ROLE, true).await {
            return;
        }
        let why = tokio::select! {
            why = read_messages(&mut rd, config, &tx) => why,
            why = write_messages(&mut wr, config, &queue) => Some(why),
        };
        let Some(why) = why else { return };
        tracing::warn!(role = ROLE, reason = %why, queued = queue.stats().queued_frames, "link down");
        if !PeerChange::announce(&tx, ROLE, false).await {
            return;
        }
    }
}

/// Send our hello, read and check the peer's (within the heartbeat timeout).
async fn handshake<R, W>(rd: &mut R, wr: &mut W, config: LinkConfig) -> Result<(), String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    wr.write_all(&proto::hello(config.me))
        .await
        .map_err(|e| format!("sending the hello: {e}"))?;
    let mut hello = [0u8; HELLO_LEN];
    match tokio::time::timeout(config.heartbeat_timeout, rd.read_exact(&mut hello)).await {
        Err(_) => Err(format!(
            "no hello from the peer within {} ms",
            config.heartbeat_timeout.as_millis()
        )),
        Ok(Err(e)) => Err(format!("reading the hello: {e}")),
        Ok(Ok(_)) => proto::check_hello(&hello, config.me.peer()).map_err(|e| e.to_string()),
    }
}

/// Read messages until the connection ends, breaks the protocol or falls silent.
/// Returns why, or `None` when the driver is gone.
async fn read_messages<R, E>(rd: &mut R, config: LinkConfig, tx: &mpsc::Sender<E>) -> Option<String>
where
    R: AsyncRead + Unpin,
    E: From<LinkEvent>,
{
    let mut dec = Decoder::new(config.max_message);
    let mut size = ReadSize::default();
    loop {
        let read = rd.read_buf(dec.read_buffer(size.want(), READ_BUF));
        match tokio::time::timeout(config.heartbeat_timeout, read).await {
            Err(_) => {
                return Some(format!(
                    "heartbeat timeout: nothing from the peer for {} ms",
                    config.heartbeat_timeout.as_millis()
                ));
            }
            Ok(Ok(0)) => return Some("closed by peer".to_owned()),
            Ok(Ok(n)) => size.update(n),
            Ok(Err(e)) => return Some(e.to_string()),
        }
        // Every message of this read goes to the driver as one event.
        let mut batch = Vec::new();
        loop {
            match dec.poll() {
                Ok(Some(Message::Heartbeat)) => {}
                Ok(Some(msg)) => {
                    batch.push(msg);
                    if batch.len() == BATCH_FRAMES
                        && !send_batch(tx, std::mem::take(&mut batch)).await
                    {
                        return None;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // Messages decoded before the error still go to the driver.
                    if !send_batch(tx, batch).await {
                        return None;
                    }
                    let why = format!("protocol error: {e}");
                    tracing::warn!(role = ROLE, error = %e, "link protocol error; disconnecting");
                    if tx
                        .send(LinkEvent::ProtocolError(why.clone()).into())
                        .await
                        .is_err()
                    {
                        return None;
                    }
                    return Some(why);
                }
            }
        }
        if !send_batch(tx, batch).await {
            return None;
        }
    }
}

/// Send a non-empty `batch` to the driver; `false` when the driver is gone.
async fn send_batch<E: From<LinkEvent>>(tx: &mpsc::Sender<E>, batch: Vec<Message>) -> bool {
    batch.is_empty() || tx.send(LinkEvent::Messages(batch).into()).await.is_ok()
}

/// Write queued messages (in vectored batches, each whole before it leaves the
/// queue) and a heartbeat every interval (between batches), until a write fails;
/// returns why.
async fn write_messages<W: AsyncWrite + Unpin>(
    wr: &mut W,
    config: LinkConfig,
    queue: &OutQueue,
) -> String {
    let heartbeat = proto::encoded(&Message::Heartbeat);
    outq::write_queued_keepalive(wr, queue, config.heartbeat_interval, &heartbeat).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_sends_messages_whole_in_order_with_heartbeats_between() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let queue = OutQueue::new(1 << 20);
            let mut want: Vec<Message> = (0..50u8)
                .map(|i| Message::ClientFrame(Frame::ethernet(vec![i; 60 + usize::from(i)])))
                .collect();
            want.push(Message::CheckpointDone(7));
            for m in &want {
                assert!(push_message(&queue, m));
            }
            // A small pipe: the writer's vectored writes end mid-message often.
            let (mut wr, mut rd) = tokio::io::duplex(100);
            let config = LinkConfig {
                me: LinkRole::Primary,
                heartbeat_interval: Duration::from_millis(5),
                heartbeat_timeout: Duration::from_secs(1),
                max_message: 1024,
            };
            let q = queue.clone();
            let writer = tokio::spawn(async move { write_messages(&mut wr, config, &q).await });
            let mut dec = Decoder::new(1024);
            let (mut got, mut beats) = (Vec::new(), 0);
            // Heartbeats keep coming once the queue is empty.
            while got.len() < want.len() || beats < 3 {
                let read = rd.read_buf(dec.read_buffer(4096, 4096));
                let n = tokio::time::timeout(Duration::from_secs(10), read)
                    .await
                    .expect("the writer stalled")
                    .unwrap();
                assert!(n > 0, "the writer closed the pipe");
                while let Some(m) = dec.poll().expect("a message cut or garbled") {
                    if m == Message::Heartbeat {
                        beats += 1;
                    } else {
                        got.push(m);
                    }
                }
            }
            writer.abort();
            assert_eq!(got, want);
            let s = queue.stats();
            assert_eq!((s.written_frames, s.queued_frames), (51, 0));
        });
    }
}
