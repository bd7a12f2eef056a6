//! Runner guarantees on paused time: de-duplication, no overlap, bounded concurrency, requeue.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{config, reconcile, secs, start, wait_for, Recorder, Step};
use drover_runtime::Action;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

#[tokio::test(start_paused = true)]
async fn ten_triggers_of_an_idle_key_reconcile_once() {
    let rec = Recorder::new(|_, _| Step::ok(Action::await_change()));
    let running = start(config(4), &rec, None, None);
    for _ in 0..10 {
        running.trigger.trigger("a".into(), "test").unwrap();
    }
    wait_for(secs(5), "first reconcile", || rec.total_ends() == 1).await;
    tokio::time::sleep(secs(60)).await;
    assert_eq!(rec.starts_of("a").len(), 1);
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_burst_from_a_stream_merges_too() {
    let rec = Recorder::new(|_, _| Step::ok(Action::await_change()));
    let keys = futures::stream::iter(["a", "b", "a", "a", "b", "a"].map(String::from));
    // The stream stays open after the burst, as a watcher would.
    let stream = keys.chain(futures::stream::pending()).boxed();
    let running = start(config(4), &rec, Some(Box::new(stream)), None);
    wait_for(secs(5), "both keys", || rec.total_ends() == 2).await;
    tokio::time::sleep(secs(60)).await;
    assert_eq!(rec.starts_of("a").len(), 1);
    assert_eq!(rec.starts_of("b").len(), 1);
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_key_never_overlaps_itself_and_reruns_after_a_trigger_mid_flight() {
    let rec = Recorder::new(|_, _| Step::ok(Action::await_change()).taking(secs(5)));
    let running = start(config(4), &rec, None, None);
    running.trigger.trigger("a".into(), "test").unwrap();
    wait_for(secs(5), "first start", || rec.starts_of("a").len() == 1).await;
    tokio::time::sleep(secs(1)).await;
    // Three triggers while it runs: held, merged, and run once afterwards.
    for _ in 0..3 {
        running.trigger.trigger("a".into(), "test").unwrap();
    }
    wait_for(secs(30), "second run", || rec.ends_of("a").len() == 2).await;
    tokio::time::sleep(secs(60)).await;
    let starts = rec.starts_of("a");
    let ends = rec.ends_of("a");
    assert_eq!(starts.len(), 2, "one re-run for the merged triggers");
    assert!(
        starts[1] >= ends[0],
        "second run started before the first ended"
    );
    assert_eq!(
        starts[1],
        secs(5),
        "the held request runs as soon as the first ends"
    );
    assert!(!rec.overlapped());
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn hammering_one_key_never_overlaps() {
    let rec = Recorder::new(|_, _| Step::ok(Action::requeue(secs(1))).taking(secs(2)));
    let running = start(config(8), &rec, None, None);
    for _ in 0..200 {
        running.trigger.trigger("a".into(), "test").unwrap();
        running.trigger.trigger("b".into(), "test").unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    running.stop().await.unwrap();
    assert!(!rec.overlapped());
    assert!(rec.max_in_flight() <= 2);
    assert!(rec.starts_of("a").len() >= 10);
}

#[tokio::test(start_paused = true)]
async fn concurrency_is_bounded() {
    let rec = Recorder::new(|_, _| Step::ok(Action::await_change()).taking(secs(1)));
    let running = start(config(2), &rec, None, None);
    for i in 0..10 {
        running.trigger.trigger(format!("key-{i}"), "test").unwrap();
    }
    wait_for(secs(30), "all ten", || rec.total_ends() == 10).await;
    assert_eq!(rec.max_in_flight(), 2);
    // Two at a time, one second each: the last pair ends at five seconds.
    assert_eq!(rec.ends_of("key-9"), vec![secs(5)]);
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn requeue_reruns_after_the_duration() {
    let rec = Recorder::new(|_, _| Step::ok(Action::requeue(secs(10))));
    let running = start(config(1), &rec, None, None);
    running.trigger.trigger("a".into(), "test").unwrap();
    wait_for(secs(60), "three runs", || rec.starts_of("a").len() >= 3).await;
    assert_eq!(rec.starts_of("a")[..3], [secs(0), secs(10), secs(20)]);
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_earlier_trigger_beats_a_requeue() {
    let rec = Recorder::new(|_, _| Step::ok(Action::requeue(secs(100))));
    let running = start(config(1), &rec, None, None);
    running.trigger.trigger("a".into(), "test").unwrap();
    wait_for(secs(5), "first run", || rec.total_ends() == 1).await;
    running
        .trigger
        .trigger_after("a".into(), secs(3), "soon")
        .unwrap();
    wait_for(secs(10), "second run", || rec.total_ends() == 2).await;
    let starts = rec.starts_of("a");
    assert!(starts[1] >= secs(3) && starts[1] < secs(4), "{starts:?}");
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn await_change_waits_for_the_next_trigger() {
    let rec = Recorder::new(|_, _| Step::ok(Action::await_change()));
    let running = start(config(1), &rec, None, None);
    running.trigger.trigger("a".into(), "test").unwrap();
    wait_for(secs(5), "first run", || rec.total_ends() == 1).await;
    tokio::time::sleep(secs(3600)).await;
    assert_eq!(rec.total_starts(), 1, "await_change must not requeue");
    let triggered_at = rec.elapsed();
    running.trigger.trigger("a".into(), "test").unwrap();
    wait_for(secs(5), "second run", || rec.total_ends() == 2).await;
    assert_eq!(rec.starts_of("a")[1], triggered_at);
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn ended_inputs_do_not_stop_requeues() {
    let rec = Recorder::new(|_, _| Step::ok(Action::requeue(secs(5))));
    let stream = futures::stream::iter(["a".to_string()]).boxed();
    let running = start(config(1), &rec, Some(Box::new(stream)), None);
    wait_for(secs(60), "requeues after the stream ended", || {
        rec.starts_of("a").len() >= 3
    })
    .await;
    running.stop().await.unwrap();
}

/// Keys of two streams that are ready at once: single keys interleave stream by stream, the
/// keys of one batch stay together (so, in the agent, one node's burst of starts runs at once
/// and shares its etcd requests).
#[tokio::test(start_paused = true)]
async fn a_batchs_keys_run_next_to_each_other_where_single_keys_interleave() {
    let burst = |prefix: &str| (1..=3).map(|i| format!("{prefix}{i}")).collect::<Vec<_>>();
    let order_of = |batched: bool| async move {
        let rec = Recorder::new(|_, _| Step::ok(Action::await_change()).taking(secs(1)));
        let mut controller =
            drover_runtime::Reconciler::new(config(1), Arc::clone(&rec), reconcile).unwrap();
        for prefix in ["a", "b"] {
            let keys = burst(prefix);
            controller = if batched {
                controller
                    .with_batches(futures::stream::iter([keys]).chain(futures::stream::pending()))
            } else {
                controller
                    .with_stream(futures::stream::iter(keys).chain(futures::stream::pending()))
            };
        }
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(controller.run(shutdown.clone()));
        wait_for(secs(60), "all six", || rec.total_ends() == 6).await;
        shutdown.cancel();
        handle.await.unwrap().unwrap();
        rec.start_order()
    };
    let batched = order_of(true).await;
    let (a, b) = (burst("a"), burst("b"));
    assert!(
        batched == [a.clone(), b.clone()].concat() || batched == [b.clone(), a.clone()].concat(),
        "{batched:?}"
    );
    let single = order_of(false).await;
    assert_ne!(single[..3], a[..], "{single:?}");
    assert_ne!(single[..3], b[..], "{single:?}");
}
