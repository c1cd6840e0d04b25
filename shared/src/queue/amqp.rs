//! [`TaskQueue`] on RabbitMQ through `lapin`.
//!
//! - Queues are durable quorum queues with `x-delivery-limit`, dead-lettering to `{queue}.dlq`
//!   (a durable quorum queue) through the default exchange, and `x-consumer-timeout` (honoured by
//!   RabbitMQ 3.12 and later; older brokers use their global `consumer_timeout`).
//! - Messages are persistent and published with `mandatory` on a confirm-mode channel: `publish`
//!   returns once the broker confirmed, and fails if it nacked or the queue does not exist.
//! - [`Delivery::reject_to_dead_letter`]: RabbitMQ's own dead-lettering cannot carry a reason,
//!   so the body is published (confirmed) to `{queue}.dlq` with the header [`REASON_HEADER`]
//!   and the original is then acked. Should that ack be lost, the message is redelivered and may
//!   reach the dead-letter queue twice.
//! - Reconnection: one connection is shared by all operations. When it drops, the next operation
//!   reconnects with capped exponential backoff and jitter, for at most
//!   [`AmqpConfig::reconnect_budget`]; publishes are retried on the new connection (a message
//!   whose confirm was lost with the connection may be stored twice: delivery is at least once
//!   anyway), consumers re-subscribe. Deliveries received before the drop can no longer be
//!   settled (their settle returns an error); the broker redelivers them.

use super::{
    Deliveries, Delivery, Liveness, QueueError, QueueOptions, Result, Settle, Settlement,
    TaskQueue, dlq_name,
};
use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use rand::Rng;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

/// The header carrying the reason of a message rejected with
/// [`Delivery::reject_to_dead_letter`].
pub const REASON_HEADER: &str = "x-slim-reason";

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// E.g. `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub url: String,
    /// The first wait after a failed connection attempt; doubled after each failure.
    pub backoff_initial: Duration,
    /// The longest wait between attempts.
    pub backoff_max: Duration,
    /// How long one operation keeps trying to reconnect before it fails with
    /// [`QueueError::Unreachable`].
    pub reconnect_budget: Duration,
}

impl AmqpConfig {
    /// Defaults: backoff from 100 ms doubling to 5 s, for up to 2 minutes.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            reconnect_budget: Duration::from_secs(120),
        }
    }
}

/// RabbitMQ queues. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct AmqpQueue {
    inner: Arc<Inner>,
}

struct Inner {
    config: AmqpConfig,
    /// The current connection; `None` until the first use and after it was found broken.
    link: tokio::sync::Mutex<Option<Arc<Link>>>,
    generation: AtomicU64,
    /// Prefetch per queue declared through this handle.
    prefetch: StdMutex<HashMap<String, u16>>,
}

/// One connection and its confirm-mode publishing channel.
struct Link {
    generation: u64,
    conn: Connection,
    publisher: Channel,
}

impl Link {
    fn healthy(&self) -> bool {
        self.conn.status().connected() && self.publisher.status().connected()
    }
}

/// How an attempt at an operation failed.
enum Failure {
    /// The connection (or the channel) broke: reconnect and try again.
    Retry(lapin::Error),
    /// Final.
    Fail(QueueError),
}

impl Failure {
    /// Classifies a lapin error: channel-level protocol errors (not found, precondition
    /// failed, ...) are the caller's; anything else means the link is broken.
    fn from_lapin(op: &'static str, queue: &str, e: lapin::Error) -> Self {
        match e.kind() {
            lapin::ErrorKind::ProtocolError(amqp) => match amqp.kind() {
                AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => {
                    Failure::Fail(QueueError::NoSuchQueue(queue.to_owned()))
                }
                AMQPErrorKind::Soft(_) => Failure::Fail(QueueError::Amqp { op, source: e }),
                AMQPErrorKind::Hard(_) => Failure::Retry(e),
            },
            lapin::ErrorKind::ChannelsLimitReached
            | lapin::ErrorKind::InvalidProtocolVersion(_)
            | lapin::ErrorKind::AuthProviderError(_) => {
                Failure::Fail(QueueError::Amqp { op, source: e })
            }
            _ => Failure::Retry(e),
        }
    }
}

