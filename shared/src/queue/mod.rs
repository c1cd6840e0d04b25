//! The task queue: one interface ([`TaskQueue`]) over RabbitMQ ([`amqp::AmqpQueue`]) and an
//! in-process implementation ([`embedded::EmbeddedQueue`]) with the same semantics.
//!
//! Semantics both implementations share:
//! - Queues are declared first ([`TaskQueue::declare`]); publishing to an undeclared queue is an
//!   error. Declaring also declares the queue's dead-letter queue, `{queue}.dlq` ([`dlq_name`]).
//! - [`TaskQueue::publish`] returns once the message is stored (publisher confirm); messages are
//!   persistent on RabbitMQ.
//! - Delivery is at least once. A consumer settles each [`Delivery`] exactly once: [`Delivery::ack`],
//!   [`Delivery::nack_requeue`] or [`Delivery::reject_to_dead_letter`]. A delivery dropped
//!   unsettled goes back to the queue, as if nacked.
//! - A message delivered [`QueueOptions::delivery_limit`] times and still not acked goes to
//!   `{queue}.dlq` instead of back to the queue, so a poison message cannot loop.
//! - A consumer has at most [`QueueOptions::prefetch`] unsettled deliveries; the next one waits
//!   until one is settled.
//! - [`TaskQueue::depth`] counts messages ready for delivery (not those delivered and unsettled).

pub mod amqp;
pub mod embedded;
mod topology;

pub use topology::Topology;

use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// The name of `queue`'s dead-letter queue.
pub fn dlq_name(queue: &str) -> String {
    format!("{queue}.dlq")
}

/// How a queue treats its messages; see [`TaskQueue::declare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueOptions {
    /// The most times one message is delivered; after that many unsuccessful deliveries it goes
    /// to the dead-letter queue. At least 1.
    pub delivery_limit: u32,
    /// How long a consumer may hold a delivery unsettled before RabbitMQ closes its channel and
    /// requeues the delivery (RabbitMQ's default is 30 minutes, too short for long tasks). The
    /// embedded queue does not enforce it.
    pub consumer_timeout_ms: u64,
    /// The most unsettled deliveries one consumer holds. At least 1.
    pub prefetch: u16,
    /// A queue for best-effort messages (progress events): on RabbitMQ a classic queue whose
    /// messages are not persisted, with no dead-letter queue; fed with [`TaskQueue::notify`].
    pub advisory: bool,
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self {
            delivery_limit: 5,
            consumer_timeout_ms: 2 * 60 * 60 * 1000,
            prefetch: 1,
            advisory: false,
        }
    }
}

/// Errors of the queue layer.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue does not exist (never declared, or deleted).
    #[error("queue `{0}` does not exist (declare it first)")]
    NoSuchQueue(String),
    /// The broker refused to take the message (negative publisher confirm).
    #[error("the broker refused a message for queue `{0}` (publisher confirm nack)")]
    Refused(String),
    /// Options that cannot work, e.g. a zero delivery limit.
    #[error("invalid options for queue `{queue}`: {reason}")]
    InvalidOptions { queue: String, reason: String },
    /// An AMQP operation failed and was not retried (or no longer could be).
    #[error("AMQP {op} failed: {source}")]
    Amqp {
        op: &'static str,
        #[source]
        source: lapin::Error,
    },
    /// The broker stayed unreachable for longer than the reconnect budget.
    #[error("RabbitMQ unreachable for {waited:?} ({attempts} attempts): {last}")]
    Unreachable {
        waited: Duration,
        attempts: u32,
        last: String,
    },
}

pub type Result<T, E = QueueError> = std::result::Result<T, E>;

/// A message queue with acknowledgements and dead-lettering. See the module docs for the
/// semantics both implementations share.
#[async_trait]
pub trait TaskQueue: Send + Sync {
    /// Creates `queue` and `{queue}.dlq` if missing. Declaring an existing queue with the same
    /// options is a no-op; on RabbitMQ, different options are refused.
    async fn declare(&self, queue: &str, opts: QueueOptions) -> Result<()>;

    /// Stores `body` on `queue` and returns once the queue has it (confirmed).
    async fn publish(&self, queue: &str, body: Vec<u8>) -> Result<()>;

    /// Sends a best-effort message: not persisted, not confirmed, so it costs the sender no
    /// round trip and may be lost (with a connection, or a broker restart). For advisory queues.
    async fn notify(&self, queue: &str, body: Vec<u8>) -> Result<()> {
        self.publish(queue, body).await
    }

