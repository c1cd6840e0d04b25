//! The in-process queue: the [`TaskQueue`] semantics of the module docs, without a broker.
//! Messages live in memory only; clones of an [`EmbeddedQueue`] share the same queues.

use super::{
    Deliveries, Delivery, QueueError, QueueOptions, Result, Settle, Settlement, TaskQueue, dlq_name,
};
use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// The reason recorded on a message dead-lettered for reaching its delivery limit (the same
/// word RabbitMQ uses).
pub const DELIVERY_LIMIT_REASON: &str = "delivery_limit";

/// In-process queues. Cheap to clone; clones share the queues.
#[derive(Clone, Default)]
pub struct EmbeddedQueue {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    queues: Mutex<HashMap<String, QueueState>>,
    next_id: AtomicU64,
}

struct QueueState {
    /// Tells a recreated queue from the one a consumer started on.
    id: u64,
    opts: QueueOptions,
    /// Where messages over the delivery limit go; `None` on dead-letter queues themselves.
    dead_letter_to: Option<String>,
    ready: VecDeque<Message>,
    /// Woken on every change a waiting consumer may care about.
    notify: Arc<Notify>,
}

struct Message {
    body: Vec<u8>,
    deliveries: u32,
    reason: Option<String>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, QueueState>> {
        // A panic while holding the lock leaves the map consistent: every update is one step.
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn create(
        &self,
        queues: &mut HashMap<String, QueueState>,
        name: &str,
        opts: QueueOptions,
        dead_letter_to: Option<String>,
    ) {
        queues.entry(name.to_owned()).or_insert_with(|| QueueState {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            opts,
            dead_letter_to,
            ready: VecDeque::new(),
            notify: Arc::new(Notify::new()),
        });
    }

    /// Appends to `queue` if it exists; messages for a missing queue are dropped.
    fn push_back(queues: &mut HashMap<String, QueueState>, queue: &str, msg: Message) -> bool {
        match queues.get_mut(queue) {
            Some(q) => {
                q.ready.push_back(msg);
                q.notify.notify_waiters();
                true
            }
            None => false,
        }
    }

    fn settle(&self, queue: &str, id: u64, mut msg: Message, how: Settlement) {
        let mut queues = self.lock();
        let Some(q) = queues.get_mut(queue).filter(|q| q.id == id) else {
            return; // The queue was deleted: nothing to settle into.
        };
        let dead_letter = match how {
            Settlement::Ack => return,
            Settlement::DeadLetter(reason) => reason,
            Settlement::Requeue => match &q.dead_letter_to {
                Some(_) if msg.deliveries >= q.opts.delivery_limit => {
                    DELIVERY_LIMIT_REASON.to_owned()
                }
                _ => {
                    q.ready.push_front(msg);
                    q.notify.notify_waiters();
                    return;
                }
            },
        };
        let dlq = q.dead_letter_to.clone().unwrap_or_else(|| dlq_name(queue));
        tracing::debug!(queue, dlq, reason = dead_letter, "dead-lettering a message");
        msg.reason = Some(dead_letter);
        msg.deliveries = 0;
        if !Self::push_back(&mut queues, &dlq, msg) {
            tracing::warn!(queue, dlq, "dead-letter queue missing: message dropped");
        }
    }
}

#[async_trait]
impl TaskQueue for EmbeddedQueue {
    async fn declare(&self, queue: &str, opts: QueueOptions) -> Result<()> {
        validate(queue, &opts)?;
        let mut queues = self.inner.lock();
        if opts.advisory {
            self.inner.create(&mut queues, queue, opts, None);
            return Ok(());
        }
        let dlq = dlq_name(queue);
        self.inner
            .create(&mut queues, queue, opts, Some(dlq.clone()));
        self.inner.create(&mut queues, &dlq, opts, None);
        Ok(())
    }

    async fn publish(&self, queue: &str, body: Vec<u8>) -> Result<()> {
        let msg = Message {
            body,
            deliveries: 0,
            reason: None,
        };
        if Inner::push_back(&mut self.inner.lock(), queue, msg) {
            Ok(())
        } else {
            Err(QueueError::NoSuchQueue(queue.to_owned()))
        }
    }

    async fn consume(&self, queue: &str) -> Result<Box<dyn Deliveries>> {
        let queues = self.inner.lock();
        let q = queues
            .get(queue)
            .ok_or_else(|| QueueError::NoSuchQueue(queue.to_owned()))?;
        Ok(Box::new(EmbeddedDeliveries {
            inner: self.inner.clone(),
            queue: queue.to_owned(),
            id: q.id,
            prefetch: u32::from(q.opts.prefetch.max(1)),
            notify: q.notify.clone(),
            in_flight: Arc::new(AtomicU32::new(0)),
        }))
    }

    async fn depth(&self, queue: &str) -> Result<u64> {
        let queues = self.inner.lock();
        let q = queues
            .get(queue)
            .ok_or_else(|| QueueError::NoSuchQueue(queue.to_owned()))?;
        Ok(q.ready.len() as u64)
    }