fn jittered(delay: Duration) -> Duration {
    // Between half and all of `delay`, so that many clients do not reconnect in step.
    let ms = delay.as_millis().max(2) as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}

impl AmqpQueue {
    /// Connects to the broker (retrying within the reconnect budget).
    pub async fn connect(config: AmqpConfig) -> Result<Self> {
        let queue = Self {
            inner: Arc::new(Inner {
                config,
                link: tokio::sync::Mutex::new(None),
                generation: AtomicU64::new(0),
                prefetch: StdMutex::new(HashMap::new()),
            }),
        };
        queue.inner.link().await?;
        Ok(queue)
    }

    /// How many connections this handle has opened: 1 after [`AmqpQueue::connect`], one more
    /// per reconnect.
    pub fn connections_opened(&self) -> u64 {
        self.inner.generation.load(Ordering::Relaxed)
    }

    /// [`AmqpQueue::connect`] with the default [`AmqpConfig`] for `url`.
    pub async fn connect_url(url: &str) -> Result<Self> {
        Self::connect(AmqpConfig::new(url)).await
    }
}

impl Inner {
    /// The current healthy connection, reconnecting with backoff if there is none.
    async fn link(&self) -> Result<Arc<Link>> {
        let mut guard = self.link.lock().await;
        if let Some(link) = guard.as_ref().filter(|l| l.healthy()) {
            return Ok(link.clone());
        }
        if let Some(old) = guard.take() {
            tracing::warn!(
                generation = old.generation,
                "AMQP connection lost; reconnecting"
            );
            if old.conn.status().connected() {
                // Only the publishing channel broke: start afresh.
                tokio::spawn(async move { old.conn.close(200, "reconnecting".into()).await });
            }
        }
        let started = Instant::now();
        let mut delay = self.config.backoff_initial;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.open().await {
                Ok(link) => {
                    if attempts > 1 || link.generation > 1 {
                        tracing::info!(attempts, generation = link.generation, "AMQP connected");
                    }
                    let link = Arc::new(link);
                    *guard = Some(link.clone());
                    return Ok(link);
                }
                Err(e) => {
                    let waited = started.elapsed();
                    if waited >= self.config.reconnect_budget {
                        return Err(QueueError::Unreachable {
                            waited,
                            attempts,
                            last: e.to_string(),
                        });
                    }
                    let pause = jittered(delay);
                    tracing::warn!(attempts, error = %e, ?pause, "AMQP connection failed; retrying");
                    tokio::time::sleep(pause).await;
                    delay = (delay * 2).min(self.config.backoff_max);
                }
            }
        }
    }

    async fn open(&self) -> std::result::Result<Link, lapin::Error> {
        let props = ConnectionProperties::default().with_connection_name("slim".into());
        let conn = Connection::connect(&self.config.url, props).await?;
        let publisher = conn.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        crate::telemetry::AMQP_CONNECTIONS.inc(&[]);
        Ok(Link {
            generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
            conn,
            publisher,
        })
    }

    /// Runs `attempt` on a healthy link, reconnecting and retrying while it fails for
    /// connection reasons, within the reconnect budget.
    async fn retry<T, F, Fut>(&self, op: &'static str, attempt: F) -> Result<T>
    where
        F: Fn(Arc<Link>) -> Fut,
        Fut: Future<Output = std::result::Result<T, Failure>>,
    {
        let started = Instant::now();
        let mut delay = self.config.backoff_initial;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let link = self.link().await?;
            match attempt(link).await {
                Ok(v) => return Ok(v),
                Err(Failure::Fail(e)) => return Err(e),
                Err(Failure::Retry(e)) => {
                    let waited = started.elapsed();
                    if waited >= self.config.reconnect_budget {
                        return Err(QueueError::Amqp { op, source: e });
                    }
                    tracing::warn!(op, attempts, error = %e, "AMQP operation failed; retrying");
                    // The link may still look healthy for a moment after the broker closed it.
                    tokio::time::sleep(jittered(delay)).await;
                    delay = (delay * 2).min(self.config.backoff_max);
                }
            }
        }
    }

    /// Publishes on the confirm channel and waits for the confirm.
    async fn publish(&self, queue: &str, body: &[u8], headers: Option<FieldTable>) -> Result<()> {
        self.retry("basic.publish", |link| {
            let headers = headers.clone();
            async move {
                let mut props = BasicProperties::default().with_delivery_mode(2);
                if let Some(headers) = headers {
                    props = props.with_headers(headers);
                }
                let fail = |e| Failure::from_lapin("basic.publish", queue, e);
                let confirm = link
                    .publisher
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        body,
                        props,
                    )
                    .await
                    .map_err(fail)?
                    .await
                    .map_err(fail)?;
                if confirm.is_nack() {
                    return Err(Failure::Fail(QueueError::Refused(queue.to_owned())));
                }
                if let Some(returned) = confirm.take_message() {
                    // Mandatory and unroutable: the default exchange found no such queue.
                    tracing::debug!(queue, reply = %returned.reply_text, "message returned");
                    return Err(Failure::Fail(QueueError::NoSuchQueue(queue.to_owned())));
                }
                Ok(())
            }
        })
        .await
    }

    /// Runs `f` on a fresh channel (closed afterwards), for the operations that may close the
    /// channel on error (passive declares, precondition failures).
    async fn on_channel<T, F, Fut>(&self, op: &'static str, queue: &str, f: F) -> Result<T>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = std::result::Result<T, lapin::Error>>,
    {
        self.retry(op, |link| {
            let f = &f;
            async move {
                let channel = link
                    .conn
                    .create_channel()
                    .await
                    .map_err(|e| Failure::from_lapin(op, queue, e))?;
                let result = f(channel.clone()).await;
                if channel.status().connected() {
                    let _ = channel.close(200, "done".into()).await;
                }
                result.map_err(|e| Failure::from_lapin(op, queue, e))
            }
        })
        .await
    }
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn as_i64(v: &AMQPValue) -> Option<i64> {
    match v {
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        _ => None,
    }
}

fn as_string(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn header<'a>(headers: &'a FieldTable, name: &str) -> Option<&'a AMQPValue> {
    headers.inner().get(&ShortString::from(name))
}