    /// Starts consuming `queue`.
    async fn consume(&self, queue: &str) -> Result<Box<dyn Deliveries>>;

    /// Messages of `queue` ready for delivery.
    async fn depth(&self, queue: &str) -> Result<u64>;

    /// Deletes `queue` and `{queue}.dlq` with their messages (missing ones are fine).
    async fn delete(&self, queue: &str) -> Result<()>;
}

/// The stream of deliveries of one consumer. Dropping it stops the consumer; on RabbitMQ its
/// unsettled deliveries then go back to the queue (and can no longer be settled).
#[async_trait]
pub trait Deliveries: Send {
    /// Waits for the next delivery. Errors when the queue is gone or the broker stays
    /// unreachable; a dropped connection alone is recovered from (the consumer re-subscribes).
    async fn next(&mut self) -> Result<Delivery>;

    /// A check, callable from anywhere at any time, of whether this consumer is subscribed on
    /// a live connection right now (false while it reconnects). For readiness probes. The
    /// in-process queue is always live.
    fn liveness(&self) -> Liveness {
        Arc::new(|| true)
    }
}

/// See [`Deliveries::liveness`].
pub type Liveness = Arc<dyn Fn() -> bool + Send + Sync>;

/// Resolves once `shutdown` turns true. A dropped sender means nobody can ask for a shutdown any
/// more: then it never resolves.
pub async fn shutdown_requested(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    if shutdown.wait_for(|&stop| stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The next delivery, or `None` once `shutdown` turns true (a shutdown wins over a ready
/// delivery, so nothing new is taken after it).
pub async fn next_unless_shutdown(
    deliveries: &mut Box<dyn Deliveries>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<Option<Delivery>> {
    tokio::select! {
        biased;
        _ = shutdown_requested(shutdown) => Ok(None),
        next = deliveries.next() => next.map(Some),
    }
}

/// How a delivery is settled; implemented by each queue.
#[async_trait]
pub(crate) trait Settle: Send {
    async fn settle(self: Box<Self>, how: Settlement) -> Result<()>;
}

/// The three ways to settle a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Settlement {
    Ack,
    Requeue,
    DeadLetter(String),
}

/// One delivered message. Settle it exactly once; dropping it unsettled requeues it.
pub struct Delivery {
    body: Vec<u8>,
    delivery_count: u32,
    redelivered: bool,
    dead_letter_reason: Option<String>,
    settle: Box<dyn Settle>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("bytes", &self.body.len())
            .field("delivery_count", &self.delivery_count)
            .field("redelivered", &self.redelivered)
            .field("dead_letter_reason", &self.dead_letter_reason)
            .finish()
    }
}

impl Delivery {
    pub(crate) fn new(
        body: Vec<u8>,
        delivery_count: u32,
        redelivered: bool,
        dead_letter_reason: Option<String>,
        settle: Box<dyn Settle>,
    ) -> Self {
        Self {
            body,
            delivery_count,
            redelivered: redelivered || delivery_count > 1,
            dead_letter_reason,
            settle,
        }
    }

    /// The message's bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// How many times this message has been delivered, this delivery included (1 the first time).
    /// RabbitMQ counts only deliveries that were nacked or requeued: a delivery lost with its
    /// connection may not count.
    pub fn delivery_count(&self) -> u32 {
        self.delivery_count
    }

    /// Whether this message may have been delivered before (RabbitMQ's redelivered flag, or a
    /// count above 1).
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// On a message read from a dead-letter queue: why it was dead-lettered (the reason given to
    /// [`Delivery::reject_to_dead_letter`], or the broker's, e.g. `delivery_limit`).
    pub fn dead_letter_reason(&self) -> Option<&str> {
        self.dead_letter_reason.as_deref()
    }

    /// Done: removes the message from the queue.
    pub async fn ack(self) -> Result<()> {
        self.settle.settle(Settlement::Ack).await
    }

    /// Puts the message back on the queue for another delivery (or in the dead-letter queue if
    /// it has reached its delivery limit).
    pub async fn nack_requeue(self) -> Result<()> {
        self.settle.settle(Settlement::Requeue).await
    }

    /// Moves the message to `{queue}.dlq`, recording `reason`, whatever its delivery count.
    pub async fn reject_to_dead_letter(self, reason: &str) -> Result<()> {
        self.settle
            .settle(Settlement::DeadLetter(reason.to_owned()))
            .await
    }
}
