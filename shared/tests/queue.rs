//! One suite over both queue implementations: the embedded one and RabbitMQ (at
//! `SLIM_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`). Each test uses its own
//! queue and deletes it at the end. The reconnect test also needs `rabbitmqctl` (run as root).

use slim_shared::messages::{TaskMessage, decode_task};
use slim_shared::queue::amqp::{AmqpConfig, AmqpQueue};
use slim_shared::queue::embedded::EmbeddedQueue;
use slim_shared::queue::{Deliveries, Delivery, QueueOptions, TaskQueue, dlq_name};
use slim_shared::testkit::unique_prefix;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

fn amqp_url() -> String {
    std::env::var("SLIM_AMQP_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

async fn amqp() -> Arc<dyn TaskQueue> {
    let mut config = AmqpConfig::new(amqp_url());
    config.reconnect_budget = Duration::from_secs(5);
    Arc::new(
        AmqpQueue::connect(config)
            .await
            .expect("RabbitMQ must be running at SLIM_AMQP_URL (default 127.0.0.1:5672)"),
    )
}

async fn embedded() -> Arc<dyn TaskQueue> {
    Arc::new(EmbeddedQueue::default())
}

async fn next(c: &mut Box<dyn Deliveries>) -> Delivery {
    tokio::time::timeout(WAIT, c.next())
        .await
        .expect("timed out waiting for a delivery")
        .expect("delivery")
}

/// Asserts nothing is delivered for a while.
async fn nothing_more(c: &mut Box<dyn Deliveries>) {
    if let Ok(d) = tokio::time::timeout(Duration::from_millis(300), c.next()).await {
        panic!("unexpected delivery: {d:?}");
    }
}

async fn wait_depth(q: &dyn TaskQueue, queue: &str, want: u64) {
    let start = Instant::now();
    loop {
        let depth = q.depth(queue).await.unwrap();
        if depth == want {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "depth of {queue} is {depth}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn declared(q: &dyn TaskQueue, name: &str, opts: QueueOptions) -> String {
    let queue = unique_prefix(name);
    q.declare(&queue, opts).await.unwrap();
    queue
}

async fn publish_consume_ack(q: Arc<dyn TaskQueue>) {
    let queue = declared(&*q, "ack", QueueOptions::default()).await;
    q.publish(&queue, b"hello".to_vec()).await.unwrap();
    let mut c = q.consume(&queue).await.unwrap();
    let d = next(&mut c).await;
    assert_eq!(d.body(), b"hello");
    assert_eq!(d.delivery_count(), 1);
    assert!(!d.redelivered());
    assert_eq!(d.dead_letter_reason(), None);
    d.ack().await.unwrap();
    nothing_more(&mut c).await;
    wait_depth(&*q, &queue, 0).await;
    wait_depth(&*q, &dlq_name(&queue), 0).await;
    q.delete(&queue).await.unwrap();
    assert!(q.publish(&queue, b"gone".to_vec()).await.is_err());
}

async fn nack_requeues_and_counts(q: Arc<dyn TaskQueue>) {
    let queue = declared(&*q, "nack", QueueOptions::default()).await;
    q.publish(&queue, b"again".to_vec()).await.unwrap();
    let mut c = q.consume(&queue).await.unwrap();
    let d = next(&mut c).await;
    assert_eq!(d.delivery_count(), 1);
    d.nack_requeue().await.unwrap();
    let d = next(&mut c).await;
    assert_eq!(d.body(), b"again");
    assert_eq!(d.delivery_count(), 2);
    assert!(d.redelivered());
    // Dropped unsettled: back on the queue too.
    drop(d);
    let d = next(&mut c).await;
    assert_eq!(d.body(), b"again");
    assert!(d.delivery_count() >= 2, "{d:?}");
    d.ack().await.unwrap();
    nothing_more(&mut c).await;
    q.delete(&queue).await.unwrap();
}

async fn delivery_limit_dead_letters(q: Arc<dyn TaskQueue>) {
    for limit in [3, 1] {
        let opts = QueueOptions {
            delivery_limit: limit,
            ..QueueOptions::default()
        };
        let queue = declared(&*q, "limit", opts).await;
        q.publish(&queue, b"poison".to_vec()).await.unwrap();
        let mut c = q.consume(&queue).await.unwrap();
        for count in 1..=limit {
            let d = next(&mut c).await;
            assert_eq!((d.body(), d.delivery_count()), (&b"poison"[..], count));
            d.nack_requeue().await.unwrap();
        }
        nothing_more(&mut c).await;
        let mut dlq = q.consume(&dlq_name(&queue)).await.unwrap();
        let d = next(&mut dlq).await;
        assert_eq!(d.body(), b"poison");
        assert_eq!(d.dead_letter_reason(), Some("delivery_limit"));
        d.ack().await.unwrap();
        wait_depth(&*q, &queue, 0).await;
        q.delete(&queue).await.unwrap();
    }
}

async fn reject_with_reason(q: Arc<dyn TaskQueue>) {
    let queue = declared(&*q, "reject", QueueOptions::default()).await;
    q.publish(&queue, b"bad".to_vec()).await.unwrap();
    let mut c = q.consume(&queue).await.unwrap();
    next(&mut c)
        .await
        .reject_to_dead_letter("input shard missing: s3://x/y")
        .await
        .unwrap();
    nothing_more(&mut c).await;
    wait_depth(&*q, &queue, 0).await;
    wait_depth(&*q, &dlq_name(&queue), 1).await;
    let mut dlq = q.consume(&dlq_name(&queue)).await.unwrap();
    let d = next(&mut dlq).await;
    assert_eq!(d.body(), b"bad");
    assert_eq!(
        d.dead_letter_reason(),
        Some("input shard missing: s3://x/y")
    );
    d.ack().await.unwrap();
    q.delete(&queue).await.unwrap();
}

async fn garbage_is_dead_lettered_and_consumer_goes_on(q: Arc<dyn TaskQueue>) {
    let queue = declared(&*q, "garbage", QueueOptions::default()).await;
    let task = TaskMessage::new("job-1", "teacher", 7, 0);
    q.publish(&queue, b"\xff not json".to_vec()).await.unwrap();
    q.publish(&queue, task.encode()).await.unwrap();
    let mut c = q.consume(&queue).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let d = next(&mut c).await;
        match decode_task(d.body()) {
            Ok(t) => {
                tasks.push(t);
                d.ack().await.unwrap();
            }
            Err(e) => d.reject_to_dead_letter(&e.to_string()).await.unwrap(),
        }
    }
    assert_eq!(tasks, [task]);
    let mut dlq = q.consume(&dlq_name(&queue)).await.unwrap();
    let d = next(&mut dlq).await;
    assert_eq!(d.body(), b"\xff not json");
    let reason = d.dead_letter_reason().unwrap();
    assert!(
        reason.starts_with("malformed task message: not JSON"),
        "{reason}"
    );
    d.ack().await.unwrap();
    q.delete(&queue).await.unwrap();
}

async fn depth_counts_ready(q: Arc<dyn TaskQueue>) {
    let queue = declared(&*q, "depth", QueueOptions::default()).await;
    wait_depth(&*q, &queue, 0).await;
    for i in 0..3u8 {
        q.publish(&queue, vec![i]).await.unwrap();
    }
    wait_depth(&*q, &queue, 3).await;
    let mut c = q.consume(&queue).await.unwrap();
    let d = next(&mut c).await;
    // Prefetch 1: one delivered and unacked, two ready.
    wait_depth(&*q, &queue, 2).await;
    d.ack().await.unwrap();
    // (RabbitMQ pushes the next message on the ack, the embedded queue on `next`: look after.)
    let d = next(&mut c).await;
    wait_depth(&*q, &queue, 1).await;
    d.ack().await.unwrap();
    let d = next(&mut c).await;
    wait_depth(&*q, &queue, 0).await;
    d.ack().await.unwrap();
    nothing_more(&mut c).await;
    assert!(q.depth(&unique_prefix("missing")).await.is_err());
    q.delete(&queue).await.unwrap();
}

async fn advisory_queues_take_notifications(q: Arc<dyn TaskQueue>) {
    let opts = QueueOptions {
        advisory: true,
        prefetch: 64,
        ..QueueOptions::default()
    };
    let queue = declared(&*q, "advisory", opts).await;
    for i in 0..10u8 {
        q.notify(&queue, vec![i]).await.unwrap();
    }
    let mut c = q.consume(&queue).await.unwrap();
    for i in 0..10u8 {
        let d = next(&mut c).await;
        assert_eq!(d.body(), [i], "in order");
        d.ack().await.unwrap();
    }
    nothing_more(&mut c).await;
    // An advisory queue has no dead-letter queue.
    assert!(q.depth(&dlq_name(&queue)).await.is_err());
    q.delete(&queue).await.unwrap();
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod embedded_queue {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::embedded().await).await;
                }
            )*
        }
        mod amqp_queue {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::amqp().await).await;
                }
            )*
        }
    };
}