/// Our reason header, else the reason of the latest `x-death` entry (e.g. `delivery_limit`).
fn dead_letter_reason(headers: &FieldTable) -> Option<String> {
    if let Some(reason) = header(headers, REASON_HEADER).and_then(as_string) {
        return Some(reason);
    }
    match header(headers, "x-death")? {
        AMQPValue::FieldArray(deaths) => deaths.as_slice().iter().find_map(|d| match d {
            AMQPValue::FieldTable(t) => header(t, "reason").and_then(as_string),
            _ => None,
        }),
        _ => None,
    }
}

#[async_trait]
impl TaskQueue for AmqpQueue {
    async fn declare(&self, queue: &str, opts: QueueOptions) -> Result<()> {
        super::embedded::validate(queue, &opts)?;
        let dlq = dlq_name(queue);
        let declarations = if opts.advisory {
            // Best-effort messages need none of a quorum queue's replicated, fsynced log.
            let mut args = FieldTable::default();
            args.insert("x-queue-type".into(), long_string("classic"));
            vec![(queue, args)]
        } else {
            let mut dlq_args = FieldTable::default();
            dlq_args.insert("x-queue-type".into(), long_string("quorum"));
            let mut args = dlq_args.clone();
            // RabbitMQ dead-letters a message once it was returned more than `x-delivery-limit`
            // times, i.e. after `x-delivery-limit + 1` deliveries.
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(i64::from(opts.delivery_limit) - 1),
            );
            args.insert("x-dead-letter-exchange".into(), long_string(""));
            args.insert("x-dead-letter-routing-key".into(), long_string(&dlq));
            args.insert(
                "x-consumer-timeout".into(),
                AMQPValue::LongLongInt(i64::try_from(opts.consumer_timeout_ms).unwrap_or(i64::MAX)),
            );
            vec![(dlq.as_str(), dlq_args), (queue, args)]
        };
        for (name, args) in declarations {
            self.inner
                .on_channel("queue.declare", name, |ch| {
                    let args = args.clone();
                    async move {
                        ch.queue_declare(name.into(), QueueDeclareOptions::durable(), args)
                            .await
                    }
                })
                .await?;
        }
        self.inner
            .prefetch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(queue.to_owned(), opts.prefetch);
        Ok(())
    }

    async fn publish(&self, queue: &str, body: Vec<u8>) -> Result<()> {
        self.inner.publish(queue, &body, None).await
    }

    async fn notify(&self, queue: &str, body: Vec<u8>) -> Result<()> {
        self.inner
            .retry("basic.publish", |link| {
                let body = &body;
                async move {
                    // Transient and not awaited for its confirm: the confirm future is dropped.
                    link.publisher
                        .basic_publish(
                            "".into(),
                            queue.into(),
                            BasicPublishOptions::default(),
                            body,
                            BasicProperties::default().with_delivery_mode(1),
                        )
                        .await
                        .map(drop)
                        .map_err(|e| Failure::from_lapin("basic.publish", queue, e))
                }
            })
            .await
    }

    async fn consume(&self, queue: &str) -> Result<Box<dyn Deliveries>> {
        let prefetch = self
            .inner
            .prefetch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(queue)
            .copied()
            .unwrap_or(QueueOptions::default().prefetch);
        let mut deliveries = AmqpDeliveries {
            inner: self.inner.clone(),
            queue: queue.to_owned(),
            prefetch,
            current: None,
            live: Arc::default(),
        };
        deliveries.subscribe().await?;
        Ok(Box::new(deliveries))
    }

    async fn depth(&self, queue: &str) -> Result<u64> {
        self.inner
            .on_channel("queue.declare", queue, |ch| async move {
                let q = ch
                    .queue_declare(
                        queue.into(),
                        QueueDeclareOptions::durable().passive(),
                        FieldTable::default(),
                    )
                    .await?;
                Ok(u64::from(q.message_count()))
            })
            .await
    }

    async fn delete(&self, queue: &str) -> Result<()> {
        for name in [queue.to_owned(), dlq_name(queue)] {
            let name = name.as_str();
            self.inner
                .on_channel("queue.delete", name, |ch| async move {
                    ch.queue_delete(name.into(), QueueDeleteOptions::default())
                        .await
                        .map(|_| ())
                })
                .await?;
        }
        Ok(())
    }
}