    async fn delete(&self, queue: &str) -> Result<()> {
        let mut queues = self.inner.lock();
        for name in [queue.to_owned(), dlq_name(queue)] {
            if let Some(q) = queues.remove(&name) {
                q.notify.notify_waiters();
            }
        }
        Ok(())
    }
}

pub(super) fn validate(queue: &str, opts: &QueueOptions) -> Result<()> {
    let invalid = |reason: &str| {
        Err(QueueError::InvalidOptions {
            queue: queue.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if opts.delivery_limit == 0 {
        return invalid("delivery_limit must be at least 1");
    }
    if opts.prefetch == 0 {
        return invalid("prefetch must be at least 1");
    }
    if opts.consumer_timeout_ms == 0 {
        return invalid("consumer_timeout_ms must be positive");
    }
    Ok(())
}

struct EmbeddedDeliveries {
    inner: Arc<Inner>,
    queue: String,
    id: u64,
    prefetch: u32,
    notify: Arc<Notify>,
    in_flight: Arc<AtomicU32>,
}

impl EmbeddedDeliveries {
    /// The next message if one is ready and the prefetch allows it.
    fn try_take(&self) -> Result<Option<Delivery>> {
        let mut queues = self.inner.lock();
        let q = queues
            .get_mut(&self.queue)
            .filter(|q| q.id == self.id)
            .ok_or_else(|| QueueError::NoSuchQueue(self.queue.clone()))?;
        if self.in_flight.load(Ordering::Acquire) >= self.prefetch {
            return Ok(None);
        }
        let Some(mut msg) = q.ready.pop_front() else {
            return Ok(None);
        };
        msg.deliveries += 1;
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let (body, count, reason) = (msg.body.clone(), msg.deliveries, msg.reason.clone());
        let settle = EmbeddedSettle {
            inner: self.inner.clone(),
            queue: self.queue.clone(),
            id: self.id,
            msg: Some(msg),
            in_flight: self.in_flight.clone(),
            notify: self.notify.clone(),
        };
        Ok(Some(Delivery::new(
            body,
            count,
            count > 1,
            reason,
            Box::new(settle),
        )))
    }
}

#[async_trait]
impl Deliveries for EmbeddedDeliveries {
    async fn next(&mut self) -> Result<Delivery> {
        loop {
            // Register interest before looking, so a change between the look and the wait
            // still wakes us.
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(delivery) = self.try_take()? {
                return Ok(delivery);
            }
            notified.await;
        }
    }
}

struct EmbeddedSettle {
    inner: Arc<Inner>,
    queue: String,
    id: u64,
    /// `None` once settled.
    msg: Option<Message>,
    in_flight: Arc<AtomicU32>,
    notify: Arc<Notify>,
}

impl EmbeddedSettle {
    fn finish(&mut self, how: Settlement) {
        if let Some(msg) = self.msg.take() {
            self.inner.settle(&self.queue, self.id, msg, how);
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.notify.notify_waiters();
        }
    }
}

#[async_trait]
impl Settle for EmbeddedSettle {
    async fn settle(mut self: Box<Self>, how: Settlement) -> Result<()> {
        self.finish(how);
        Ok(())
    }
}

impl Drop for EmbeddedSettle {
    fn drop(&mut self) {
        if self.msg.is_some() {
            tracing::debug!(queue = self.queue, "delivery dropped unsettled: requeued");
            self.finish(Settlement::Requeue);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn dropped_delivery_is_requeued_and_prefetch_holds() {
        let q = EmbeddedQueue::default();
        q.declare("t", QueueOptions::default()).await.unwrap();
        q.publish("t", b"a".to_vec()).await.unwrap();
        q.publish("t", b"b".to_vec()).await.unwrap();
        let mut c = q.consume("t").await.unwrap();
        let first = c.next().await.unwrap();
        assert_eq!(first.body(), b"a");
        // Prefetch 1: no second delivery while the first is unsettled.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), c.next())
                .await
                .is_err()
        );
        drop(first);
        let again = c.next().await.unwrap();
        assert_eq!((again.body(), again.delivery_count()), (&b"a"[..], 2));
        assert!(again.redelivered());
        again.ack().await.unwrap();
        assert_eq!(c.next().await.unwrap().body(), b"b");
    }

    #[tokio::test]
    async fn errors_on_missing_or_deleted_queue() {
        let q = EmbeddedQueue::default();
        assert!(matches!(
            q.publish("nope", vec![]).await,
            Err(QueueError::NoSuchQueue(_))
        ));
        assert!(q.consume("nope").await.is_err());
        assert!(
            q.declare(
                "bad",
                QueueOptions {
                    delivery_limit: 0,
                    ..Default::default()
                }
            )
            .await
            .is_err()
        );
        q.declare("t", QueueOptions::default()).await.unwrap();
        let mut c = q.consume("t").await.unwrap();
        let waiter = tokio::spawn(async move { c.next().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.delete("t").await.unwrap();
        let res = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(res, Err(QueueError::NoSuchQueue(_))));
    }
}