suite!(
    publish_consume_ack,
    nack_requeues_and_counts,
    delivery_limit_dead_letters,
    reject_with_reason,
    garbage_is_dead_lettered_and_consumer_goes_on,
    depth_counts_ready,
    advisory_queues_take_notifications,
);

fn rabbitmqctl(args: &[&str]) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl must be installed for the reconnect test");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The broker closes every connection (in a vhost of this test's own, so other tests do not
/// notice); a message published afterwards still reaches the consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_reconnects_after_the_broker_closes_connections() {
    let vhost = unique_prefix("slim-reconnect");
    rabbitmqctl(&["add_vhost", &vhost]);
    rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
    let base = amqp_url();
    let url = format!("{}/{vhost}", &base[..base.rfind('/').unwrap()]);
    let mut config = AmqpConfig::new(url);
    config.reconnect_budget = Duration::from_secs(10);
    let publisher = AmqpQueue::connect(config.clone()).await.unwrap();
    let consumer = AmqpQueue::connect(config).await.unwrap();

    let queue = unique_prefix("reconnect");
    publisher
        .declare(&queue, QueueOptions::default())
        .await
        .unwrap();
    let mut c = consumer.consume(&queue).await.unwrap();
    publisher.publish(&queue, b"before".to_vec()).await.unwrap();
    let d = next(&mut c).await;
    assert_eq!(d.body(), b"before");
    d.ack().await.unwrap();

    rabbitmqctl(&["close_all_connections", "-p", &vhost, "slim reconnect test"]);

    publisher.publish(&queue, b"after".to_vec()).await.unwrap();
    let d = next(&mut c).await;
    assert_eq!(d.body(), b"after");
    d.ack().await.unwrap();
    assert_eq!(
        publisher.connections_opened(),
        2,
        "the publisher reconnected"
    );
    assert_eq!(consumer.connections_opened(), 2, "the consumer reconnected");

    publisher.delete(&queue).await.unwrap();
    rabbitmqctl(&["delete_vhost", &vhost]);
}