static CONSUMER_SEQ: AtomicU64 = AtomicU64::new(0);

struct Subscription {
    link: Arc<Link>,
    channel: Channel,
    consumer: Consumer,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Stops the consumer; the broker requeues its unsettled deliveries.
        if self.channel.status().connected()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let channel = self.channel.clone();
            runtime.spawn(async move { channel.close(200, "consumer dropped".into()).await });
        }
    }
}

struct AmqpDeliveries {
    inner: Arc<Inner>,
    queue: String,
    prefetch: u16,
    current: Option<Subscription>,
    /// The current subscription's connection and channel, for [`Deliveries::liveness`]
    /// (which may be asked while `next` holds `self`).
    live: Arc<StdMutex<Option<LiveSubscription>>>,
}

/// The connection and channel of a consumer's current subscription.
type LiveSubscription = (Arc<Link>, Channel);

impl AmqpDeliveries {
    async fn subscribe(&mut self) -> Result<()> {
        let queue = self.queue.as_str();
        let prefetch = self.prefetch;
        let sub = self
            .inner
            .retry("basic.consume", |link| async move {
                let fail = |e| Failure::from_lapin("basic.consume", queue, e);
                let channel = link.conn.create_channel().await.map_err(fail)?;
                channel
                    .basic_qos(prefetch, BasicQosOptions::default())
                    .await
                    .map_err(fail)?;
                let tag = format!(
                    "slim-{}-{}",
                    std::process::id(),
                    CONSUMER_SEQ.fetch_add(1, Ordering::Relaxed)
                );
                let consumer = channel
                    .basic_consume(
                        queue.into(),
                        tag.into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(fail)?;
                Ok(Subscription {
                    link,
                    channel,
                    consumer,
                })
            })
            .await?;
        *self.live.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((sub.link.clone(), sub.channel.clone()));
        self.current = Some(sub);
        Ok(())
    }
}

#[async_trait]
impl Deliveries for AmqpDeliveries {
    fn liveness(&self) -> Liveness {
        let live = self.live.clone();
        Arc::new(move || {
            live.lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .is_some_and(|(link, channel)| {
                    link.conn.status().connected() && channel.status().connected()
                })
        })
    }

