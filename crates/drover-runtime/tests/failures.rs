//! Runner behaviour on failure and shutdown, plus metrics, on paused time.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{config, secs, start, wait_for, Recorder, Step};
use drover_runtime::{Action, Error, Metrics, ReconcilerConfig};
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

fn gaps(starts: &[Duration]) -> Vec<Duration> {
    starts.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn backoff_doubles_up_to_max_and_resets_after_success() {
    // Calls 1-6 fail, 7 succeeds; after a new trigger, 8 fails and 9 succeeds.
    let rec = Recorder::new(|_, call| match call {
        7 | 9 => Step::ok(Action::await_change()),
        _ => Step::err(),
    });
    let running = start(config(1), &rec, None, None);
    running.trigger.trigger("a".into(), "test").unwrap();
    wait_for(secs(120), "seven calls", || rec.ends_of("a").len() == 7).await;
    let starts = rec.starts_of("a");
    // base 1 s, max 8 s.
    assert_eq!(gaps(&starts), [1, 2, 4, 8, 8, 8].map(secs));

    tokio::time::sleep(secs(100)).await;
    assert_eq!(
        rec.starts_of("a").len(),
        7,
        "success with await_change stops retries"
    );
    running.trigger.trigger("a".into(), "test").unwrap();
    wait_for(secs(30), "two more calls", || rec.ends_of("a").len() == 9).await;
    let starts = rec.starts_of("a");
    assert_eq!(starts[8] - starts[7], secs(1), "backoff restarts from base");
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn triggers_do_not_cut_a_backoff_short() {
    let rec = Recorder::new(|_, call| {
        if call == 1 {
            Step::err()
        } else {
            Step::ok(Action::await_change())
        }
    });
    let cfg = ReconcilerConfig {
        backoff: drover_runtime::BackoffConfig {
            base: secs(10),
            max: secs(60),
            jitter: false,
        },
        ..config(1)
    };
    let running = start(cfg, &rec, None, None);
    running.trigger.trigger("a".into(), "test").unwrap();
    wait_for(secs(5), "first failure", || rec.total_ends() == 1).await;
    tokio::time::sleep(secs(2)).await;
    running
        .trigger
        .trigger("a".into(), "self-inflicted")
        .unwrap();
    wait_for(secs(30), "retry", || rec.total_ends() == 2).await;
    tokio::time::sleep(secs(30)).await;
    assert_eq!(rec.starts_of("a"), [secs(0), secs(10)]);
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_panicking_reconcile_is_retried_with_backoff() {
    let rec = Recorder::new(|_, call| {
        if call == 1 {
            Step::panic()
        } else {
            Step::ok(Action::await_change())
        }
    });
    let running = start(config(1), &rec, None, None);
    running.trigger.trigger("a".into(), "test").unwrap();
    wait_for(secs(30), "retry after panic", || {
        rec.starts_of("a").len() == 2
    })
    .await;
    assert_eq!(rec.starts_of("a"), [secs(0), secs(1)]);
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_in_flight_and_starts_nothing_new() {
    let rec = Recorder::new(|_, _| Step::ok(Action::requeue(secs(1))).taking(secs(5)));
    let running = start(config(1), &rec, None, None);
    let trigger = running.trigger.clone();
    trigger.trigger("a".into(), "test").unwrap();
    trigger.trigger("b".into(), "test").unwrap();
    wait_for(secs(5), "a running", || rec.starts_of("a").len() == 1).await;
    tokio::time::sleep(secs(1)).await;

    running.stop().await.unwrap();
    assert_eq!(
        rec.ends_of("a"),
        [secs(5)],
        "the in-flight reconcile finished"
    );
    assert_eq!(rec.total_starts(), 1, "b and a's requeue never started");
    tokio::time::sleep(secs(60)).await;
    assert_eq!(rec.total_starts(), 1);
    assert!(matches!(
        trigger.trigger("a".into(), "late"),
        Err(Error::Stopped)
    ));
}

#[tokio::test(start_paused = true)]
async fn shutdown_aborts_after_the_grace_period() {
    let rec = Recorder::new(|_, _| Step::ok(Action::await_change()).taking(secs(1000)));
    let cfg = ReconcilerConfig {
        shutdown_grace: secs(2),
        ..config(2)
    };
    let running = start(cfg, &rec, None, None);
    running.trigger.trigger("a".into(), "test").unwrap();
    running.trigger.trigger("b".into(), "test").unwrap();
    wait_for(secs(5), "both running", || rec.total_starts() == 2).await;
    let stopping_at = rec.elapsed();
    let result = running.stop().await;
    assert!(
        matches!(result, Err(Error::ShutdownTimedOut { aborted: 2, .. })),
        "{result:?}"
    );
    assert_eq!(rec.elapsed() - stopping_at, secs(2));
    assert_eq!(rec.total_ends(), 0);
}

#[tokio::test(start_paused = true)]
async fn metrics_are_registered_and_count() {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let rec = Recorder::new(|key, call| {
        if key == "bad" && call == 1 {
            Step::err()
        } else {
            Step::ok(Action::await_change()).taking(Duration::from_millis(20))
        }
    });
    let running = start(config(2), &rec, None, Some(&metrics));
    running.trigger.trigger("good".into(), "test").unwrap();
    running.trigger.trigger("bad".into(), "test").unwrap();
    let expected = [
        r#"reconciles_total{reconciler="test",result="ok"} 2"#,
        r#"reconciles_total{reconciler="test",result="error"} 1"#,
        r#"reconcile_duration_seconds_count{reconciler="test"} 3"#,
        r#"requeues_total{reconciler="test",reason="trigger"} 2"#,
        r#"requeues_total{reconciler="test",reason="backoff"} 1"#,
        r#"queue_depth{reconciler="test"} 0"#,
        r#"in_flight{reconciler="test"} 0"#,
    ];
    let mut text = String::new();
    wait_for(secs(30), "metrics to settle", || {
        text.clear();
        encode(&mut text, &registry).unwrap();
        expected.iter().all(|line| text.contains(line))
    })
    .await;
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn metrics_show_depth_and_in_flight_while_busy() {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let rec = Recorder::new(|_, _| Step::ok(Action::await_change()).taking(secs(10)));
    let running = start(config(2), &rec, None, Some(&metrics));
    for i in 0..5 {
        running.trigger.trigger(format!("k{i}"), "test").unwrap();
    }
    let mut text = String::new();
    wait_for(secs(5), "busy gauges", || {
        text.clear();
        encode(&mut text, &registry).unwrap();
        text.contains(r#"in_flight{reconciler="test"} 2"#)
            && text.contains(r#"queue_depth{reconciler="test"} 3"#)
    })
    .await;
    running.stop().await.unwrap();
}

#[test]
fn invalid_config_is_rejected() {
    let rec = Recorder::new(|_, _| Step::ok(Action::await_change()));
    let bad = ReconcilerConfig {
        concurrency: 0,
        ..ReconcilerConfig::new("x")
    };
    let built = drover_runtime::Reconciler::new(bad, rec, common::reconcile);
    assert!(matches!(built, Err(Error::ZeroConcurrency { .. })));
}

#[tokio::test(start_paused = true)]
async fn a_controller_cancelled_before_it_runs_starts_nothing() {
    let rec = Recorder::new(|_, _| Step::ok(Action::await_change()));
    let controller =
        drover_runtime::Reconciler::new(config(4), std::sync::Arc::clone(&rec), common::reconcile)
            .unwrap();
    controller.trigger().trigger("a".into(), "test").unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    shutdown.cancel();
    tokio::time::timeout(secs(5), controller.run(shutdown))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.total_starts(), 0);
}