    async fn next(&mut self) -> Result<Delivery> {
        let mut delay = self.inner.config.backoff_initial;
        loop {
            if self.current.is_none() {
                self.subscribe().await?;
            }
            let sub = self.current.as_mut().expect("subscribed above");
            let generation = sub.link.generation;
            match sub.consumer.next().await {
                Some(Ok(mut d)) => {
                    let headers = d.properties.headers().clone().unwrap_or_default();
                    let returns = header(&headers, "x-delivery-count")
                        .and_then(as_i64)
                        .unwrap_or(0);
                    let count = u32::try_from(returns.max(0) + 1).unwrap_or(u32::MAX);
                    let settle = Box::new(AmqpSettle {
                        inner: self.inner.clone(),
                        queue: self.queue.clone(),
                        body: d.data.clone(),
                        acker: None,
                    });
                    let data = std::mem::take(&mut d.data);
                    let redelivered = d.redelivered;
                    let mut settle = settle;
                    settle.acker = Some(d);
                    return Ok(Delivery::new(
                        data,
                        count,
                        redelivered,
                        dead_letter_reason(&headers),
                        settle,
                    ));
                }
                Some(Err(e)) => {
                    tracing::warn!(queue = self.queue, generation, error = %e, "consumer failed; re-subscribing");
                }
                None => {
                    tracing::warn!(
                        queue = self.queue,
                        generation,
                        "consumer ended; re-subscribing"
                    );
                }
            }
            // Re-subscribe on a healthy connection (which `subscribe` reconnects as needed);
            // a deleted queue makes `subscribe` fail with `NoSuchQueue`.
            *self.live.lock().unwrap_or_else(|e| e.into_inner()) = None;
            self.current = None;
            tokio::time::sleep(jittered(delay)).await;
            delay = (delay * 2).min(self.inner.config.backoff_max);
        }
    }
}

struct AmqpSettle {
    inner: Arc<Inner>,
    queue: String,
    /// `None` once settled.
    acker: Option<lapin::message::Delivery>,
    /// Kept for dead-lettering with a reason.
    body: Vec<u8>,
}

#[async_trait]
impl Settle for AmqpSettle {
    async fn settle(mut self: Box<Self>, how: Settlement) -> Result<()> {
        let acker = self.acker.take().expect("settled once");
        let ack = |acker: lapin::message::Delivery, op: &'static str| async move {
            acker
                .acker
                .ack(BasicAckOptions::default())
                .await
                .map(|_| ())
                .map_err(|source| QueueError::Amqp { op, source })
        };
        match how {
            Settlement::Ack => ack(acker, "basic.ack").await,
            Settlement::Requeue => requeue(&acker).await.map_err(|source| QueueError::Amqp {
                op: "basic.nack",
                source,
            }),
            Settlement::DeadLetter(reason) => {
                let mut headers = FieldTable::default();
                headers.insert(REASON_HEADER.into(), long_string(&reason));
                let dlq = dlq_name(&self.queue);
                let body = std::mem::take(&mut self.body);
                if let Err(e) = self.inner.publish(&dlq, &body, Some(headers)).await {
                    // Leave the message to the broker: it comes back and can be rejected again.
                    let _ = requeue(&acker).await;
                    return Err(e);
                }
                tracing::debug!(queue = self.queue, dlq, reason, "dead-lettered a message");
                ack(acker, "basic.ack").await
            }
        }
    }
}

/// Gives a delivery back to the broker, to be delivered again.
async fn requeue(delivery: &lapin::message::Delivery) -> Result<(), lapin::Error> {
    delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .map(|_| ())
}

impl Drop for AmqpSettle {
    fn drop(&mut self) {
        let Some(acker) = self.acker.take() else {
            return;
        };
        tracing::debug!(queue = self.queue, "delivery dropped unsettled: requeued");
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = requeue(&acker).await;
            });
        }
        // Without a runtime the broker requeues it when the channel closes.
    }
}
